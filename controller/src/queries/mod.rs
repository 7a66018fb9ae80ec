//! Read-only console queries: hosts, one host, diffs, the gate check and
//! the audit log. Each is answered from one fleet view ([`ViewReads`]): the
//! leader's committed view here, or a standby's followed view
//! ([`crate::ha::standby_console`]), so both give the same answer to the same
//! state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lockstep_proto::diff;
use lockstep_proto::pb::{self, HostStatus, diff_request::Against};

use crate::audit::operator::Operator;
use crate::config::{ControllerConfig, RoleConfig};
use crate::error::{ApiError, LookupError};
use crate::fleet::FleetState;
use crate::fleet::gate::Clock;
use crate::gates::board::{GateBoard, gate_word};
use crate::ledger::Ledger;
use crate::store::IncidentRecord;
use crate::store::{HaltRecord, HaltScope, Store};
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::facts::{GateChecked, HaltFact, HostFact, IncidentFact, ReleaseFact};
use lockstep_evidence::gate_state;

pub struct Queries {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    board: Arc<GateBoard>,
    /// Each role's last written `gate.state`, so an unchanged check names
    /// it instead of writing every host again. Held across a recorded
    /// check, so two checks of a role never both write its change. A new
    /// leader starts empty: its first check of a role writes the whole state.
    gate_states: tokio::sync::Mutex<HashMap<String, gate_state::Written>>,
}

fn status_of(state: &FleetState, role: &RoleConfig, host: &str, gate: pb::Gate, clock: Clock) -> HostStatus {
    let rec = state
        .hosts
        .get(host)
        .filter(|r| r.role == role.name)
        .cloned()
        .unwrap_or_default();
    let entry_count = state.manifest(&rec.digest_hex).map_or(0, |m| m.len());
    HostStatus {
        host: host.to_string(),
        role: role.name.clone(),
        gate: Some(gate),
        last_seq: rec.last_seq,
        last_measured_at_unix_ms: rec.measured_at_unix_ms,
        last_received_at_unix_ms: rec.accepted_at_unix_ms,
        digest: hex::decode(&rec.digest_hex).unwrap_or_default(),
        entry_count: u32::try_from(entry_count).unwrap_or(u32::MAX),
        boot_id: rec.boot_id,
        last_rejection: rec.last_rejection.map(|r| r.reason).unwrap_or_default(),
        agent_version: rec.agent_version,
        tpm: rec.tpm.as_deref().map(|t| tpm_status(state, role, t, clock)),
    }
}

/// A TPM-bound host's binding and last quote, against its role's release.
fn tpm_status(state: &FleetState, role: &RoleConfig, t: &crate::store::TpmBinding, clock: Clock) -> pb::TpmStatus {
    let release = state.active_release(&role.name).filter(|r| !r.boot_pcrs.is_empty());
    let verdict = match (&t.quote, release) {
        (None, _) => "no verified quote yet".to_string(),
        (Some(q), _) if clock.now_unix_ms - q.at_unix_ms > clock.quote_max_age_ms => format!(
            "no verified quote within {} s ([tpm] quote_max_age)",
            clock.quote_max_age_ms / 1000
        ),
        (Some(_), None) => "no boot state in the release".to_string(),
        (Some(q), Some(r)) => {
            let differ: Vec<String> = r
                .boot_pcrs
                .iter()
                .filter(|(i, v)| q.pcrs.get(i) != Some(v))
                .map(|(i, _)| format!("PCR {i}"))
                .collect();
            if differ.is_empty() {
                format!("boot PCRs match release {}", r.number)
            } else {
                format!("{} differ from release {}", differ.join(", "), r.number)
            }
        }
    };
    pb::TpmStatus {
        bound: true,
        ek_trust: t.ek_trust.clone(),
        ek_id: crate::tpm::key_id(&hex::decode(&t.ek_public_hex).unwrap_or_default()),
        last_quote_unix_ms: t.quote.as_ref().map_or(0, |q| q.at_unix_ms),
        verdict,
    }
}

/// The console's reads of one fleet view, as of `clock`.
pub struct ViewReads<'a> {
    config: &'a ControllerConfig,
    state: &'a FleetState,
    clock: Clock,
}

