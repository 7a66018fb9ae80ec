//! What the controller sends to, run for real on loopback: a webhook
//! receiver ([`webhook`]) and the SIEM's collectors, Debian's rsyslog
//! ([`rsyslog`]) and syslog-ng ([`syslog_ng`]), each a [`syslog::Collector`].

pub mod rsyslog;
pub mod syslog;
pub mod syslog_ng;
pub mod webhook;
