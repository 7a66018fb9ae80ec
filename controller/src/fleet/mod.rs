//! The controller's in-memory view of the fleet: host records, manifests by
//! digest (shared by every host that holds them), and releases. It is loaded
//! from the store at start and updated only after a write is durable, so it
//! never shows anything the store would not. Gate decisions read it; only
//! the ledger ([`crate::ledger`]) writes it.

pub mod auth;
pub mod gate;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lockstep_proto::digest::{Digest, digest_where};
use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{Entry, Gate};

use crate::config::{ControllerConfig, RoleConfig, RoleMode};
use crate::fleet::auth::AuthError;
use crate::store::Put;
use crate::store::{HaltRecord, HostRecord, ReleaseRecord, Store, StoreError};
use gate::{Clock, Expected, HostFacts};

#[derive(Debug, Default, PartialEq)]
pub struct FleetState {
    pub hosts: HashMap<String, HostRecord>,
    manifests: HashMap<String, Arc<Vec<Entry>>>,
    /// (role, full digest) → digest without the role's per-host paths.
    comparable: HashMap<(String, String), Digest>,
    pub releases: BTreeMap<u64, ReleaseRecord>,
    /// Every halt ever thrown, lifted ones included.
    pub halts: BTreeMap<u64, HaltRecord>,
}

impl FleetState {
    /// Rebuilds the view from the store: every stored record goes through
    /// [`FleetState::apply`], the function the ledger applies commits with,
    /// so a restarted controller has the view it had.
    pub fn load(store: &dyn Store, config: &ControllerConfig) -> Result<Self, StoreError> {
        let mut state = Self::default();
        let manifest_of = |state: &mut Self, digest_hex: &str| -> Result<(), StoreError> {
            if state.has_manifest(digest_hex) {
                return Ok(());
            }
            let entries = store.manifest(digest_hex)?.ok_or_else(|| StoreError::Corrupt {
                key: format!("manifest {digest_hex}"),
                reason: "referenced but not stored".into(),
            })?;
            state.apply(
                config,
                &Put::Manifest {
                    digest_hex: digest_hex.to_string(),
                    entries: Arc::new(entries),
                },
            );
            Ok(())
        };
        for release in store.releases()? {
            manifest_of(&mut state, &release.digest_hex)?;
            state.apply(config, &Put::Release(release));
        }
        for halt in store.halts()? {
            state.apply(config, &Put::Halt(halt));
        }
        for host in store.hosts()? {
            if host.has_reported() {
                manifest_of(&mut state, &host.digest_hex)?;
            }
            state.apply(config, &Put::Host(host));
        }
        Ok(state)
    }

    /// Applies one durable record (a committed change's, or one read at
    /// start). Only [`crate::ledger`] calls it on the live view.
    pub fn apply(&mut self, config: &ControllerConfig, put: &Put) {
        match put {
            Put::Host(h) => {
                if h.has_reported() {
                    self.note_comparable(config, &h.role, &h.digest_hex);
                }
                self.hosts.insert(h.host.clone(), h.clone());
            }
            Put::Manifest { digest_hex, entries } => {
                self.manifests
                    .entry(digest_hex.clone())
                    .or_insert_with(|| entries.clone());
            }
            Put::Release(r) => {
                self.note_comparable(config, &r.role, &r.digest_hex);
                self.releases.insert(r.number, r.clone());
            }
            Put::Halt(h) => {
                self.halts.insert(h.id, h.clone());
            }
            // Kept in the store only (tokens) or by the incident book.
            Put::Token(_) | Put::Incident(_) | Put::Board(_) => {}
        }
    }

