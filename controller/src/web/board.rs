//! One board server's state, shared by its pages, actions and feed: the
//! controller, a small cache, and the session a request's cookie stands for.

use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::controller::Controller;
use crate::logins::{COOKIE, Session};

#[derive(Clone)]
pub struct Board {
    pub controller: Arc<Controller>,
    /// How many hosts matched each proposed release, and when that was
    /// counted: the releases page refreshes on every event, and counting
    /// diffs every host of a 10,000-host role each time would not do.
    pub matching: Arc<std::sync::Mutex<std::collections::HashMap<u64, (std::time::Instant, usize)>>>,
}

impl Board {
    /// Why a request is not from the board's own pages, when a browser
    /// says so (`Sec-Fetch-Site`, `Origin`): only our pages may act.
    pub fn foreign(&self, headers: &HeaderMap) -> Option<String> {
        let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if let Some(site) = site.filter(|s| *s != "same-origin" && *s != "none") {
            return Some(format!("a cross-site request ({site})"));
        }
        let ours = self
            .controller
            .config
            .board
            .as_ref()
            .map(|b| b.url.as_str())
            .unwrap_or_default();
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        origin
            .filter(|o| *o != ours)
            .map(|o| format!("a request from {o}, not from the board ({ours})"))
    }

    /// The live session of a request's cookie, if it has one.
    pub async fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let cookie = session_cookie(headers)?;
        let session = self.controller.board_sessions.session(&cookie).await?;
        Some((cookie, session))
    }
}

/// `lockstep_session=…` from the Cookie header(s).
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}
