//! Releases: proposed by one operator, approved by a different one (the
//! two-person rule), numbered forward only. Rolling back is approving a new
//! release whose content equals an older one.

pub mod change;

use std::collections::BTreeMap;
use std::sync::Arc;

use lockstep_proto::digest::{self, short_hex};
use lockstep_proto::pb::{self, Release, ReleaseState, propose_release_request::Source};
use tracing::info;

use crate::audit::operator::Operator;
use crate::config::ControllerConfig;
use crate::error::{ApiError, LookupError};
use crate::fleet::FleetState;
use crate::gates::board::GateBoard;
use crate::ledger::Ledger;
use crate::releases::change::{ReleaseApproved, ReleaseProposed};
use crate::store::ReleaseRecord;

pub struct Releases {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    board: Arc<GateBoard>,
}

impl Releases {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, board: Arc<GateBoard>) -> Self {
        Self { config, ledger, board }
    }

    pub async fn propose(&self, who: &Operator, req: pb::ProposeReleaseRequest) -> Result<Release, ApiError> {
        let role = self.config.role(&req.role)?.name.clone();
        let boot_pcrs = self.boot_state(&role, &req)?;
        let (entries, source) = match req.source {
            Some(Source::FromHost(host)) => {
                let state = self.ledger.view();
                let rec = state
                    .hosts
                    .get(&host)
                    .filter(|r| r.has_reported())
                    .ok_or_else(|| LookupError::NotReported { host: host.clone() })?;
                if rec.role != role {
                    return Err(ReleaseError::HostInOtherRole {
                        host,
                        role: rec.role.clone(),
                        wanted: role,
                    }
                    .into());
                }
                let entries = state
                    .manifest(&rec.digest_hex)
                    .ok_or_else(|| ApiError::Internal(format!("manifest of {host} is missing from memory")))?;
                (entries, format!("host {host}"))
            }
            Some(Source::Manifest(m)) => {
                let entries = digest::canonicalize(m.entries).map_err(|e| ReleaseError::BadManifest(e.to_string()))?;
                (Arc::new(entries), "manifest file".to_string())
            }
            Some(Source::FromRelease(n)) => {
                let state = self.ledger.view();
                let earlier = state.releases.get(&n).ok_or(LookupError::NoRelease { number: n })?;
                if earlier.role != role {
                    return Err(ReleaseError::ReleaseOfOtherRole {
                        number: n,
                        role: earlier.role.clone(),
                        wanted: role,
                    }
                    .into());
                }
                let entries = state
                    .manifest(&earlier.digest_hex)
                    .ok_or_else(|| ApiError::Internal(format!("manifest of release {n} is missing from memory")))?;
                (entries, format!("release {n}"))
            }
            None => {
                return Err(ReleaseError::NoSource.into());
            }
        };
        let digest_hex = hex::encode(digest::digest(&entries));
        let release = ReleaseRecord {
            number: 0,
            role: role.clone(),
            digest_hex: digest_hex.clone(),
            entry_count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            source: format!(
                "{source} ({})",
                short_hex(&hex::decode(&digest_hex).unwrap_or_default())
            ),
            note: req.note,
            proposed_by: who.name.clone(),
            proposed_at_unix_ms: self.ledger.now_unix_ms(),
            approved_by: None,
            approved_at_unix_ms: 0,
            boot_pcrs,
            boot_from_host: req.boot_from_host.clone(),
        };
        let committed = self
            .ledger
            .commit(ReleaseProposed {
                actor: who.actor(),
                release,
                manifest: entries,
            })
            .await?;
        let record = committed
            .release()
            .cloned()
            .ok_or_else(|| ApiError::Internal("a release was committed without its record".into()))?;
        info!(release = record.number, role = %role, proposed_by = %who.name, "release proposed");
        Ok(self.to_pb(&record))
    }

    /// The boot state a proposal carries: the boot PCRs of the named
    /// reference host's last verified quote (`--boot-from`); else that of
    /// the release it rolls back to; else the role's active release's, so a
    /// new software release never drops an approved boot state unseen.
    fn boot_state(&self, role: &str, req: &pb::ProposeReleaseRequest) -> Result<BTreeMap<u32, String>, ApiError> {
        let state = self.ledger.view();
        if req.boot_from_host.is_empty() {
            let from = match req.source {
                Some(Source::FromRelease(n)) => state.releases.get(&n),
                _ => state.active_release(role),
            };
            return Ok(from.map(|r| r.boot_pcrs.clone()).unwrap_or_default());
        }
        let host = &req.boot_from_host;
        let rec = state
            .hosts
            .get(host)
            .ok_or_else(|| LookupError::NotReported { host: host.clone() })?;
        if rec.role != role {
            return Err(ReleaseError::HostInOtherRole {
                host: host.clone(),
                role: rec.role.clone(),
                wanted: role.to_string(),
            }
            .into());
        }
        let now = self.ledger.now_unix_ms();
        let max_age = i64::try_from(self.config.tpm_quote_max_age.as_millis()).unwrap_or(i64::MAX);
        let quote = match rec.tpm.as_ref().map(|t| t.quote.as_ref()) {
            None => return Err(ReleaseError::NoBootState(format!("host {host} is not TPM-bound")).into()),
            Some(None) => return Err(ReleaseError::NoBootState(format!("host {host} has not quoted yet")).into()),
            Some(Some(q)) if now - q.at_unix_ms > max_age => {
                return Err(ReleaseError::NoBootState(format!(
                    "host {host}'s last verified quote is {}s old ([tpm] quote_max_age {}s)",
                    (now - q.at_unix_ms) / 1000,
                    max_age / 1000
                ))
                .into());
            }
            Some(Some(q)) => q,
        };
        Ok(quote
            .pcrs
            .iter()
            .filter(|(i, _)| lockstep_proto::tpm::BOOT_PCRS.contains(i))
            .map(|(i, v)| (*i, v.clone()))
            .collect())
    }

    pub async fn approve(&self, who: &Operator, number: u64) -> Result<Release, ApiError> {
        // Whether it may be approved is decided by the commit, in order
        // with every other approval.
        let committed = self
            .ledger
            .commit(ReleaseApproved {
                actor: who.actor(),
                number,
                by: who.name.clone(),
                at_unix_ms: self.ledger.now_unix_ms(),
            })
            .await?;
        let record = committed
            .release()
            .cloned()
            .ok_or_else(|| ApiError::Internal("an approval was committed without its record".into()))?;
        info!(release = number, role = %record.role, approved_by = %who.name, "release approved and active");
        self.board.after(&committed);
        Ok(self.to_pb(&record))
    }

    pub fn list(&self, role: &str) -> Vec<Release> {
        list_in(&self.ledger.view(), role)
    }

    fn to_pb(&self, r: &ReleaseRecord) -> Release {
        to_pb_in(&self.ledger.view(), r)
    }
}

