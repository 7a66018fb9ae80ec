//! lockstep's evidence: what an auditor builds to check the controller's
//! word offline, and what the controller and the console share of it.
//!
//! - [`action`]: what an audit record says happened, one type for every
//!   writer and reader.
//! - [`archive`]: closed segments of the log as files, and their check.
//! - [`chain`]: the hash-chained audit log: records, sealing, verification.
//! - [`checkpoint`]: the log cut into signed segments, each checkable
//!   alone and linked to the one before.
//! - [`facts`]: the facts audit records carry for programs.
//! - [`gate_state`]: a role's gates kept between checks, as changes on top
//!   of a complete state, named by the checks by seq and digest.
//! - [`report`]: the signed pre-open report derived from the records, its
//!   printable page, its signing key and its offline verification.
//! - [`strict_json`]: JSON that carries a signature, read so it means one
//!   thing to every parser.
//! - [`gate_check`]: what a `lockstep gate check` answers: its exit code
//!   and summary.
//! - [`time`]: times as records and reports write them.

pub mod action;
pub mod archive;
pub mod chain;
pub mod checkpoint;
pub mod facts;
pub mod gate_check;
pub mod gate_state;
pub mod report;
pub mod strict_json;
pub mod time;
