//! How lockstep's parts reach each other: the transport under the wire
//! contract, shared by the agent, the controller and the console.
//!
//! - [`tls`]: rustls configurations (ring, TLS 1.3, mutual auth), loading
//!   identities from PEM files, the board's server configuration.
//! - [`failover`]: the gRPC channel to one or several controllers,
//!   connecting side by side and following a standby's redirect to the
//!   leader.

pub mod failover;
pub mod tls;