/// The releases of `state` for `role` (every role when empty).
pub fn list_in(state: &FleetState, role: &str) -> Vec<Release> {
    state
        .releases
        .values()
        .filter(|r| role.is_empty() || r.role == role)
        .map(|r| to_pb_in(state, r))
        .collect()
}

fn to_pb_in(state: &FleetState, r: &ReleaseRecord) -> Release {
    let active = state.active_release(&r.role).map(|a| a.number);
    let release_state = match (&r.approved_by, active) {
        (None, _) => ReleaseState::Proposed,
        (Some(_), Some(n)) if n == r.number => ReleaseState::Active,
        (Some(_), _) => ReleaseState::Superseded,
    };
    Release {
        number: r.number,
        role: r.role.clone(),
        digest: hex::decode(&r.digest_hex).unwrap_or_default(),
        entry_count: r.entry_count,
        source: r.source.clone(),
        note: r.note.clone(),
        proposed_by: r.proposed_by.clone(),
        proposed_at_unix_ms: r.proposed_at_unix_ms,
        approved_by: r.approved_by.clone().unwrap_or_default(),
        approved_at_unix_ms: r.approved_at_unix_ms,
        state: release_state as i32,
        boot_pcrs: r
            .boot_pcrs
            .iter()
            .map(|(i, v)| pb::PcrValue {
                index: *i,
                sha256: hex::decode(v).unwrap_or_default(),
            })
            .collect(),
        boot_from_host: r.boot_from_host.clone(),
    }
}

/// Proposing and approving releases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("give --from-host HOST, --manifest FILE or --from-release N")]
    NoSource,
    #[error("manifest: {0}")]
    BadManifest(String),
    #[error("host {host} is in role {role}, not {wanted}")]
    HostInOtherRole { host: String, role: String, wanted: String },
    #[error("release {number} is of role {role}, not {wanted}")]
    ReleaseOfOtherRole { number: u64, role: String, wanted: String },
    #[error("release {number} was already approved by {by}")]
    AlreadyApproved { number: u64, by: String },
    #[error("two-person rule: {who} proposed release {number} and cannot also approve it; another approver must")]
    TwoPersonRule { who: String, number: u64 },
    #[error(
        "release {number} is older than active release {active} of role {role}; to roll back, propose a new release with the old content"
    )]
    OlderThanActive { number: u64, active: u64, role: String },
    #[error("--boot-from: {0}: name a TPM-bound host of the role whose agent runs with [identity] tpm")]
    NoBootState(String),
}

impl crate::error::DomainError for ReleaseError {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::NoSource | Self::BadManifest(_) | Self::HostInOtherRole { .. } | Self::ReleaseOfOtherRole { .. } => {
                (C::InvalidArgument, r::INVALID_ARGUMENT)
            }
            Self::NoBootState(_) => (C::FailedPrecondition, r::INVALID_ARGUMENT),
            Self::AlreadyApproved { .. } => (C::FailedPrecondition, r::ALREADY_APPROVED),
            Self::TwoPersonRule { .. } => (C::PermissionDenied, r::TWO_PERSON_RULE),
            Self::OlderThanActive { .. } => (C::FailedPrecondition, r::OLDER_THAN_ACTIVE),
        }
    }
}

impl From<ReleaseError> for tonic::Status {
    fn from(e: ReleaseError) -> Self {
        crate::error::ApiError::from(e).into()
    }
}
