//! Enrollment's changes, as the ledger commits them: a join token made;
//! a token spent on an enrollment (every check of the token runs in the
//! commit, so two enrollments with one token cannot both succeed); a host
//! revoked or removed.

use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::time::rfc3339;

use crate::enrollment::EnrollError;
use crate::error::ApiError;
use crate::ledger::change::{Change, Effect, NextNumber, Refused, Staged};
use crate::store::{HostRecord, Put, Revocation, TokenRecord, TpmBinding};

pub struct TokenCreated {
    pub actor: String,
    pub token: TokenRecord,
}

impl Change for TokenCreated {
    fn apply(self: Box<Self>, _: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self { actor, token } = *self;
        Ok(Effect {
            events: vec![AuditEvent {
                actor,
                action: lockstep_evidence::action::AuditAction::TokenCreated,
                host: token.host.clone(),
                role: token.role.clone(),
                // The hash prefix identifies the token in the log; the token itself is never written.
                detail: format!(
                    "join token {} expires {}",
                    &token.hash_hex[..token.hash_hex.len().min(12)],
                    rfc3339(token.expires_at_unix_ms)
                ),
                facts: String::new(),
            }],
            puts: vec![Put::Token(token)],
            numbered: None,
        })
    }
}

/// A join token spent on an enrollment.
pub struct Enrolled {
    pub host: String,
    pub token_hash: String,
    pub pinned_key_hex: String,
    /// What the audit record adds: key id, certificate expiry.
    pub detail: String,
    /// The TPM the enrollment proved the host holds (its trust is said at
    /// the commit, against the host's earlier binding).
    pub tpm: Option<TpmBinding>,
}

impl Change for Enrolled {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        enrolled(state, *self)
    }
}

/// `lockstep host revoke` / `host remove`.
pub struct Revoked {
    pub actor: String,
    pub host: String,
    pub role: String,
    pub revocation: Revocation,
}

impl Change for Revoked {
    fn apply(self: Box<Self>, state: &Staged<'_>, _: NextNumber<'_>) -> Result<Effect, Refused> {
        let Self {
            actor,
            host,
            role,
            revocation,
        } = *self;
        let mut record = state.host(&host).unwrap_or_else(|| HostRecord {
            host: host.clone(),
            role: role.clone(),
            ..HostRecord::default()
        });
        let removed = revocation.removed;
        let detail = revocation.reason.clone();
        if removed {
            // Decommissioned: nothing it signs can count any more.
            record.pinned_key_hex.clear();
        }
        record.revoked = Some(revocation);
        Ok(Effect {
            puts: vec![Put::Host(record)],
            events: vec![AuditEvent {
                actor,
                action: if removed {
                    lockstep_evidence::action::AuditAction::HostRemoved
                } else {
                    lockstep_evidence::action::AuditAction::HostRevoked
                },
                host,
                role,
                detail,
                facts: String::new(),
            }],
            numbered: None,
        })
    }
}

/// Why `e` may not spend its token, as a refusal that is recorded; the
/// token when it may.
pub fn check_enrollment(state: &Staged<'_>, e: &Enrolled) -> Result<TokenRecord, Refused> {
    let refuse = |why: String| Refused {
        events: vec![AuditEvent {
            actor: "unauthenticated".into(),
            action: lockstep_evidence::action::AuditAction::EnrollRefused,
            host: e.host.chars().take(64).collect(),
            role: String::new(),
            detail: why.clone(),
            facts: String::new(),
        }],
        error: EnrollError::TokenRefused(why).into(),
    };
    let token = state
        .token(&e.token_hash)
        .map_err(|err| Refused::from(ApiError::Store(err)))?;
    let Some(token) = token else {
        return Err(refuse(
            "unknown join token: create one with `lockstep token create`".into(),
        ));
    };
    let host = &e.host;
    let problem = if token.used_at_unix_ms != 0 {
        Some(format!(
            "join token was already used at {}: tokens are one-time, create a new one with `lockstep token create`",
            rfc3339(token.used_at_unix_ms)
        ))
    } else if state.now_unix_ms > token.expires_at_unix_ms {
        Some(format!(
            "join token expired at {}: create a new one with `lockstep token create`",
            rfc3339(token.expires_at_unix_ms)
        ))
    } else if token.host != *host {
        Some(format!("join token is for host {}, not {host}", token.host))
    } else if state.config.inventory.get(host) != Some(&token.role) {
        Some(format!(
            "host {host} is no longer in role {} in the controller config",
            token.role
        ))
    } else if let Some(why) = tpm_problem(state, e, &token) {
        Some(why)
    } else {
        state
            .host(host)
            .and_then(|r| r.revoked)
            .filter(|rev| token.created_at_unix_ms <= rev.at_unix_ms)
            .map(|rev| {
                format!(
                    "host {host} was revoked at {} after this token was made: re-enrolling needs a new token",
                    rfc3339(rev.at_unix_ms)
                )
            })
    };
    match problem {
        Some(why) => Err(refuse(why)),
        None => Ok(token),
    }
}

