//! The lockstep wire contract and the rules both sides must agree on.
//!
//! - [`pb`]: generated protobuf messages and gRPC services.
//! - [`envelope`]: Ed25519 signing and verification of the exact bytes sent.
//! - [`digest`]: the canonical version-set digest.
//! - [`diff`]: comparing two version sets and describing each difference.
//! - [`identity`]: who a certificate names (agent host, operator, controller).
//! - [`tls`]: rustls configurations (ring, TLS 1.3, mutual auth).
//! - [`failover`]: the gRPC channel the agent and the console open to one or
//!   several controllers, following a
//!   standby's redirect to the leader.
//! - [`manifest`]: the release manifest JSON file.
//! - [`paths`]: lossless path bytes and how they are shown to people.
//! - [`reason`]: the stable reasons of refusals, in the status details.
//!
//! How the daemons run (logging, signals, systemd, `/metrics`, backoff) is
//! not the contract: it is `lockstep-daemon`.

pub mod diff;
pub mod digest;
pub mod envelope;
pub mod failover;
pub mod identity;
pub mod manifest;
pub mod paths;
pub mod reason;
pub mod tls;

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
