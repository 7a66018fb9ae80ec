//! The kill switch. A halt closes every gate it covers at once, is pushed to
//! the agents' directive streams, and stays until lifted by `resume` with the
//! same scope. Halts are kept after they are lifted.

pub mod change;

use std::sync::Arc;

use lockstep_proto::pb::{self, halt_scope::Scope};
use tracing::warn;

use crate::audit::operator::Operator;
use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::fleet::FleetState;
use crate::gates::board::GateBoard;
use crate::halts::change::{Halted, Resumed};
use crate::ledger::Ledger;
use crate::store::{HaltRecord, HaltScope};

pub struct Halts {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    board: Arc<GateBoard>,
}

impl Halts {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, board: Arc<GateBoard>) -> Self {
        Self { config, ledger, board }
    }

    fn scope_from(&self, scope: Option<pb::HaltScope>) -> Result<HaltScope, ApiError> {
        match scope.and_then(|s| s.scope) {
            Some(Scope::Fleet(true)) => Ok(HaltScope::Fleet),
            Some(Scope::Role(r)) => {
                self.config.role(&r)?;
                Ok(HaltScope::Role(r))
            }
            Some(Scope::Host(h)) => {
                if !self.config.inventory.contains_key(&h) {
                    return Err(crate::config::NotInConfig::UnknownHost { host: h }.into());
                }
                Ok(HaltScope::Host(h))
            }
            _ => Err(HaltError::NoScope.into()),
        }
    }

    /// Inventory hosts covered by `scope`.
    fn covered(&self, scope: &HaltScope) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .config
            .inventory
            .iter()
            .filter(|(h, r)| scope.covers(h, r))
            .map(|(h, _)| h.clone())
            .collect();
        hosts.sort();
        hosts
    }

    pub async fn halt(&self, who: &Operator, req: pb::HaltRequest) -> Result<pb::HaltReply, ApiError> {
        if req.reason.trim().is_empty() {
            return Err(HaltError::NoReason.into());
        }
        let scope = self.scope_from(req.scope)?;
        let halt = HaltRecord {
            id: 0,
            scope: scope.clone(),
            reason: req.reason,
            halted_by: who.name.clone(),
            halted_at_unix_ms: self.ledger.now_unix_ms(),
            resumed_by: None,
            resumed_at_unix_ms: 0,
            resume_reason: String::new(),
            drill: req.drill,
        };
        let committed = self
            .ledger
            .commit(Halted {
                actor: who.actor(),
                halt,
            })
            .await?;
        let record = committed
            .halts()
            .next()
            .cloned()
            .ok_or_else(|| ApiError::Internal("a halt was committed without its record".into()))?;
        let id = record.id;
        warn!(halt = id, scope = %scope, by = %record.halted_by, reason = %record.reason, "HALT");
        self.board.after(&committed);
        Ok(pb::HaltReply {
            hosts: self.covered(&scope),
            halt: Some(to_pb(&record)),
        })
    }

    pub async fn resume(&self, who: &Operator, req: pb::ResumeRequest) -> Result<pb::ResumeReply, ApiError> {
        let scope = self.scope_from(req.scope)?;
        let now = self.ledger.now_unix_ms();
        let committed = self
            .ledger
            .commit(Resumed {
                actor: who.actor(),
                scope: scope.clone(),
                by: who.name.clone(),
                reason: req.reason,
                at_unix_ms: now,
            })
            .await?;
        warn!(scope = %scope, by = %who.name, "resumed");
        self.board.after(&committed);
        let state = self.ledger.view();
        let resumed = committed.halts().map(to_pb).collect();
        let still_halted = self
            .covered(&scope)
            .into_iter()
            .filter(|host| {
                let role = self.config.inventory.get(host).cloned().unwrap_or_default();
                state
                    .halts
                    .values()
                    .any(|h| h.is_active() && h.scope.covers(host, &role))
            })
            .collect();
        Ok(pb::ResumeReply { resumed, still_halted })
    }

    pub fn list(&self, all: bool) -> Vec<pb::Halt> {
        list_in(&self.ledger.view(), all)
    }
}

/// The halts of `state`: those in force, or `all` of them.
pub fn list_in(state: &FleetState, all: bool) -> Vec<pb::Halt> {
    state
        .halts
        .values()
        .filter(|h| all || h.is_active())
        .map(to_pb)
        .collect()
}

fn to_pb(h: &HaltRecord) -> pb::Halt {
    let scope = match &h.scope {
        HaltScope::Fleet => Scope::Fleet(true),
        HaltScope::Role(r) => Scope::Role(r.clone()),
        HaltScope::Host(x) => Scope::Host(x.clone()),
    };
    pb::Halt {
        id: h.id,
        scope: Some(pb::HaltScope { scope: Some(scope) }),
        reason: h.reason.clone(),
        halted_by: h.halted_by.clone(),
        halted_at_unix_ms: h.halted_at_unix_ms,
        resumed_by: h.resumed_by.clone().unwrap_or_default(),
        resumed_at_unix_ms: h.resumed_at_unix_ms,
        resume_reason: h.resume_reason.clone(),
        drill: h.drill,
    }
}

/// The kill switch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaltError {
    #[error("say what to halt: --fleet, --role ROLE or --host HOST")]
    NoScope,
    #[error("a halt needs --reason: the people you stop will read it")]
    NoReason,
    #[error("no active halt on {scope}; `lockstep halts` lists the active ones and their scopes")]
    NothingActive { scope: String },
}

impl crate::error::DomainError for HaltError {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::NoScope | Self::NoReason => (C::InvalidArgument, r::INVALID_ARGUMENT),
            Self::NothingActive { .. } => (C::NotFound, r::NO_ACTIVE_HALT),
        }
    }
}

impl From<HaltError> for tonic::Status {
    fn from(e: HaltError) -> Self {
        crate::error::ApiError::from(e).into()
    }
}
