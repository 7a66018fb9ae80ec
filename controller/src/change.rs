//! Every durable change the controller makes, as one type. A [`Change`] is
//! checked and turned into store records ([`Put`]) and audit events inside
//! the commit that writes it ([`crate::ledger`]), against the state as it is
//! at that point of the commit order — never against a copy read before the
//! call waited for its turn. That is what keeps two halts from sharing an
//! id, a replayed seq from landing after a newer one, and a revocation from
//! being overwritten by an attestation verified just before it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use lockstep_proto::pb::Entry;

use crate::audit::AuditEvent;
use crate::config::ControllerConfig;
use crate::error::{ApiError, AuthError, EnrollError, HaltError, LookupError, ReleaseError};
use crate::evidence::{HaltFact, ReleaseFact, Resumed, to_facts};
use crate::fleet::FleetState;
use crate::incidents::{IncidentRecord, Incidents};
use crate::store::{
    BoardRecord, HaltRecord, HaltScope, HostRecord, Put, Rejection as StoredRejection, ReleaseRecord, Revocation,
    Store, StoreError, TokenRecord,
};
use crate::verify::Rejection;

/// A sequence of numbers allocated inside the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Halt,
    Release,
}

/// One durable change, with everything it needs except the numbers the
/// commit allocates.
pub enum Change {
    /// Audit records and nothing else (refusals, renewals, gate transitions,
    /// heartbeat counts).
    Recorded(Vec<AuditEvent>),
    /// A verified attestation; `seq` is checked again at the commit.
    Attested(Attested),
    /// An attestation that failed verification: the host's gate names it.
    Rejected {
        actor: String,
        host: String,
        role: String,
        reason: String,
        at_unix_ms: i64,
    },
    TokenCreated {
        actor: String,
        token: TokenRecord,
    },
    /// A join token spent on an enrollment; every check of the token runs here.
    Enrolled(Enrolled),
    /// `lockstep host revoke` / `host remove`.
    Revoked {
        actor: String,
        host: String,
        role: String,
        revocation: Revocation,
    },
    /// A release (its number 0 until the commit gives it one).
    ReleaseProposed {
        actor: String,
        release: ReleaseRecord,
        manifest: Arc<Vec<Entry>>,
    },
    ReleaseApproved {
        actor: String,
        number: u64,
        by: String,
        at_unix_ms: i64,
    },
    /// The kill switch (its id 0 until the commit gives it one).
    Halted {
        actor: String,
        halt: HaltRecord,
    },
    /// Lifts every active halt of exactly `scope`.
    Resumed {
        actor: String,
        scope: HaltScope,
        by: String,
        reason: String,
        at_unix_ms: i64,
    },
    /// A board login link or session made, spent or ended
    /// ([`crate::board_sessions`]).
    Board {
        records: Vec<BoardRecord>,
        events: Vec<AuditEvent>,
    },
    /// An incident stored as the incident book has it when the commit
    /// writes it (an acknowledgement and a notification of one incident
    /// cannot land a stale copy last).
    Incident {
        snapshot: IncidentRecord,
        book: Arc<Mutex<Incidents>>,
        events: Vec<AuditEvent>,
    },
}

pub struct Attested {
    pub actor: String,
    pub host: String,
    pub role: String,
    /// The key the envelope was verified with: a host re-enrolled meanwhile
    /// has another, and this attestation no longer speaks for it.
    pub pinned_key_hex: String,
    pub seq: u64,
    pub digest_hex: String,
    pub measured_at_unix_ms: i64,
    pub accepted_at_unix_ms: i64,
    pub boot_id: String,
    pub agent_version: String,
    pub full: bool,
    /// The canonical entries, when the controller may not hold them yet.
    pub manifest: Option<Arc<Vec<Entry>>>,
}

