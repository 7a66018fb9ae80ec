//! What a board can do: halt, resume, acknowledge, approve, log out. Each
//! request must come from the board's own pages (same origin, the
//! session's CSRF token), from a live session whose role the console's
//! authorization table allows for the same call, and (for the kill switch
//! and approvals) be confirmed by typing its scope. Refusals are audited
//! as `board.denied`; the actions themselves are audited by the parts that
//! do them, as from the console.

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{self, halt_scope::Scope};
use serde::Deserialize;

use super::board::Board;
use super::pages::refused;
use crate::api::authz::{self, Decision};
use crate::error::ApiError;
use crate::logins::{COOKIE, Session};

const CONSOLE: &str = "/lockstep.v1.ConsoleService/";

/// Why a request was turned away before it reached its part.
struct Refusal {
    status: StatusCode,
    actor: String,
    why: String,
}

impl Board {
    /// The session allowed to make this request as the console's `method`.
    async fn allowed(&self, headers: &HeaderMap, csrf: &str, method: &str) -> Result<Session, Box<Response>> {
        let refusal = match self.check(headers, Some(csrf), method).await {
            Ok(session) => return Ok(session),
            Err(r) => r,
        };
        Err(self.refuse(refusal, method).await)
    }

    /// The form, or the refusal of a body that is not one, audited like
    /// any other: a forged cross-site POST without our fields is named by
    /// the check it fails first (where it comes from, the session), else
    /// as a form that cannot be read.
    async fn form<T>(
        &self,
        headers: &HeaderMap,
        form: Result<Form<T>, FormRejection>,
        method: &str,
    ) -> Result<T, Box<Response>> {
        let rejection = match form {
            Ok(Form(f)) => return Ok(f),
            Err(rejection) => rejection,
        };
        let refusal = match self.check(headers, None, method).await {
            Err(refusal) => refusal,
            Ok(session) => Refusal {
                status: StatusCode::BAD_REQUEST,
                actor: session.operator.actor(),
                why: format!("a form that cannot be read ({})", rejection.body_text()),
            },
        };
        Err(self.refuse(refusal, method).await)
    }

    async fn refuse(&self, refusal: Refusal, method: &str) -> Box<Response> {
        self.controller
            .board_sessions
            .denied(refusal.actor.clone(), format!("board {method}: {}", refusal.why))
            .await;
        tracing::warn!(actor = %refusal.actor, method, why = %refusal.why, "board request refused");
        Box::new(refused(refusal.status, "Refused", &refusal.why))
    }

    /// `csrf` `None`: every check but the form's token (a body with none).
    async fn check(&self, headers: &HeaderMap, csrf: Option<&str>, method: &str) -> Result<Session, Refusal> {
        let session = self.session(headers).await.map(|(_, s)| s);
        let actor = session
            .as_ref()
            .map_or_else(|| "unauthenticated".to_string(), |s| s.operator.actor());
        let refuse = |status, why: String| Refusal {
            status,
            actor: actor.clone(),
            why,
        };
        if let Some(why) = self.foreign(headers) {
            return Err(refuse(StatusCode::FORBIDDEN, why));
        }
        let Some(session) = session else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "no board session: log in with `lockstep board login`".into(),
            ));
        };
        if csrf.is_some_and(|csrf| csrf.is_empty() || csrf != session.csrf) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "the form's token is not this session's (a request forged from elsewhere)".into(),
            ));
        }
        let identity = PeerIdentity::Operator {
            name: session.operator.name.clone(),
            role: session.operator.role,
        };
        match authz::decide(&format!("{CONSOLE}{method}"), Some(&identity)) {
            Decision::Allow | Decision::Public => Ok(session),
            Decision::Deny(why) => Err(refuse(StatusCode::FORBIDDEN, why)),
        }
    }
}

/// Back to the page the form was on (a path of ours only).
fn back(to: &str) -> Response {
    let safe = to.starts_with('/') && !to.starts_with("//") && !to.contains('\\');
    Redirect::to(if safe { to } else { "/" }).into_response()
}

fn failed(e: ApiError) -> Response {
    refused(StatusCode::CONFLICT, "Not done", &e.to_string())
}

