//! Quotes' changes, as the ledger commits them: a verified quote becomes
//! the host's last (its session key is what its attestations are checked
//! with from then on); a refused one marks the host's record, as a
//! rejected attestation does, and is recorded.

use lockstep_evidence::chain::AuditEvent;

use crate::ledger::change::{Change, Effect, NextNumber, Refused, Staged};
use crate::store::{HostRecord, Put, QuoteRecord, Rejection};
use crate::tpm::TpmError;

/// A verified quote; the binding it was checked against is checked again.
pub struct Quoted {
    pub actor: String,
    pub host: String,
    pub role: String,
    /// The AK the quote was verified with.
    pub ak_public_hex: String,
    pub quote: QuoteRecord,
}

impl Change for Quoted {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            host,
            role,
            ak_public_hex,
            quote,
        } = *self;
        let mut record = state.host(&host).unwrap_or_default();
        let Some(binding) = record.tpm.as_mut().filter(|b| b.ak_public_hex == ak_public_hex) else {
            // Re-enrolled meanwhile: this quote speaks for the old binding.
            return Err(crate::error::ApiError::from(TpmError::NotBound { host }).into());
        };
        let previous = binding.quote.replace(quote.clone());
        // Each quote renews the record; only a new session or new PCR
        // values are worth a line in the log (a quote a minute per host
        // would otherwise be most of it).
        let news = match &previous {
            None => Some("first verified quote".to_string()),
            Some(p) if p.session_key_hex != quote.session_key_hex => Some(format!(
                "new agent session (key {}), boot {}",
                &quote.session_key_hex[..16.min(quote.session_key_hex.len())],
                quote.boot_id
            )),
            Some(p) if p.pcrs != quote.pcrs => {
                let changed: Vec<String> = quote
                    .pcrs
                    .iter()
                    .filter(|(i, v)| p.pcrs.get(i) != Some(v))
                    .map(|(i, _)| i.to_string())
                    .collect();
                Some(format!("PCRs changed: {}", changed.join(", ")))
            }
            Some(_) => None,
        };
        let events = news
            .map(|what| AuditEvent {
                actor,
                action: lockstep_evidence::action::AuditAction::TpmQuoted,
                host: host.clone(),
                role: role.clone(),
                detail: format!(
                    "{what}; PCRs {}",
                    quote
                        .pcrs
                        .iter()
                        .map(|(i, v)| format!("{i}={}", &v[..v.len().min(16)]))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                facts: String::new(),
            })
            .into_iter()
            .collect();
        Ok(Effect {
            puts: vec![Put::Host(record)],
            events,
            numbered: None,
        })
    }
}

/// A refused quote: recorded, and the host's gate names it until its next
/// accepted attestation.
pub struct QuoteRefused {
    pub actor: String,
    pub host: String,
    pub role: String,
    pub reason: String,
    pub at_unix_ms: i64,
}

impl Change for QuoteRefused {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            host,
            role,
            reason,
            at_unix_ms,
        } = *self;
        let mut record = state.host(&host).unwrap_or_else(|| HostRecord {
            host: host.clone(),
            role: role.clone(),
            ..HostRecord::default()
        });
        record.last_rejection = Some(Rejection {
            at_unix_ms,
            reason: format!("TPM quote refused: {reason}"),
        });
        Ok(Effect {
            puts: vec![Put::Host(record)],
            events: vec![AuditEvent {
                actor,
                action: lockstep_evidence::action::AuditAction::TpmQuoteRefused,
                host,
                role,
                detail: reason,
                facts: String::new(),
            }],
            numbered: None,
        })
    }
}