fn ek_id(hex_public: &str) -> String {
    crate::tpm::key_id(&hex::decode(hex_public).unwrap_or_default())
}

/// A host bound to a TPM enrolls again with that TPM, unless its token
/// allows another (a replaced board or TPM): a copied state directory on
/// another machine comes with another TPM's EK.
fn tpm_problem(state: &Staged<'_>, e: &Enrolled, token: &TokenRecord) -> Option<String> {
    let bound = state.host(&e.host).and_then(|r| r.tpm)?;
    if token.allow_new_tpm {
        return None;
    }
    let host = &e.host;
    let fix = "if its TPM or board was replaced, enroll with a token made by `lockstep token create --allow-new-tpm`";
    match &e.tpm {
        Some(new) if new.ek_public_hex == bound.ek_public_hex => None,
        Some(new) => Some(format!(
            "host {host} is bound to TPM EK {} and this enrollment comes from EK {} (another machine, or a copy of its state directory): {fix}",
            ek_id(&bound.ek_public_hex),
            ek_id(&new.ek_public_hex)
        )),
        None => Some(format!(
            "host {host} is bound to TPM EK {} and this enrollment has no TPM: {fix}",
            ek_id(&bound.ek_public_hex)
        )),
    }
}

/// How the new binding's EK is trusted, for the record and the report.
fn ek_trust(before: Option<&TpmBinding>, new: &TpmBinding, token: &TokenRecord) -> String {
    // Vouched for by a vendor CA at the challenge: that is its trust.
    if !new.ek_trust.is_empty() {
        return match before.filter(|b| b.ek_public_hex != new.ek_public_hex) {
            Some(b) => format!(
                "{}, replacing EK {} (allowed by {}'s token)",
                new.ek_trust,
                ek_id(&b.ek_public_hex),
                token.created_by
            ),
            None => new.ek_trust.clone(),
        };
    }
    match before {
        None => "EK pinned at first enrollment (no TPM vendor CA is configured)".into(),
        Some(b) if b.ek_public_hex == new.ek_public_hex => b.ek_trust.clone(),
        Some(b) => format!(
            "EK pinned at re-enrollment, replacing EK {} (allowed by {}'s token)",
            ek_id(&b.ek_public_hex),
            token.created_by
        ),
    }
}

fn enrolled(state: &Staged<'_>, e: Enrolled) -> Result<Effect, Refused> {
    let mut token = check_enrollment(state, &e)?;
    let host = &e.host;
    let at = state.now_unix_ms;
    token.used_at_unix_ms = at;
    let before = state.host(host).and_then(|r| r.tpm);
    let tpm = e.tpm.map(|mut b| {
        b.ek_trust = ek_trust(before.as_deref(), &b, &token);
        b.bound_at_unix_ms = at;
        Box::new(b)
    });
    let trust = tpm
        .as_ref()
        .map(|b| format!("; TPM EK {}: {}", ek_id(&b.ek_public_hex), b.ek_trust))
        .unwrap_or_default();
    let record = HostRecord {
        host: host.clone(),
        role: token.role.clone(),
        pinned_key_hex: e.pinned_key_hex,
        pinned_at_unix_ms: at,
        enrolled_at_unix_ms: at,
        tpm,
        // A new identity starts afresh: no old measurement speaks for it.
        ..HostRecord::default()
    };
    let event = AuditEvent {
        actor: format!("agent {host}"),
        action: lockstep_evidence::action::AuditAction::HostEnrolled,
        host: host.clone(),
        role: token.role.clone(),
        detail: format!(
            "join token {} used; {}{trust}",
            &e.token_hash[..e.token_hash.len().min(12)],
            e.detail
        ),
        facts: String::new(),
    };
    Ok(Effect {
        puts: vec![Put::Token(token), Put::Host(record)],
        events: vec![event],
        numbered: None,
    })
}