impl<'a> ViewReads<'a> {
    pub fn new(config: &'a ControllerConfig, state: &'a FleetState, clock: Clock) -> Self {
        Self { config, state, clock }
    }

    pub fn state(&self) -> &FleetState {
        self.state
    }

    pub fn list_hosts(&self, role: &str) -> Result<Vec<HostStatus>, ApiError> {
        if !role.is_empty() {
            self.config.role(role)?;
        }
        let (clock, state) = (self.clock, self.state);
        let mut out = Vec::new();
        for r in self.config.roles.values().filter(|r| role.is_empty() || r.name == role) {
            let (gates, _) = state.role_gates(r, clock);
            for (host, gate) in r.hosts.iter().zip(gates) {
                out.push(status_of(state, r, host, gate, self.clock));
            }
        }
        Ok(out)
    }

    pub fn get_host(&self, host: &str, include_entries: bool) -> Result<pb::HostDetail, ApiError> {
        let role = self.config.host_role(host)?;
        let state = self.state;
        let gate = state.host_gate(role, host, self.clock);
        let status = status_of(state, role, host, gate, self.clock);
        let entries = if include_entries {
            state
                .manifest(&hex::encode(&status.digest))
                .map(|m| m.to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(pb::HostDetail {
            status: Some(status),
            entries,
        })
    }

    pub fn diff(&self, req: &pb::DiffRequest) -> Result<pb::DiffReply, ApiError> {
        let role = self.config.host_role(&req.host)?;
        let state = self.state;
        let host_entries = |host: &str| {
            state
                .hosts
                .get(host)
                .filter(|r| r.has_reported())
                .and_then(|r| state.manifest(&r.digest_hex))
                .ok_or_else(|| LookupError::NotReported { host: host.to_string() })
        };
        let left = host_entries(&req.host)?;
        let (right_label, right) = match &req.against {
            Some(Against::OtherHost(other)) => (other.clone(), host_entries(other)?),
            Some(Against::Release(n)) => {
                let release = if *n == 0 {
                    state
                        .active_release(&role.name)
                        .ok_or_else(|| LookupError::NoActiveRelease {
                            role: role.name.clone(),
                        })?
                } else {
                    state.releases.get(n).ok_or(LookupError::NoRelease { number: *n })?
                };
                let entries = state
                    .manifest(&release.digest_hex)
                    .ok_or_else(|| ApiError::Internal(format!("manifest of release {} missing", release.number)))?;
                (format!("release {}", release.number), entries)
            }
            None => {
                return Err(LookupError::NoDiffTarget.into());
            }
        };
        let changes = diff::diff(&left, &right, &right_label, |p| role.is_excluded_from_comparison(p));
        let per_host_excluded = left
            .iter()
            .chain(right.iter())
            .filter(|e| role.is_excluded_from_comparison(&e.path))
            .count();
        Ok(pb::DiffReply {
            left: req.host.clone(),
            right: right_label,
            changes,
            per_host_excluded: u32::try_from(per_host_excluded).unwrap_or(u32::MAX),
        })
    }

    pub fn gate_check(&self, role: &str) -> Result<pb::GateCheckReply, ApiError> {
        let role = self.config.role(role)?;
        let (gates, release) = self.state.role_gates(role, self.clock);
        Ok(pb::GateCheckReply {
            role: role.name.clone(),
            mode: role.mode.as_str().to_string(),
            release,
            gates,
        })
    }
}

impl Queries {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, board: Arc<GateBoard>) -> Self {
        Self {
            config,
            ledger,
            board,
            gate_states: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn list_hosts(&self, role: &str) -> Result<Vec<HostStatus>, ApiError> {
        ViewReads::new(&self.config, &self.ledger.view(), self.board.clock()).list_hosts(role)
    }

    pub fn get_host(&self, host: &str, include_entries: bool) -> Result<pb::HostDetail, ApiError> {
        ViewReads::new(&self.config, &self.ledger.view(), self.board.clock()).get_host(host, include_entries)
    }

    pub fn diff(&self, req: &pb::DiffRequest) -> Result<pb::DiffReply, ApiError> {
        ViewReads::new(&self.config, &self.ledger.view(), self.board.clock()).diff(req)
    }

    /// `lockstep gate check`: its answer, recorded as a `gate.checked`
    /// audit record with every fact it rests on (the pre-open report's
    /// evidence) before it is given. An answer the audit log does not hold
    /// is no evidence, and an OPEN one could rest on a state another
    /// controller has moved past: a leader on etcd (whose failed write
    /// deposes it) answers nothing ([`Unrecorded`]); sled's one controller
    /// still answers a check that opens nothing, since its store's failure
    /// is what closed those gates.
    pub async fn gate_check_recorded(
        &self,
        who: &Operator,
        role: &str,
        incidents: &[IncidentRecord],
    ) -> Result<pb::GateCheckReply, ApiError> {
        let (reply, mut facts) = self.gate_check_with_facts(role, incidents)?;
        let mut states = self.gate_states.lock().await;
        match self
            .name_gate_state(&mut states, &reply.role, &who.actor(), &mut facts)
            .await
        {
            Ok(()) => {}
            Err(e) if self.ledger.store().epoch() > 0 || facts.exit == 0 => {
                tracing::error!(error = %e, role = %reply.role, "cannot record a gate state in the audit log");
                return Err(Unrecorded(e.to_string()).into());
            }
            // sled's one controller still answers a check that opens
            // nothing; its record keeps every host itself.
            Err(_) => {}
        }
        let event = AuditEvent {
            actor: who.actor(),
            action: AuditAction::GateChecked,
            host: String::new(),
            role: reply.role.clone(),
            detail: format!("{}; exit {}", facts.summary, facts.exit),
            facts: lockstep_evidence::facts::to_facts(&facts),
        };
        if let Err(e) = self.ledger.record(vec![event]).await {
            tracing::error!(error = %e, role = %reply.role, "cannot record a gate check in the audit log");
            if self.ledger.store().epoch() > 0 || facts.exit == 0 {
                return Err(Unrecorded(e.to_string()).into());
            }
        }
        Ok(reply)
    }

    /// Moves a check's hosts into the role's gate state: names the last
    /// written one when nothing changed, else writes what changed first.
    async fn name_gate_state(
        &self,
        states: &mut HashMap<String, gate_state::Written>,
        role: &str,
        actor: &str,
        facts: &mut GateChecked,
    ) -> Result<(), ApiError> {
        // Every heartbeat moves a host's last attestation: a state keeps
        // what only a change moves.
        let hosts: BTreeMap<String, HostFact> = facts
            .hosts
            .iter()
            .map(|h| {
                let kept = HostFact {
                    last_seq: 0,
                    measured_at_unix_ms: 0,
                    accepted_at_unix_ms: 0,
                    ..h.clone()
                };
                (h.host.clone(), kept)
            })
            .collect();
        let now = self.ledger.now_unix_ms();
        let last = states.remove(role);
        let written = match gate_state::next(role, last.as_ref(), &hosts, now) {
            None => last,
            Some(state) => {
                let event = AuditEvent {
                    actor: actor.to_string(),
                    action: AuditAction::GateState,
                    host: String::new(),
                    role: role.to_string(),
                    detail: if state.base == 0 {
                        format!("gate state of {role}: {} hosts", state.hosts.len())
                    } else {
                        format!(
                            "gate state of {role}: {} of {} hosts changed since record {}",
                            state.hosts.len() + state.removed.len(),
                            hosts.len(),
                            state.base
                        )
                    },
                    facts: lockstep_evidence::facts::to_facts(&state),
                };
                // On failure what was written is unknown: the role's entry
                // is gone, so the next check writes the whole state.
                let seq = self.ledger.record_numbered(vec![event]).await?;
                Some(gate_state::written(last, &state, seq, hosts, now))
            }
        };
        if let Some(w) = written {
            facts.state = Some(gate_state::StateRef {
                seq: w.seq,
                digest: w.digest.clone(),
            });
            facts.hosts.clear();
            states.insert(role.to_string(), w);
        }
        Ok(())
    }

    /// The gate check's answer and, from the same read of the view, the
    /// facts a `gate.checked` record keeps of it (the pre-open report rests
    /// on them). `incidents` is the incident book as it stands.
    pub fn gate_check_with_facts(
        &self,
        role: &str,
        incidents: &[IncidentRecord],
    ) -> Result<(pb::GateCheckReply, GateChecked), ApiError> {
        let role = self.config.role(role)?;
        let view = self.ledger.view();
        let (gates, release) = view.role_gates(role, self.board.clock());
        let hosts: Vec<HostFact> = gates
            .iter()
            .map(|g| {
                let rec = view.hosts.get(&g.host).filter(|r| r.role == role.name);
                HostFact {
                    host: g.host.clone(),
                    gate: gate_word(g.state()).into(),
                    reasons: g.reasons.iter().map(|r| r.text.clone()).collect(),
                    agent_version: rec.map(|r| r.agent_version.clone()).unwrap_or_default(),
                    last_seq: rec.map_or(0, |r| r.last_seq),
                    measured_at_unix_ms: rec.map_or(0, |r| r.measured_at_unix_ms),
                    accepted_at_unix_ms: rec.map_or(0, |r| r.accepted_at_unix_ms),
                    digest: rec.map(|r| r.digest_hex.clone()).unwrap_or_default(),
                    tpm: rec.and_then(|r| r.tpm.as_deref()).map(|t| {
                        let s = tpm_status(&view, role, t, self.board.clock());
                        lockstep_evidence::facts::TpmFact {
                            ek: s.ek_id,
                            ek_trust: s.ek_trust,
                            boot: s.verdict,
                            quote_max_age_s: u64::try_from(self.board.clock().quote_max_age_ms / 1000).unwrap_or(0),
                        }
                    }),
                }
            })
            .collect();
        let covers = |h: &HaltRecord| match &h.scope {
            HaltScope::Fleet => true,
            HaltScope::Role(r) => *r == role.name,
            HaltScope::Host(x) => role.hosts.contains(x),
        };
        let halts = view
            .halts
            .values()
            .filter(|h| h.is_active() && covers(h))
            .map(HaltFact::from)
            .collect();
        let reply = pb::GateCheckReply {
            role: role.name.clone(),
            mode: role.mode.as_str().to_string(),
            release,
            gates,
        };
        let facts = GateChecked {
            exit: lockstep_evidence::gate_check::exit_code(&reply.gates) as u8,
            summary: lockstep_evidence::gate_check::recorded_summary(&reply),
            mode: reply.mode.clone(),
            release: view.releases.get(&release).map(ReleaseFact::from),
            hosts,
            state: None,
            halts,
            incidents: incidents
                .iter()
                .filter(|i| !i.is_closed() && (i.role.is_empty() || i.role == role.name))
                .map(IncidentFact::from)
                .collect(),
        };
        Ok((reply, facts))
    }

    pub fn gate_check(&self, role: &str) -> Result<pb::GateCheckReply, ApiError> {
        ViewReads::new(&self.config, &self.ledger.view(), self.board.clock()).gate_check(role)
    }

    /// Audit records matching the filters, oldest first.
    pub fn list_audit(&self, req: &pb::ListAuditRequest) -> Result<pb::AuditList, ApiError> {
        list_audit(self.ledger.store(), &self.config.audit.archive_dir, req)
    }

    /// Checks the whole audit chain as stored.
    pub fn verify_audit(&self) -> Result<pb::VerifyAuditReply, ApiError> {
        verify_audit(self.ledger.store())
    }
}

/// At most this many records in one `audit` answer (the console asks
/// again from the last seq for more): one reply stays far below the gRPC
/// message bound whatever the log holds.
pub const AUDIT_REPLY_MAX: usize = 5_000;

/// At most this many records are looked at for one `audit` answer whose
/// filters match few of them; the reply then says where to go on from.
const AUDIT_SCAN_MAX: u64 = 200_000;

/// Audit records matching the filters, oldest first: forwards from
/// `after_seq` (or from `since`, or the start) when no `limit` is asked,
/// else the newest `limit`; at most [`AUDIT_REPLY_MAX`], looking at no
/// more than [`AUDIT_SCAN_MAX`] records. Read page by page; never the
/// whole log.
pub fn list_audit(
    store: &dyn Store,
    archive_dir: &std::path::Path,
    req: &pb::ListAuditRequest,
) -> Result<pb::AuditList, ApiError> {
    use crate::store::audit_reads::{AuditSource, PAGE, first_sealed_at_or_after, pages_until};
    // Archived records are read from their files, the rest from the store.
    let log = crate::archive::log::Log::open(store, archive_dir).map_err(ApiError::Store)?;
    let store = &log;
    let matches = |r: &lockstep_evidence::chain::AuditRecord| {
        (req.host.is_empty() || r.host == req.host)
            && (req.role.is_empty() || r.role == req.role)
            && r.at_unix_ms >= req.since_unix_ms
    };
    let mut list = pb::AuditList::default();
    let Some(head) = store.last().map_err(ApiError::Store)?.map(|r| r.seq) else {
        return Ok(list);
    };
    if req.after_seq > 0 || req.limit == 0 {
        let limit = match usize::try_from(req.limit).unwrap_or(usize::MAX) {
            0 => AUDIT_REPLY_MAX,
            n => n.min(AUDIT_REPLY_MAX),
        };
        let from = if req.after_seq > 0 {
            req.after_seq + 1
        } else if req.since_unix_ms > 0 {
            first_sealed_at_or_after(store, req.since_unix_ms)
                .map_err(ApiError::Store)?
                .unwrap_or(head + 1)
        } else {
            0
        };
        let until = head.min(from.saturating_add(AUDIT_SCAN_MAX));
        let mut looked_at = from.saturating_sub(1);
        'pages: for page in pages_until(store, from, until) {
            for r in page.map_err(ApiError::Store)? {
                looked_at = r.seq;
                if matches(&r) {
                    list.records.push(r.to_pb());
                    if list.records.len() >= limit {
                        break 'pages;
                    }
                }
            }
        }
        list.more = looked_at < head;
        list.next_after_seq = looked_at;
        return Ok(list);
    }
    // Backwards from the head, a page at a time: the newest `limit` matches.
    let limit = usize::try_from(req.limit).unwrap_or(usize::MAX).min(AUDIT_REPLY_MAX);
    let floor = head.saturating_sub(AUDIT_SCAN_MAX).max(1);
    let mut upper = head;
    while list.records.len() < limit {
        let lower = upper.saturating_sub(PAGE as u64 - 1).max(floor);
        let mut page = Vec::new();
        for p in pages_until(store, lower, upper) {
            page.extend(p.map_err(ApiError::Store)?);
        }
        let before_since = page.first().is_some_and(|r| r.at_unix_ms < req.since_unix_ms);
        list.records
            .extend(page.iter().rev().filter(|r| matches(r)).map(|r| r.to_pb()));
        if before_since || lower == floor {
            break;
        }
        upper = lower - 1;
    }
    list.records.truncate(limit);
    list.records.reverse();
    list.next_after_seq = head;
    Ok(list)
}

/// Checks the whole audit chain as stored, a page in memory at a time:
/// from the first record, or, once segments were archived, from the
/// record after the archive's last (which must follow it).
pub fn verify_audit(store: &dyn Store) -> Result<pb::VerifyAuditReply, ApiError> {
    let mark = store.archive_mark().map_err(ApiError::Store)?;
    let mut check = mark
        .as_ref()
        .map_or_else(lockstep_evidence::chain::ChainCheck::from_start, |m| {
            lockstep_evidence::chain::ChainCheck::after(m.head())
        });
    let outcome = crate::store::audit_reads::verify(store, &mut check).map_err(ApiError::Store)?;
    let (archived_through, archive_file) = mark.map_or((0, String::new()), |m| (m.through_seq, m.file));
    let count = check.head().next_seq - 1 - archived_through;
    Ok(match outcome {
        Ok(()) => pb::VerifyAuditReply {
            ok: true,
            records: count,
            archived_through,
            archive_file,
            ..Default::default()
        },
        Err(b) => {
            tracing::error!(seq = b.seq, problem = %b.problem, "AUDIT CHAIN BROKEN");
            pb::VerifyAuditReply {
                ok: false,
                records: count,
                first_broken_seq: b.seq,
                problem: b.problem,
                archived_through,
                archive_file,
            }
        }
    })
}

/// A gate check whose record could not be written: not answered.
#[derive(Debug, thiserror::Error)]
#[error(
    "this gate check was not answered: its record could not be written to the audit log ({0}), and no answer is given that the log does not hold"
)]
pub struct Unrecorded(pub String);

impl crate::error::DomainError for Unrecorded {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        (tonic::Code::Unavailable, lockstep_proto::reason::STORE_UNAVAILABLE)
    }
}
