//! The agent's errors: what stops one report (retried with backoff by the
//! report loop) or the agent's start (printed, non-zero exit).

use lockstep_link::tls::TlsError;

use crate::measure::scan::ScanError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("controller refused the attestation: {}", .0.message())]
    Rejected(tonic::Status),
    #[error("controller unreachable: {}", .0.message())]
    Unreachable(tonic::Status),
    #[error("scan task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "no TLS key at {} (controller.key): this host is not enrolled yet; get a token with `lockstep token create` and run `lockstep-agent enroll --token TOKEN`",
        key.display()
    )]
    NotEnrolled { key: std::path::PathBuf },
    #[error(transparent)]
    Tpm(#[from] crate::tpm::TpmError),
}

impl From<tonic::Status> for AgentError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        match s.code() {
            Unavailable | DeadlineExceeded | Cancelled | Unknown => Self::Unreachable(s),
            _ => Self::Rejected(s),
        }
    }
}
