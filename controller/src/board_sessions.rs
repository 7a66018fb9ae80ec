//! Board sessions without passwords: `lockstep board login` (the
//! operator's mTLS identity, as every console command) gets a one-time link
//! with a short life; opening it gives a session cookie carrying that
//! operator and role. Links and sessions are held hashed, in memory (a
//! restarted controller logs every board out), bounded in number, and every
//! step is audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::audit::AuditEvent;
use crate::config::BoardSettings;
use crate::error::{ApiError, LookupError};
use crate::ledger::Ledger;
use crate::peer::Operator;

/// At most this many live sessions and this many unopened links: a flood
/// of logins cannot grow the controller's memory without bound.
pub const MAX_SESSIONS: usize = 10_000;
pub const MAX_LINKS: usize = 1_000;

/// The cookie the board's session travels in.
pub const COOKIE: &str = "lockstep_session";

#[derive(Debug, Clone)]
struct Link {
    operator: Operator,
    expires_at_unix_ms: i64,
    used_at_unix_ms: i64,
}

/// A logged-in board.
#[derive(Debug, Clone)]
pub struct Session {
    /// Short public name (`lockstep board sessions`, `revoke`); not the secret.
    pub id: String,
    pub operator: Operator,
    /// Every form carries it: a request forged from elsewhere does not have it.
    pub csrf: String,
    pub created_at_unix_ms: i64,
    pub expires_at_unix_ms: i64,
}

/// Why a login link does not open a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    #[error("this login link is not known: run `lockstep board login` for a new one")]
    Unknown,
    #[error("this login link was already used: links open one session; run `lockstep board login` again")]
    Used,
    #[error("this login link expired: run `lockstep board login` again and open it within its life")]
    Expired,
    #[error("the board has too many sessions open: revoke some with `lockstep board revoke`")]
    Full,
}

#[derive(Default)]
struct Book {
    /// By SHA-256 of the link's token.
    links: HashMap<String, Link>,
    /// By SHA-256 of the cookie's value.
    sessions: HashMap<String, Session>,
}

pub struct BoardSessions {
    settings: Option<BoardSettings>,
    ledger: Arc<Ledger>,
    book: Mutex<Book>,
    random: SystemRandom,
}

fn hashed(secret: &str) -> String {
    hex::encode(digest(&SHA256, secret.as_bytes()).as_ref())
}

