//! Attestations in: the checks on one envelope ([`verify`]) and the path
//! that verifies, commits and answers each ([`ingest`]).

pub mod change;
pub mod ingest;
pub mod verify;
