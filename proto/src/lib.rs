//! The lockstep wire contract and the rules both sides must agree on.
//!
//! - [`pb`]: generated protobuf messages and gRPC services.
//! - [`envelope`]: Ed25519 signing and verification of the exact bytes sent.
//! - [`digest`]: the canonical version-set digest.
//! - [`diff`]: comparing two version sets and describing each difference.
//! - [`identity`]: who a certificate names (agent host, operator, controller).
//! - [`manifest`]: the release manifest JSON file.
//! - [`paths`]: lossless path bytes and how they are shown to people.
//! - [`reason`]: the stable reasons of refusals, in the status details.
//! - [`tpm`]: which PCRs a TPM quote covers and how the session key is bound.
//!
//! How the parts reach each other (TLS, the failover channel) is
//! `lockstep-link`; how the daemons run (logging, signals, systemd,
//! `/metrics`, backoff) is `lockstep-daemon`. Neither is the contract.

pub mod diff;
pub mod digest;
pub mod envelope;
pub mod identity;
pub mod manifest;
pub mod paths;
pub mod reason;
pub mod tpm;

/// Generated from `lockstep/v1/lockstep.proto`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod pb {
    tonic::include_proto!("lockstep.v1");
}

/// The encoded `FileDescriptorSet` of the wire contract, served by gRPC
/// reflection so off-the-shelf tools (grpcurl...) can talk to lockstep.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lockstep_descriptor");

/// Milliseconds since the Unix epoch, the time unit on the wire.
pub fn now_unix_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}
