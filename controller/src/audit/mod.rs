//! Who acts and what is refused, as the audit log records them: the
//! operator a call acts for ([`operator`]), the peer on a connection
//! ([`peer`]) and the refusals counted per window ([`refusals`]). The
//! chain itself is [`lockstep_evidence::chain`].

pub mod operator;
pub mod peer;
pub mod refusals;
