//! Board sessions without passwords: `lockstep board login` (the
//! operator's mTLS identity, as every console command) gets a one-time link
//! with a short life; opening it gives a session cookie carrying that
//! operator and role. Links and sessions are kept hashed in the ledger
//! ([`BoardRecord`]), so a new leader honours every session the old one
//! opened and refuses every link it spent and every session it ended: a
//! failover logs no board out. This controller holds the ones it has seen
//! in memory (bounded in number), and every step is audited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lockstep_proto::identity::OperatorRole;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::audit::operator::Operator;
use crate::config::BoardSettings;
use crate::error::{ApiError, LookupError};
use crate::ledger::Ledger;
use crate::store::BoardRecord;
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditEvent;

/// At most this many live sessions and this many unopened links: a flood
/// of logins cannot grow the controller's memory without bound.
pub const MAX_SESSIONS: usize = 10_000;
pub const MAX_LINKS: usize = 1_000;

/// The cookie the board's session travels in.
pub const COOKIE: &str = "lockstep_session";

/// A logged-in board.
#[derive(Debug, Clone)]
pub struct Session {
    /// Short public name (`lockstep board sessions`, `revoke`); not the secret.
    pub id: String,
    pub operator: Operator,
    /// Every form carries it: a request forged from elsewhere does not have
    /// it. Derived from the cookie, so it is the same on every controller.
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
    #[error("the controller could not record this login ({0}); nothing was opened: run `lockstep board login` again")]
    Unrecorded(String),
}

#[derive(Default)]
struct Book {
    /// Links seen here, by SHA-256 of the link's token.
    links: HashMap<String, BoardRecord>,
    /// Live sessions seen here, by SHA-256 of the cookie's value.
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

/// The session's CSRF token, from its cookie: only the browser holding the
/// cookie can know it, and every controller computes the same one.
fn csrf_of(cookie: &str) -> String {
    hashed(&format!("lockstep board csrf\0{cookie}"))
}

fn session_of(record: &BoardRecord, cookie: &str) -> Option<Session> {
    Some(Session {
        id: record.id.clone(),
        operator: Operator {
            name: record.operator.clone(),
            role: OperatorRole::parse(&record.role)?,
        },
        csrf: csrf_of(cookie),
        created_at_unix_ms: record.created_at_unix_ms,
        expires_at_unix_ms: record.expires_at_unix_ms,
    })
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

    /// The ledger's record of `hash_hex` (a store read, off the async workers).
    async fn stored(&self, hash_hex: &str) -> Option<BoardRecord> {
        let (ledger, hash) = (self.ledger.clone(), hash_hex.to_string());
        match tokio::task::spawn_blocking(move || ledger.store().board(&hash)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read a board session from the store");
                None
            }
            Err(_) => None,
        }
    }