    /// The host named by an agent certificate, and the role the inventory
    /// gives it; refused for anyone else, a host outside the inventory and
    /// a revoked host.
    pub fn agent_of<'a>(
        &self,
        config: &'a ControllerConfig,
        peer: &'a PeerIdentity,
    ) -> Result<(&'a str, &'a str), AuthError> {
        let PeerIdentity::Agent { host } = peer else {
            return Err(AuthError::NotAnAgent { peer: peer.to_string() });
        };
        let role = config
            .inventory
            .get(host)
            .ok_or_else(|| AuthError::NotInInventory { host: host.clone() })?;
        self.refuse_if_revoked(host)?;
        Ok((host, role))
    }

    /// A revoked host's certificate is still CA-valid until it expires:
    /// every agent call checks this instead.
    pub fn refuse_if_revoked(&self, host: &str) -> Result<(), AuthError> {
        match self.hosts.get(host).and_then(|r| r.revoked.as_ref()) {
            None => Ok(()),
            Some(rev) => Err(AuthError::Revoked {
                host: host.to_string(),
                by: rev.by.clone(),
                reason: rev.reason.clone(),
                removed: rev.removed,
            }),
        }
    }

    pub fn manifest(&self, digest_hex: &str) -> Option<Arc<Vec<Entry>>> {
        self.manifests.get(digest_hex).cloned()
    }

    pub fn has_manifest(&self, digest_hex: &str) -> bool {
        self.manifests.contains_key(digest_hex)
    }

    fn note_comparable(&mut self, config: &ControllerConfig, role: &str, digest_hex: &str) {
        let key = (role.to_string(), digest_hex.to_string());
        if self.comparable.contains_key(&key) {
            return;
        }
        let (Some(role_cfg), Some(entries)) = (config.roles.get(role), self.manifests.get(digest_hex)) else {
            return;
        };
        let d = digest_where(entries, |e| !role_cfg.is_excluded_from_comparison(&e.path));
        self.comparable.insert(key, d);
    }

    fn facts<'a>(&'a self, role: &str, host: &'a str) -> HostFacts<'a> {
        let record = self.hosts.get(host).filter(|r| r.role == role);
        let reported = record.filter(|r| r.has_reported());
        HostFacts {
            host,
            record,
            entries: reported
                .and_then(|r| self.manifests.get(&r.digest_hex))
                .map(|m| m.as_slice()),
            comparable: reported.and_then(|r| self.comparable.get(&(role.to_string(), r.digest_hex.clone())).copied()),
        }
    }

    /// The role's active release: its highest-numbered approved release.
    pub fn active_release(&self, role: &str) -> Option<&ReleaseRecord> {
        self.releases
            .values()
            .rev()
            .find(|r| r.role == role && r.approved_by.is_some())
    }

    /// What the role's hosts must hold now.
    pub fn expected<'a>(&'a self, role: &RoleConfig, facts: &[HostFacts<'a>], clock: Clock) -> Expected<'a> {
        match role.mode {
            RoleMode::Consensus => gate::consensus(role, facts, clock),
            RoleMode::Release => {
                let Some(release) = self.active_release(&role.name) else {
                    return Expected::NoRelease;
                };
                let key = (role.name.clone(), release.digest_hex.clone());
                match (self.comparable.get(&key), self.manifests.get(&release.digest_hex)) {
                    (Some(c), Some(entries)) => Expected::Release {
                        number: release.number,
                        comparable: *c,
                        entries,
                        boot: &release.boot_pcrs,
                    },
                    // Cannot happen after a successful load; never OPEN on it.
                    _ => Expected::NoRelease,
                }
            }
        }
    }

    /// Active halts covering `host` of `role`.
    fn halts_on(&self, role: &str, host: &str) -> Vec<&HaltRecord> {
        self.halts
            .values()
            .filter(|h| h.is_active() && h.scope.covers(host, role))
            .collect()
    }

    /// Every inventory host's gate in `role`, in inventory order.
    pub fn role_gates(&self, role: &RoleConfig, clock: Clock) -> (Vec<Gate>, u64) {
        let facts: Vec<HostFacts<'_>> = role.hosts.iter().map(|h| self.facts(&role.name, h)).collect();
        let expected = self.expected(role, &facts, clock);
        let gates = facts
            .iter()
            .map(|f| gate::decide(role, f, &expected, &self.halts_on(&role.name, f.host), clock))
            .collect();
        (gates, expected.release_number())
    }

    /// One host's gate, judged within its whole role.
    pub fn host_gate(&self, role: &RoleConfig, host: &str, clock: Clock) -> Gate {
        let expected = match role.mode {
            // Only consensus needs the other hosts' sets.
            RoleMode::Consensus => {
                let facts: Vec<HostFacts<'_>> = role.hosts.iter().map(|h| self.facts(&role.name, h)).collect();
                self.expected(role, &facts, clock)
            }
            RoleMode::Release => self.expected(role, &[], clock),
        };
        let mine = self.facts(&role.name, host);
        gate::decide(role, &mine, &expected, &self.halts_on(&role.name, host), clock)
    }
}
