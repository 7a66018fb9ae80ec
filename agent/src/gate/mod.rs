//! The host's side of the gate: the controller's word kept as a local
//! lease and state file ([`gatekeeper`]) and the hooks run on its
//! transitions ([`hooks`]).

pub mod gatekeeper;
pub mod hooks;
