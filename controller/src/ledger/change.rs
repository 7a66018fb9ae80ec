//! What a durable change is to the ledger. Each part defines its changes
//! (a halt, a release, an enrollment...) and how each is checked and turned
//! into store records ([`Put`]) and audit events ([`Change::apply`]); the
//! ledger runs that inside the commit that writes it, against the state as it is
//! at that point of the commit order — never against a copy read before the
//! call waited for its turn. That is what keeps two halts from sharing an
//! id, a replayed seq from landing after a newer one, and a revocation from
//! being overwritten by an attestation verified just before it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use lockstep_evidence::chain::{AuditEvent, ChainHead};

use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::fleet::FleetState;
use crate::store::{HaltRecord, HaltScope, HostRecord, Put, ReleaseRecord, Store, StoreError, TokenRecord};

/// A sequence of numbers allocated inside the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Halt,
    Release,
}

/// One durable change, with everything it needs except the numbers the
/// commit allocates. Each part defines its own and says, here, what it
/// writes: [`Change::apply`] checks it against the state at its place in
/// the commit order and turns it into records and audit events.
pub trait Change: Send + 'static {
    /// Checks the change against `state` and says what it writes.
    fn apply(self: Box<Self>, state: &Staged<'_>, next: NextNumber<'_>) -> Result<Effect, Refused>;
}

/// Audit records and nothing else (refusals, renewals, gate transitions,
/// heartbeat counts).
pub struct Recorded(pub Vec<AuditEvent>);

impl Change for Recorded {
    fn apply(self: Box<Self>, _: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        Ok(Effect {
            puts: Vec::new(),
            events: self.0,
            numbered: None,
        })
    }
}

/// What a change came to: its records, its audit events, and the number
/// it took (0 when it takes none).
pub struct Effect {
    pub puts: Vec<Put>,
    pub events: Vec<AuditEvent>,
    pub numbered: Option<(Counter, u64)>,
}

/// A committed change: the number it took (0 when it takes none) and
/// the records it wrote, as they now are in the view.
#[derive(Debug, Clone)]
pub struct Committed {
    pub number: u64,
    /// The seq of the first audit record sealed with this change (0: none).
    pub audit_seq: u64,
    /// Shared with the batch that applies them to the view (no copy per caller).
    pub puts: Arc<Vec<Put>>,
}

impl Committed {
    pub fn halts(&self) -> impl Iterator<Item = &HaltRecord> {
        self.puts
            .iter()
            .filter_map(|p| if let Put::Halt(h) = p { Some(h) } else { None })
    }

    pub fn release(&self) -> Option<&ReleaseRecord> {
        self.puts
            .iter()
            .find_map(|p| if let Put::Release(r) = p { Some(r) } else { None })
    }

    pub fn host(&self) -> Option<&HostRecord> {
        self.puts
            .iter()
            .find_map(|p| if let Put::Host(h) = p { Some(h) } else { None })
    }
}

/// A change its checks refused; `events` are still recorded (a refused
/// enrollment is audited).
pub struct Refused {
    pub error: ApiError,
    pub events: Vec<AuditEvent>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            events: Vec::new(),
        }
    }
}

/// The state a change is checked against: the committed view plus what
/// earlier changes of the same batch wrote.
pub struct Staged<'a> {
    view: &'a FleetState,
    store: &'a dyn Store,
    pub config: &'a ControllerConfig,
    /// The commit's time: what time-bound checks (token expiry) are made at.
    pub now_unix_ms: i64,
    hosts: HashMap<String, HostRecord>,
    releases: BTreeMap<u64, ReleaseRecord>,
    halts: BTreeMap<u64, HaltRecord>,
    tokens: HashMap<String, TokenRecord>,
    manifests: HashSet<String>,
    /// The audit chain's end where this change's records will be sealed
    /// (inside a commit; `None` in an early check).
    chain: Option<ChainHead>,
}

impl<'a> Staged<'a> {
    pub fn new(view: &'a FleetState, store: &'a dyn Store, config: &'a ControllerConfig, now_unix_ms: i64) -> Self {
        Self {
            view,
            store,
            config,
            now_unix_ms,
            hosts: HashMap::new(),
            releases: BTreeMap::new(),
            halts: BTreeMap::new(),
            tokens: HashMap::new(),
            manifests: HashSet::new(),
            chain: None,
        }
    }

    /// The audit chain's end this change's records follow: the last record
    /// sealed before it, exactly (a checkpoint names it).
    pub fn chain_head(&self) -> Option<&ChainHead> {
        self.chain.as_ref()
    }

    pub(crate) fn set_chain_head(&mut self, head: ChainHead) {
        self.chain = Some(head);
    }

    pub fn host(&self, host: &str) -> Option<HostRecord> {
        self.hosts.get(host).or_else(|| self.view.hosts.get(host)).cloned()
    }

    pub fn release(&self, number: u64) -> Option<ReleaseRecord> {
        self.releases
            .get(&number)
            .or_else(|| self.view.releases.get(&number))
            .cloned()
    }

    /// The highest-numbered approved release of `role`.
    pub fn active_release(&self, role: &str) -> Option<ReleaseRecord> {
        let mut all = self.view.releases.clone();
        all.extend(self.releases.clone());
        all.into_values()
            .rev()
            .find(|r| r.role == role && r.approved_by.is_some())
    }

    pub fn active_halts(&self, scope: &HaltScope) -> Vec<HaltRecord> {
        let mut all = self.view.halts.clone();
        all.extend(self.halts.clone());
        all.into_values()
            .filter(|h| h.is_active() && h.scope == *scope)
            .collect()
    }

    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.tokens.get(hash) {
            Some(t) => Ok(Some(t.clone())),
            None => self.store.token(hash),
        }
    }

    pub fn has_manifest(&self, digest_hex: &str) -> bool {
        self.manifests.contains(digest_hex) || self.view.has_manifest(digest_hex)
    }

    /// Makes `puts` (written to the store) visible to the rest of the batch.
    pub fn record(&mut self, puts: &[Put]) {
        for put in puts {
            match put {
                Put::Host(h) => {
                    self.hosts.insert(h.host.clone(), h.clone());
                }
                Put::Manifest { digest_hex, .. } => {
                    self.manifests.insert(digest_hex.clone());
                }
                Put::Release(r) => {
                    self.releases.insert(r.number, r.clone());
                }
                Put::Halt(h) => {
                    self.halts.insert(h.id, h.clone());
                }
                Put::Token(t) => {
                    self.tokens.insert(t.hash_hex.clone(), t.clone());
                }
                Put::Incident(_) | Put::Board(_) => {}
            }
        }
    }
}

/// The next number of a counter, as the commit holds it.
pub type NextNumber<'a> = &'a dyn Fn(Counter) -> u64;