    /// Every board record in the store.
    async fn all_stored(&self) -> Result<Vec<BoardRecord>, ApiError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.store().boards())
            .await
            .map_err(|e| ApiError::Internal(format!("reading board sessions: {e}")))?
            .map_err(ApiError::Store)
    }

    async fn commit(
        &self,
        records: Vec<BoardRecord>,
        actor: String,
        action: AuditAction,
        detail: String,
    ) -> Result<(), ApiError> {
        self.ledger
            .commit(BoardChanged {
                records,
                events: vec![AuditEvent::new(actor, action, detail)],
            })
            .await
            .map(drop)
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
        }
        let link = BoardRecord {
            hash_hex: hashed(&token),
            session: false,
            id: String::new(),
            operator: who.name.clone(),
            role: who.role.as_str().to_string(),
            created_at_unix_ms: now,
            expires_at_unix_ms: expires,
            used_at_unix_ms: 0,
            ended_at_unix_ms: 0,
        };
        self.commit(
            vec![link.clone()],
            who.actor(),
            AuditAction::BoardLink,
            format!(
                "board login link for {} made, good until {}",
                who.name,
                lockstep_evidence::time::rfc3339(expires)
            ),
        )
        .await?;
        self.book().links.insert(link.hash_hex.clone(), link);
        Ok((format!("{}/login/{token}", settings.url), expires))
    }

    /// Spends a login link: the cookie value of a new session, and the session.
    pub async fn redeem(&self, token: &str) -> Result<(String, Session), LoginRefused> {
        let outcome = self.spend(token).await;
        // An opened session is recorded with it (in its commit).
        if let Err(why) = &outcome {
            let refused = self
                .audit(
                    "unauthenticated".to_string(),
                    AuditAction::BoardLoginRefused,
                    why.to_string(),
                )
                .await;
            if let Err(e) = refused {
                tracing::error!(error = %e, "cannot record a refused board login in the audit log");
            }
        }
        outcome
    }

    async fn spend(&self, token: &str) -> Result<(String, Session), LoginRefused> {
        let now = self.ledger.now_unix_ms();
        let ttl = self
            .settings
            .as_ref()
            .map_or(0, |s| i64::try_from(s.session_ttl.as_millis()).unwrap_or(i64::MAX));
        let key = hashed(token);
        let known = self.book().links.get(&key).cloned();
        let mut link = match known {
            Some(l) => l,
            None => self
                .stored(&key)
                .await
                .filter(|r| !r.session)
                .ok_or(LoginRefused::Unknown)?,
        };
        let cookie = self.secret().map_err(|_| LoginRefused::Unknown)?;
        {
            // Marked spent here before the commit: two opens of one link at
            // once on this controller open one session.
            let mut book = self.book();
            let current = book.links.get(&key).unwrap_or(&link);
            if current.used_at_unix_ms != 0 || link.used_at_unix_ms != 0 {
                return Err(LoginRefused::Used);
            }
            if now > link.expires_at_unix_ms {
                return Err(LoginRefused::Expired);
            }
            Self::purge(&mut book, now);
            if book.sessions.len() >= MAX_SESSIONS {
                return Err(LoginRefused::Full);
            }
            link.used_at_unix_ms = now;
            book.links.insert(key.clone(), link.clone());
        }
        let cookie_hash = hashed(&cookie);
        let record = BoardRecord {
            hash_hex: cookie_hash.clone(),
            session: true,
            id: cookie_hash[..12].to_string(),
            operator: link.operator.clone(),
            role: link.role.clone(),
            created_at_unix_ms: now,
            expires_at_unix_ms: now.saturating_add(ttl),
            used_at_unix_ms: 0,
            ended_at_unix_ms: 0,
        };
        let session = session_of(&record, &cookie).ok_or(LoginRefused::Unknown)?;
        self.commit(
            vec![link, record],
            session.operator.actor(),
            AuditAction::BoardLogin,
            format!(
                "board session {} opened for {}, until {}",
                session.id,
                session.operator.name,
                lockstep_evidence::time::rfc3339(session.expires_at_unix_ms)
            ),
        )
        .await
        .map_err(|e| LoginRefused::Unrecorded(e.to_string()))?;
        self.book().sessions.insert(cookie_hash, session.clone());
        Ok((cookie, session))
    }

    /// The live session a cookie value stands for: this controller's, or
    /// one the ledger holds (opened by the controller that led before).
    pub async fn session(&self, cookie: &str) -> Option<Session> {
        let now = self.ledger.now_unix_ms();
        let key = hashed(cookie);
        if let Some(s) = self.book().sessions.get(&key) {
            return (s.expires_at_unix_ms > now).then(|| s.clone());
        }
        // Only a cookie of ours can be in the ledger: 64 hex digits.
        if cookie.len() != 64 || !cookie.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let record = self
            .stored(&key)
            .await
            .filter(|r| r.session && r.ended_at_unix_ms == 0 && r.expires_at_unix_ms > now)?;
        let session = session_of(&record, cookie)?;
        let mut book = self.book();
        if book.sessions.len() < MAX_SESSIONS {
            book.sessions.insert(key, session.clone());
        }
        Some(session)
    }

    /// Every live session in the ledger, oldest first.
    pub async fn list(&self) -> Result<Vec<Session>, ApiError> {
        let now = self.ledger.now_unix_ms();
        let mut all: Vec<Session> = self
            .all_stored()
            .await?
            .iter()
            .filter(|r| r.session && r.ended_at_unix_ms == 0 && r.expires_at_unix_ms > now)
            .filter_map(|r| {
                session_of(r, "").map(|s| Session {
                    csrf: String::new(),
                    ..s
                })
            })
            .collect();
        all.sort_by_key(|s| s.created_at_unix_ms);
        Ok(all)
    }

    /// Ends the session named `id` (`lockstep board revoke`).
    pub async fn revoke(&self, who: &Operator, id: &str) -> Result<Session, ApiError> {
        let now = self.ledger.now_unix_ms();
        let found = self
            .all_stored()
            .await?
            .into_iter()
            .find(|r| r.session && r.id == id && r.ended_at_unix_ms == 0 && r.expires_at_unix_ms > now);
        let Some(mut record) = found else {
            return Err(LookupError::NoBoardSession { id: id.into() }.into());
        };
        record.ended_at_unix_ms = now;
        let ended = session_of(&record, "").ok_or_else(|| LookupError::NoBoardSession { id: id.into() })?;
        self.book().sessions.remove(&record.hash_hex);
        self.commit(
            vec![record],
            who.actor(),
            AuditAction::BoardRevoked,
            format!("board session {} of {} revoked", ended.id, ended.operator.name),
        )
        .await?;
        Ok(ended)
    }

    /// Ends the session of `cookie` (the board's log out).
    pub async fn logout(&self, cookie: &str) {
        let key = hashed(cookie);
        let Some(session) = self.session(cookie).await else {
            return;
        };
        self.book().sessions.remove(&key);
        let Some(mut record) = self.stored(&key).await else {
            return;
        };
        record.ended_at_unix_ms = self.ledger.now_unix_ms();
        let detail = format!("board session {} of {} logged out", session.id, session.operator.name);
        if let Err(e) = self
            .commit(vec![record], session.operator.actor(), AuditAction::BoardLogout, detail)
            .await
        {
            tracing::error!(error = %e, "cannot record a board logout in the audit log");
        }
    }

    /// Records a login refused before its link was looked at.
    pub async fn login_refused(&self, detail: String) {
        if let Err(e) = self
            .audit("unauthenticated".into(), AuditAction::BoardLoginRefused, detail)
            .await
        {
            tracing::error!(error = %e, "cannot record a refused board login in the audit log");
        }
    }

    /// Records a board request refused for its session or role.
    pub async fn denied(&self, actor: String, detail: String) {
        if let Err(e) = self.audit(actor, AuditAction::BoardDenied, detail).await {
            tracing::error!(error = %e, "cannot record a refused board request in the audit log");
        }
    }

    async fn audit(&self, actor: String, action: AuditAction, detail: String) -> Result<(), ApiError> {
        self.ledger.record(vec![AuditEvent::new(actor, action, detail)]).await
    }
}

/// A board login link or session made, spent or ended.
pub struct BoardChanged {
    pub records: Vec<BoardRecord>,
    pub events: Vec<AuditEvent>,
}

impl crate::ledger::change::Change for BoardChanged {
    fn apply(
        self: Box<Self>,
        _: &crate::ledger::change::Staged<'_>,
        _: crate::ledger::change::NextNumber<'_>,
    ) -> Result<crate::ledger::change::Effect, crate::ledger::change::Refused> {
        Ok(crate::ledger::change::Effect {
            puts: self.records.into_iter().map(crate::store::Put::Board).collect(),
            events: self.events,
            numbered: None,
        })
    }
}