impl BoardSessions {
    pub fn new(settings: Option<BoardSettings>, ledger: Arc<Ledger>) -> Self {
        Self {
            settings,
            ledger,
            book: Mutex::new(Book::default()),
            random: SystemRandom::new(),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn secret(&self) -> Result<String, ApiError> {
        let mut bytes = [0u8; 32];
        self.random
            .fill(&mut bytes)
            .map_err(|_| ApiError::Internal("the system's random source failed".into()))?;
        Ok(hex::encode(bytes))
    }

    fn settings(&self) -> Result<&BoardSettings, ApiError> {
        self.settings.as_ref().ok_or(ApiError::Lookup(LookupError::NoBoard))
    }

    /// Drops links and sessions past their life.
    fn purge(book: &mut Book, now: i64) {
        book.links.retain(|_, l| l.expires_at_unix_ms > now);
        book.sessions.retain(|_, s| s.expires_at_unix_ms > now);
    }

    /// A one-time login link for `who`, and when it stops working.
    pub async fn issue_link(&self, who: &Operator) -> Result<(String, i64), ApiError> {
        let settings = self.settings()?;
        let token = self.secret()?;
        let now = self.ledger.now_unix_ms();
        let expires = now + i64::try_from(settings.login_ttl.as_millis()).unwrap_or(i64::MAX);
        {
            let mut book = self.book();
            Self::purge(&mut book, now);
            if book.links.len() >= MAX_LINKS {
                return Err(ApiError::Internal(format!(
                    "{MAX_LINKS} login links are waiting to be opened; wait for them to expire"
                )));
            }
            book.links.insert(
                hashed(&token),
                Link {
                    operator: who.clone(),
                    expires_at_unix_ms: expires,
                    used_at_unix_ms: 0,
                },
            );
        }
        self.audit(
            who.actor(),
            "board.link",
            format!(
                "board login link for {} made, good until {}",
                who.name,
                crate::change::rfc3339(expires)
            ),
        )
        .await?;
        Ok((format!("{}/login/{token}", settings.url), expires))
    }

    /// Spends a login link: the cookie value of a new session, and the session.
    pub async fn redeem(&self, token: &str) -> Result<(String, Session), LoginRefused> {
        let now = self.ledger.now_unix_ms();
        let ttl = self
            .settings
            .as_ref()
            .map_or(0, |s| i64::try_from(s.session_ttl.as_millis()).unwrap_or(i64::MAX));
        let outcome = (|| {
            let cookie = self.secret().map_err(|_| LoginRefused::Unknown)?;
            let csrf = self.secret().map_err(|_| LoginRefused::Unknown)?;
            let mut book = self.book();
            let link = book.links.get_mut(&hashed(token)).ok_or(LoginRefused::Unknown)?;
            if link.used_at_unix_ms != 0 {
                return Err(LoginRefused::Used);
            }
            if now > link.expires_at_unix_ms {
                return Err(LoginRefused::Expired);
            }
            link.used_at_unix_ms = now;
            let operator = link.operator.clone();
            Self::purge(&mut book, now);
            if book.sessions.len() >= MAX_SESSIONS {
                return Err(LoginRefused::Full);
            }
            let key = hashed(&cookie);
            let session = Session {
                id: key[..12].to_string(),
                operator,
                csrf,
                created_at_unix_ms: now,
                expires_at_unix_ms: now.saturating_add(ttl),
            };
            book.sessions.insert(key, session.clone());
            Ok((cookie, session))
        })();
        let event = match &outcome {
            Ok((_, s)) => (
                s.operator.actor(),
                "board.login",
                format!(
                    "board session {} opened for {}, until {}",
                    s.id,
                    s.operator.name,
                    crate::change::rfc3339(s.expires_at_unix_ms)
                ),
            ),
            Err(why) => ("unauthenticated".to_string(), "board.login_refused", why.to_string()),
        };
        if let Err(e) = self.audit(event.0, event.1, event.2).await {
            tracing::error!(error = %e, "cannot record a board login in the audit log");
        }
        outcome
    }

    /// The live session a cookie value stands for.
    pub fn session(&self, cookie: &str) -> Option<Session> {
        let now = self.ledger.now_unix_ms();
        self.book()
            .sessions
            .get(&hashed(cookie))
            .filter(|s| s.expires_at_unix_ms > now)
            .cloned()
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<Session> {
        let now = self.ledger.now_unix_ms();
        let mut all: Vec<Session> = self
            .book()
            .sessions
            .values()
            .filter(|s| s.expires_at_unix_ms > now)
            .cloned()
            .collect();
        all.sort_by_key(|s| s.created_at_unix_ms);
        all
    }

    /// Ends the session named `id` (`lockstep board revoke`).
    pub async fn revoke(&self, who: &Operator, id: &str) -> Result<Session, ApiError> {
        let ended = {
            let mut book = self.book();
            let key = book.sessions.iter().find(|(_, s)| s.id == id).map(|(k, _)| k.clone());
            key.and_then(|k| book.sessions.remove(&k))
        };
        let Some(ended) = ended else {
            return Err(LookupError::NoBoardSession { id: id.into() }.into());
        };
        self.audit(
            who.actor(),
            "board.revoked",
            format!("board session {} of {} revoked", ended.id, ended.operator.name),
        )
        .await?;
        Ok(ended)
    }

    /// Ends the session of `cookie` (the board's log out).
    pub async fn logout(&self, cookie: &str) {
        let ended = self.book().sessions.remove(&hashed(cookie));
        if let Some(s) = ended {
            let detail = format!("board session {} of {} logged out", s.id, s.operator.name);
            if let Err(e) = self.audit(s.operator.actor(), "board.logout", detail).await {
                tracing::error!(error = %e, "cannot record a board logout in the audit log");
            }
        }
    }

    /// Records a board request refused for its session or role.
    pub async fn denied(&self, actor: String, detail: String) {
        if let Err(e) = self.audit(actor, "board.denied", detail).await {
            tracing::error!(error = %e, "cannot record a refused board request in the audit log");
        }
    }

    async fn audit(&self, actor: String, action: &str, detail: String) -> Result<(), ApiError> {
        self.ledger
            .record(vec![AuditEvent {
                actor,
                action: action.into(),
                detail,
                ..AuditEvent::default()
            }])
            .await
    }
}
