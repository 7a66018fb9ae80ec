//! Gates out to the hosts: every host's latest decision ([`board`]), with
//! the epoch hold-back of a new leader; each agent's directive stream
//! ([`directives`]); full scans operators ask of connected agents
//! ([`scan_requests`]).

pub mod board;
pub mod directives;
pub mod scan_requests;