#[derive(Deserialize)]
pub struct ScopeForm {
    csrf: String,
    /// fleet, role or host.
    kind: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    reason: String,
    /// The scope typed again: a kill switch is deliberate.
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    drill: Option<String>,
    #[serde(default)]
    back: String,
}

impl ScopeForm {
    /// The scope, once its confirmation matches it.
    fn scope(&self) -> Result<pb::HaltScope, Box<Response>> {
        let (scope, typed) = match self.kind.as_str() {
            "fleet" => (Scope::Fleet(true), "FLEET"),
            "role" => (Scope::Role(self.scope.clone()), self.scope.as_str()),
            "host" => (Scope::Host(self.scope.clone()), self.scope.as_str()),
            other => {
                return Err(Box::new(refused(
                    StatusCode::BAD_REQUEST,
                    "Not done",
                    &format!("no scope {other:?}: fleet, role or host"),
                )));
            }
        };
        if typed.is_empty() || self.confirm.trim() != typed {
            return Err(Box::new(refused(
                StatusCode::BAD_REQUEST,
                "Not done",
                &format!("type {typed:?} in the confirmation box to confirm the scope"),
            )));
        }
        Ok(pb::HaltScope { scope: Some(scope) })
    }
}

pub async fn halt(
    State(board): State<Board>,
    headers: HeaderMap,
    form: Result<Form<ScopeForm>, FormRejection>,
) -> Response {
    let form = match board.form(&headers, form, "Halt").await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let session = match board.allowed(&headers, &form.csrf, "Halt").await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let scope = match form.scope() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let req = pb::HaltRequest {
        scope: Some(scope),
        reason: form.reason.clone(),
        drill: form.drill.is_some(),
    };
    match board.controller.halts.halt(&session.operator, req).await {
        Ok(_) => back(&form.back),
        Err(e) => failed(e),
    }
}

pub async fn resume(
    State(board): State<Board>,
    headers: HeaderMap,
    form: Result<Form<ScopeForm>, FormRejection>,
) -> Response {
    let form = match board.form(&headers, form, "Resume").await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let session = match board.allowed(&headers, &form.csrf, "Resume").await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let scope = match form.scope() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let req = pb::ResumeRequest {
        scope: Some(scope),
        reason: form.reason.clone(),
    };
    match board.controller.halts.resume(&session.operator, req).await {
        Ok(_) => back(&form.back),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub struct AckForm {
    csrf: String,
    id: u64,
    #[serde(default)]
    back: String,
}

pub async fn ack(
    State(board): State<Board>,
    headers: HeaderMap,
    form: Result<Form<AckForm>, FormRejection>,
) -> Response {
    let form = match board.form(&headers, form, "AckIncident").await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let session = match board.allowed(&headers, &form.csrf, "AckIncident").await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match board.controller.alerts.ack(&session.operator, form.id).await {
        Ok(_) => back(&form.back),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub struct ApproveForm {
    csrf: String,
    number: u64,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    back: String,
}

pub async fn approve(
    State(board): State<Board>,
    headers: HeaderMap,
    form: Result<Form<ApproveForm>, FormRejection>,
) -> Response {
    let form = match board.form(&headers, form, "ApproveRelease").await {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let session = match board.allowed(&headers, &form.csrf, "ApproveRelease").await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if form.confirm.trim() != form.number.to_string() {
        return refused(
            StatusCode::BAD_REQUEST,
            "Not done",
            &format!(
                "type {} in the confirmation box to approve release {}",
                form.number, form.number
            ),
        );
    }
    match board.controller.releases.approve(&session.operator, form.number).await {
        Ok(_) => back(&form.back),
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn logout(
    State(board): State<Board>,
    headers: HeaderMap,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let Some((cookie, session)) = board.session(&headers).await else {
        return back("/");
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if csrf.is_empty() || csrf != session.csrf {
        let why = "the form's token is not this session's (a request forged from elsewhere)";
        board
            .controller
            .board_sessions
            .denied(session.operator.actor(), format!("board logout: {why}"))
            .await;
        return refused(StatusCode::FORBIDDEN, "Refused", why);
    }
    board.controller.board_sessions.logout(&cookie).await;
    let mut response = back("/");
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    if let Ok(v) = header::HeaderValue::from_str(&clear) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}
