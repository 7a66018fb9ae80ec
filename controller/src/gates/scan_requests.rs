//! `lockstep scan --host`: an operator asks a connected agent for a full
//! scan now, in market hours too (where its periodic full rescan waits for
//! the window to end). A request is for a live agent, answered by its next
//! attestation: it is audited, not kept; a host whose agent is not
//! connected is refused, never silently queued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lockstep_proto::pb;
use tokio::sync::watch;
use tracing::info;

use crate::audit::operator::Operator;
use crate::config::ControllerConfig;
use crate::error::ApiError;
use crate::ledger::Ledger;
use lockstep_evidence::chain::AuditEvent;

/// The latest scan request of each host, watched by its directive stream.
pub struct ScanRequests {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    hosts: Mutex<HashMap<String, watch::Sender<Option<pb::ScanRequest>>>>,
    next_id: AtomicU64,
}

impl ScanRequests {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>) -> Self {
        Self {
            config,
            ledger,
            hosts: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Requests for `host` from now on, for its directive stream.
    pub fn watch(&self, host: &str) -> watch::Receiver<Option<pb::ScanRequest>> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut rx = hosts
            .entry(host.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        rx.mark_unchanged(); // an earlier request is not this stream's
        rx
    }

    /// Hands `request` to `host`'s open directive streams; false when none is open.
    fn send(&self, host: &str, mut request: pb::ScanRequest) -> Option<u64> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let tx = hosts.get(host).filter(|tx| tx.receiver_count() > 0)?;
        request.id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let id = request.id;
        tx.send_replace(Some(request));
        Some(id)
    }

    /// `lockstep scan --host`: asks the host's connected agent for a full scan.
    pub async fn request(
        &self,
        who: &Operator,
        req: &pb::RequestScanRequest,
    ) -> Result<pb::RequestScanReply, ApiError> {
        let host = req.host.clone();
        let Some(role) = self.config.inventory.get(&host).cloned() else {
            return Err(crate::config::NotInConfig::UnknownHost { host }.into());
        };
        let request = pb::ScanRequest {
            id: 0,
            requested_by: who.name.clone(),
            reason: req.reason.clone(),
        };
        let id = self
            .send(&host, request)
            .ok_or_else(|| ScanError::NotConnected { host: host.clone() })?;
        let event = AuditEvent {
            actor: who.actor(),
            action: lockstep_evidence::action::AuditAction::ScanRequested,
            host: host.clone(),
            role,
            detail: format!("full scan {id} of {host} requested: {}", req.reason),
            facts: String::new(),
        };
        self.ledger.record(vec![event]).await?;
        info!(host = %host, id, by = %who.name, "full scan requested");
        Ok(pb::RequestScanReply { host, id })
    }
}

/// `lockstep scan --host`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error(
        "{host}'s agent is not connected (no directive stream): nothing was asked; `lockstep host {host}` shows when it last reported"
    )]
    NotConnected { host: String },
}

impl crate::error::DomainError for ScanError {
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use lockstep_proto::reason as r;
        use tonic::Code as C;
        match self {
            Self::NotConnected { .. } => (C::FailedPrecondition, r::AGENT_NOT_CONNECTED),
        }
    }
}

impl From<ScanError> for tonic::Status {
    fn from(e: ScanError) -> Self {
        crate::error::ApiError::from(e).into()
    }
}