pub struct Enrolled {
    pub host: String,
    pub token_hash: String,
    pub pinned_key_hex: String,
    /// What the audit record adds: key id, certificate expiry.
    pub detail: String,
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
        }
    }

    fn host(&self, host: &str) -> Option<HostRecord> {
        self.hosts.get(host).or_else(|| self.view.hosts.get(host)).cloned()
    }

    fn release(&self, number: u64) -> Option<ReleaseRecord> {
        self.releases
            .get(&number)
            .or_else(|| self.view.releases.get(&number))
            .cloned()
    }

    /// The highest-numbered approved release of `role`.
    fn active_release(&self, role: &str) -> Option<ReleaseRecord> {
        let mut all = self.view.releases.clone();
        all.extend(self.releases.clone());
        all.into_values()
            .rev()
            .find(|r| r.role == role && r.approved_by.is_some())
    }

    fn active_halts(&self, scope: &HaltScope) -> Vec<HaltRecord> {
        let mut all = self.view.halts.clone();
        all.extend(self.halts.clone());
        all.into_values()
            .filter(|h| h.is_active() && h.scope == *scope)
            .collect()
    }

    fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.tokens.get(hash) {
            Some(t) => Ok(Some(t.clone())),
            None => self.store.token(hash),
        }
    }

    fn has_manifest(&self, digest_hex: &str) -> bool {
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

impl Change {
    /// Checks the change against `state` and says what it writes.
    pub fn apply(self, state: &Staged<'_>, next: NextNumber<'_>) -> Result<Effect, Refused> {
        match self {
            Self::Recorded(events) => Ok(Effect {
                puts: Vec::new(),
                events,
                numbered: None,
            }),
            Self::Attested(a) => attested(state, a),
            Self::Rejected {
                actor,
                host,
                role,
                reason,
                at_unix_ms,
            } => {
                let mut record = state.host(&host).unwrap_or_else(|| HostRecord {
                    host: host.clone(),
                    role: role.clone(),
                    ..HostRecord::default()
                });
                record.last_rejection = Some(StoredRejection {
                    at_unix_ms,
                    reason: reason.clone(),
                });
                Ok(Effect {
                    puts: vec![Put::Host(record)],
                    events: vec![AuditEvent {
                        actor,
                        action: "attestation.rejected".into(),
                        host,
                        role,
                        detail: reason,
                        facts: String::new(),
                    }],
                    numbered: None,
                })
            }
            Self::TokenCreated { actor, token } => Ok(Effect {
                events: vec![AuditEvent {
                    actor,
                    action: "token.created".into(),
                    host: token.host.clone(),
                    role: token.role.clone(),
                    // The hash prefix identifies the token in the log; the token itself is never written.
                    detail: format!(
                        "join token {} expires {}",
                        &token.hash_hex[..token.hash_hex.len().min(12)],
                        rfc3339(token.expires_at_unix_ms)
                    ),
                    facts: String::new(),
                }],
                puts: vec![Put::Token(token)],
                numbered: None,
            }),
            Self::Board { records, events } => Ok(Effect {
                puts: records.into_iter().map(Put::Board).collect(),
                events,
                numbered: None,
            }),
            Self::Enrolled(e) => enrolled(state, e),
            Self::Revoked {
                actor,
                host,
                role,
                revocation,
            } => {
                let mut record = state.host(&host).unwrap_or_else(|| HostRecord {
                    host: host.clone(),
                    role: role.clone(),
                    ..HostRecord::default()
                });
                let removed = revocation.removed;
                let detail = revocation.reason.clone();
                if removed {
                    // Decommissioned: nothing it signs can count any more.
                    record.pinned_key_hex.clear();
                }
                record.revoked = Some(revocation);
                Ok(Effect {
                    puts: vec![Put::Host(record)],
                    events: vec![AuditEvent {
                        actor,
                        action: if removed { "host.removed" } else { "host.revoked" }.into(),
                        host,
                        role,
                        detail,
                        facts: String::new(),
                    }],
                    numbered: None,
                })
            }
            Self::ReleaseProposed {
                actor,
                release,
                manifest,
            } => {
                let number = next(Counter::Release);
                let stored = ReleaseRecord { number, ..release };
                let mut puts = Vec::new();
                if !state.has_manifest(&stored.digest_hex) {
                    puts.push(Put::Manifest {
                        digest_hex: stored.digest_hex.clone(),
                        entries: manifest,
                    });
                }
                let event = AuditEvent {
                    actor,
                    action: "release.proposed".into(),
                    role: stored.role.clone(),
                    detail: format!(
                        "release {number} from {} ({} entries): {}",
                        stored.source, stored.entry_count, stored.note
                    ),
                    facts: to_facts(&ReleaseFact::of(&stored)),
                    ..Default::default()
                };
                puts.push(Put::Release(stored));
                Ok(Effect {
                    puts,
                    events: vec![event],
                    numbered: Some((Counter::Release, number)),
                })
            }
            Self::ReleaseApproved {
                actor,
                number,
                by,
                at_unix_ms,
            } => approved(state, actor, number, by, at_unix_ms),
            Self::Halted { actor, halt } => {
                let id = next(Counter::Halt);
                let stored = HaltRecord { id, ..halt };
                let event = scope_event(
                    actor,
                    "halt",
                    &stored.scope,
                    format!(
                        "{} {id} on {}: {}",
                        if stored.drill { "drill halt" } else { "halt" },
                        stored.scope,
                        stored.reason
                    ),
                    to_facts(&HaltFact::of(&stored)),
                );
                Ok(Effect {
                    puts: vec![Put::Halt(stored)],
                    events: vec![event],
                    numbered: Some((Counter::Halt, id)),
                })
            }
            Self::Resumed {
                actor,
                scope,
                by,
                reason,
                at_unix_ms,
            } => {
                let lifted: Vec<Put> = state
                    .active_halts(&scope)
                    .into_iter()
                    .map(|mut h| {
                        h.resumed_by = Some(by.clone());
                        h.resumed_at_unix_ms = at_unix_ms;
                        h.resume_reason = reason.clone();
                        Put::Halt(h)
                    })
                    .collect();
                if lifted.is_empty() {
                    return Err(ApiError::from(HaltError::NothingActive {
                        scope: scope.to_string(),
                    })
                    .into());
                }
                let ids: Vec<u64> = lifted
                    .iter()
                    .filter_map(|p| if let Put::Halt(h) = p { Some(h.id) } else { None })
                    .collect();
                let listed: Vec<String> = ids.iter().map(u64::to_string).collect();
                let facts = to_facts(&Resumed {
                    ids,
                    scope: scope.to_string(),
                    reason: reason.clone(),
                    by: by.clone(),
                });
                let event = scope_event(
                    actor,
                    "resume",
                    &scope,
                    format!("halt {} on {scope} lifted: {reason}", listed.join(", ")),
                    facts,
                );
                Ok(Effect {
                    puts: lifted,
                    events: vec![event],
                    numbered: None,
                })
            }
            Self::Incident { snapshot, book, events } => {
                let current = book
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(snapshot.id)
                    .unwrap_or(snapshot);
                Ok(Effect {
                    puts: vec![Put::Incident(current)],
                    events,
                    numbered: None,
                })
            }
        }
    }
}

/// An audit event about a halt scope: the host or role it names is
/// filled in, so the log can be searched by either.
fn scope_event(actor: String, action: &str, scope: &HaltScope, detail: String, facts: String) -> AuditEvent {
    let (host, role) = match scope {
        HaltScope::Fleet => (String::new(), String::new()),
        HaltScope::Role(r) => (String::new(), r.clone()),
        HaltScope::Host(h) => (h.clone(), String::new()),
    };
    AuditEvent {
        actor,
        action: action.into(),
        host,
        role,
        detail,
        facts,
    }
}

fn attested(state: &Staged<'_>, a: Attested) -> Result<Effect, Refused> {
    let record = state.host(&a.host).unwrap_or_default();
    if let Some(rev) = &record.revoked {
        return Err(ApiError::from(AuthError::Revoked {
            host: a.host,
            by: rev.by.clone(),
            reason: rev.reason.clone(),
            removed: rev.removed,
        })
        .into());
    }
    if record.pinned_key_hex != a.pinned_key_hex {
        return Err(ApiError::from(AuthError::NotPinned { host: a.host }).into());
    }
    if a.seq <= record.last_seq {
        return Err(ApiError::Rejected(Rejection::Replay {
            seq: a.seq,
            last: record.last_seq,
        })
        .into());
    }
    // A new version set, a full measurement or a reboot is recorded; a
    // heartbeat that renews the same set is stored and counted
    // (`attestation.heartbeats`), not recorded one by one.
    let unchanged = !a.full && record.last_seq > 0 && record.digest_hex == a.digest_hex && record.boot_id == a.boot_id;
    let mut puts = Vec::new();
    if let Some(entries) = a.manifest.filter(|_| !state.has_manifest(&a.digest_hex)) {
        puts.push(Put::Manifest {
            digest_hex: a.digest_hex.clone(),
            entries,
        });
    }
    let events = if unchanged {
        Vec::new()
    } else {
        vec![AuditEvent {
            actor: a.actor,
            action: "attestation.accepted".into(),
            host: a.host.clone(),
            role: a.role.clone(),
            detail: format!(
                "seq {}, version set {}{}",
                a.seq,
                &a.digest_hex[..a.digest_hex.len().min(16)],
                if a.full { " (full)" } else { " (heartbeat)" }
            ),
            facts: String::new(),
        }]
    };
    puts.push(Put::Host(HostRecord {
        last_seq: a.seq,
        digest_hex: a.digest_hex,
        measured_at_unix_ms: a.measured_at_unix_ms,
        accepted_at_unix_ms: a.accepted_at_unix_ms,
        boot_id: a.boot_id,
        agent_version: a.agent_version,
        ..record
    }));
    Ok(Effect {
        puts,
        events,
        numbered: None,
    })
}

/// Why `e` may not spend its token, as a refusal that is recorded; the
/// token when it may.
pub fn check_enrollment(state: &Staged<'_>, e: &Enrolled) -> Result<TokenRecord, Refused> {
    let refuse = |why: String| Refused {
        events: vec![AuditEvent {
            actor: "unauthenticated".into(),
            action: "enroll.refused".into(),
            host: e.host.chars().take(64).collect(),
            role: String::new(),
            detail: why.clone(),
            facts: String::new(),
        }],
        error: EnrollError::TokenRefused(why).into(),
    };
    let token = state
        .token(&e.token_hash)
        .map_err(|err| Refused::from(ApiError::Store(err)))?;
    let Some(token) = token else {
        return Err(refuse(
            "unknown join token: create one with `lockstep token create`".into(),
        ));
    };
    let host = &e.host;
    let problem = if token.used_at_unix_ms != 0 {
        Some(format!(
            "join token was already used at {}: tokens are one-time, create a new one with `lockstep token create`",
            rfc3339(token.used_at_unix_ms)
        ))
    } else if state.now_unix_ms > token.expires_at_unix_ms {
        Some(format!(
            "join token expired at {}: create a new one with `lockstep token create`",
            rfc3339(token.expires_at_unix_ms)
        ))
    } else if token.host != *host {
        Some(format!("join token is for host {}, not {host}", token.host))
    } else if state.config.inventory.get(host) != Some(&token.role) {
        Some(format!(
            "host {host} is no longer in role {} in the controller config",
            token.role
        ))
    } else {
        state
            .host(host)
            .and_then(|r| r.revoked)
            .filter(|rev| token.created_at_unix_ms <= rev.at_unix_ms)
            .map(|rev| {
                format!(
                    "host {host} was revoked at {} after this token was made: re-enrolling needs a new token",
                    rfc3339(rev.at_unix_ms)
                )
            })
    };
    match problem {
        Some(why) => Err(refuse(why)),
        None => Ok(token),
    }
}

fn enrolled(state: &Staged<'_>, e: Enrolled) -> Result<Effect, Refused> {
    let mut token = check_enrollment(state, &e)?;
    let host = &e.host;
    let at = state.now_unix_ms;
    token.used_at_unix_ms = at;
    let record = HostRecord {
        host: host.clone(),
        role: token.role.clone(),
        pinned_key_hex: e.pinned_key_hex,
        pinned_at_unix_ms: at,
        enrolled_at_unix_ms: at,
        // A new identity starts afresh: no old measurement speaks for it.
        ..HostRecord::default()
    };
    let event = AuditEvent {
        actor: format!("agent {host}"),
        action: "host.enrolled".into(),
        host: host.clone(),
        role: token.role.clone(),
        detail: format!(
            "join token {} used; {}",
            &e.token_hash[..e.token_hash.len().min(12)],
            e.detail
        ),
        facts: String::new(),
    };
    Ok(Effect {
        puts: vec![Put::Token(token), Put::Host(record)],
        events: vec![event],
        numbered: None,
    })
}

fn approved(state: &Staged<'_>, actor: String, number: u64, by: String, at: i64) -> Result<Effect, Refused> {
    let mut record = state
        .release(number)
        .ok_or_else(|| ApiError::from(LookupError::NoRelease { number }))?;
    if let Some(earlier) = &record.approved_by {
        return Err(ApiError::from(ReleaseError::AlreadyApproved {
            number,
            by: earlier.clone(),
        })
        .into());
    }
    if record.proposed_by == by {
        return Err(ApiError::from(ReleaseError::TwoPersonRule { who: by, number }).into());
    }
    if let Some(active) = state.active_release(&record.role).filter(|a| a.number > number) {
        return Err(ApiError::from(ReleaseError::OlderThanActive {
            number,
            active: active.number,
            role: record.role,
        })
        .into());
    }
    record.approved_by = Some(by);
    record.approved_at_unix_ms = at;
    let event = AuditEvent {
        actor,
        action: "release.approved".into(),
        role: record.role.clone(),
        detail: format!("release {number} (proposed by {}) is now active", record.proposed_by),
        facts: to_facts(&ReleaseFact::of(&record)),
        ..Default::default()
    };
    Ok(Effect {
        puts: vec![Put::Release(record)],
        events: vec![event],
        numbered: None,
    })
}

/// The last millisecond RFC 3339 can write (9999-12-31T23:59:59Z).
pub const LAST_RFC3339_MS: i64 = 253_402_300_799_000;

/// `unix_ms` in RFC 3339, whole seconds. Times past year 9999 (a token
/// asked to never expire) are written as the last one: humantime's
/// formatter fails on them, and a panic inside a commit would refuse it.
pub fn rfc3339(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms.min(LAST_RFC3339_MS)).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}
