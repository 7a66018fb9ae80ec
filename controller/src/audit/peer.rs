//! Who is calling: the identity a connection's client certificate carries,
//! put on every request by the server.

use std::net::SocketAddr;

use lockstep_proto::identity::PeerIdentity;

/// Who is on the other end of a connection, as its certificate says.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: Option<SocketAddr>,
    /// Err when the (CA-valid) certificate carries no lockstep identity.
    pub identity: Result<PeerIdentity, String>,
}
