//! What the controller sends to, run for real on loopback: a webhook
//! receiver ([`webhook`]) and Debian's rsyslog as the SIEM's collector
//! ([`rsyslog`]).

pub mod rsyslog;
pub mod webhook;
