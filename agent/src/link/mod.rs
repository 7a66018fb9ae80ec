//! The agent's link to the controller: its reports (signed attestations
//! on one stream, [`report`] and [`attest_stream`]), the controller's
//! directives ([`directives`]), how soon it tries again ([`pace`]) and its
//! enrollment and certificate renewal ([`enrollment`]).

pub mod attest_stream;
pub mod directives;
pub mod enrollment;
pub mod pace;
pub mod report;
