//! The controller's network front: one TLS acceptor for every port
//! ([`server`]), the peer's identity ([`peer`]), who may call what ([`authz`],
//! one table, refusals audited once in [`refusals`]), calls that finish
//! when their client goes away ([`detach`]), and the gRPC services
//! ([`service`]).

pub mod authz;
pub mod detach;
pub mod refusals;
pub mod server;
pub mod service;
pub mod standing;
