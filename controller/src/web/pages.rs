//! The board's pages, rendered on the server. Each page is a frame (top
//! bar, feed status) around a live part; the script fetches the live part
//! again (`x-lockstep-fragment: 1`) when the feed says something changed.
//! Gate state is told by a word and a shape, never by colour alone. At
//! 10,000 hosts the fleet page sends role summaries first and one page of
//! hosts, filtered on the server.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use lockstep_proto::identity::PeerIdentity;
use lockstep_proto::pb::{self, Gate, GateState, diff_request::Against, halt_scope::Scope};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::board::Board;
use crate::api::authz::{self, Decision};
use crate::gates::board::gate_word;
use crate::logins::Session;

/// Hosts on one page of the grid.
pub const PAGE_SIZE: usize = 100;
const CONSOLE: &str = "/lockstep.v1.ConsoleService/";

/// A short page for a refusal or an error, with the fix.
pub fn refused(status: StatusCode, title: &str, why: &str) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "lockstep: " (title) } link rel="stylesheet" href="/board.css"; }
            body {
                main.refused {
                    h1 { (title) }
                    p #why { (why) }
                    p { a href="/" { "Back to the board" } }
                }
            }
        }
    };
    (status, Html(page.into_string())).into_response()
}

/// What opening a login link shows: a button that spends it. A GET
/// spends nothing, so a chat's or a mail's link preview does not burn the
/// link, and a page elsewhere cannot log a victim's browser in as someone
/// else by linking it (the POST must come from this page).
pub fn login_confirm(token: &str) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "lockstep: log in" } link rel="stylesheet" href="/board.css"; }
            body {
                main.refused {
                    h1 { "Log in to the lockstep board" }
                    p { "This one-time link opens a board session as the operator who asked for it. Opening the link spent nothing; the button does." }
                    form #login method="post" action={ "/login/" (token) } {
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    };
    // The token is in the URL: not to be kept by a cache.
    (StatusCode::OK, Html(page.into_string())).into_response()
}

fn may(session: &Session, method: &str) -> bool {
    let identity = PeerIdentity::Operator {
        name: session.operator.name.clone(),
        role: session.operator.role,
    };
    matches!(
        authz::decide(&format!("{CONSOLE}{method}"), Some(&identity)),
        Decision::Allow
    )
}

/// The page, or only its live part when the script asks for it.
fn respond(board: &Board, headers: &HeaderMap, session: &Session, title: &str, here: &str, live: Markup) -> Response {
    if headers.contains_key("x-lockstep-fragment") {
        return Html(live.into_string()).into_response();
    }
    let seq = *board.controller.ledger.sealed().borrow();
    let nav = [
        ("/", "Fleet"),
        ("/releases", "Releases"),
        ("/halts", "Halts"),
        ("/incidents", "Incidents"),
        ("/audit", "Audit"),
    ];
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "lockstep: " (title) }
                link rel="stylesheet" href="/board.css";
                script src="/board.js" defer {}
            }
            body data-seq=(seq) data-now=(board.controller.ledger.now_unix_ms()) {
                header.top {
                    span.brand { "lockstep" }
                    nav {
                        @for (href, label) in nav {
                            a href=(href) class=(if href == here { "here" } else { "" }) { (label) }
                        }
                    }
                    span #feed .feed.connecting role="status" aria-live="polite" { "CONNECTING" }
                    span.who { (session.operator.name) " (" (session.operator.role.as_str()) ")" }
                    button #theme type="button" title="Light or dark" { "Theme" }
                    form.inline method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(session.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                main #live { (live) }
            }
        }
    };
    Html(page.into_string()).into_response()
}

/// The session of a page request, or the page that says how to get one.
async fn session_or_login(board: &Board, headers: &HeaderMap) -> Result<Session, Box<Response>> {
    board.session(headers).await.map(|(_, s)| s).ok_or_else(|| {
        Box::new(refused(
            StatusCode::UNAUTHORIZED,
            "Not logged in",
            "Run `lockstep board login` with your operator certificate and open the link it prints.",
        ))
    })
}

fn shape(state: GateState) -> &'static str {
    match state {
        GateState::Open => "●",
        GateState::Closed => "■",
        GateState::Missing => "○",
        GateState::Unspecified => "?",
    }
}

fn gate_badge(state: GateState) -> Markup {
    let word = gate_word(state);
    html! { span class={ "gate " (word) } data-gate=(word) { (shape(state)) " " (word) } }
}

fn age(unix_ms: i64) -> Markup {
    if unix_ms <= 0 {
        return html! { span.none { "never" } };
    }
    html! { span.age data-at=(unix_ms) { (lockstep_evidence::time::rfc3339(unix_ms)) } }
}

fn time(unix_ms: i64) -> Markup {
    html! { time.at data-at=(unix_ms) { (lockstep_evidence::time::rfc3339(unix_ms)) } }
}

#[derive(Deserialize, Default)]
pub struct FleetQuery {
    #[serde(default)]
    role: String,
    /// OPEN, CLOSED, MISSING, or empty for every state.
    #[serde(default)]
    state: String,
    /// Part of a host name or of a reason.
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
}

/// Every host's gate as the board holds it.
fn gates_of(board: &Board) -> HashMap<String, Gate> {
    let c = &board.controller;
    let mut gates = c.board.latest();
    for host in c.config.inventory.keys() {
        if !gates.contains_key(host) {
            if let Ok(g) = c.board.current(host) {
                gates.insert(host.clone(), g);
            }
        }
    }
    gates
}

pub async fn fleet(State(board): State<Board>, headers: HeaderMap, Query(q): Query<FleetQuery>) -> Response {
    let session = match session_or_login(&board, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let c = &board.controller;
    let gates = gates_of(&board);
    let (records, active_halts): (HashMap<String, (i64, String)>, Vec<String>) = {
        let view = c.ledger.view();
        let records = view
            .hosts
            .values()
            .map(|h| (h.host.clone(), (h.accepted_at_unix_ms, h.agent_version.clone())))
            .collect();
        let halts = view
            .halts
            .values()
            .filter(|h| h.is_active())
            .map(|h| format!("halt {} on {} by {}: {}", h.id, h.scope, h.halted_by, h.reason))
            .collect();
        (records, halts)
    };
    let banners: Vec<(String, usize, usize, u64)> = c
        .config
        .roles
        .values()
        .map(|role| {
            let open = role
                .hosts
                .iter()
                .filter(|h| gates.get(*h).is_some_and(|g| g.state() == GateState::Open))
                .count();
            let release = role.hosts.iter().find_map(|h| gates.get(h)).map_or(0, |g| g.release);
            (role.name.clone(), open, role.hosts.len(), release)
        })
        .collect();
    let needle = q.q.to_lowercase();
    let mut hosts: Vec<&Gate> = gates
        .values()
        .filter(|g| q.role.is_empty() || g.role == q.role)
        .filter(|g| q.state.is_empty() || gate_word(g.state()) == q.state)
        .filter(|g| {
            needle.is_empty()
                || g.host.to_lowercase().contains(&needle)
                || g.reasons.iter().any(|r| r.text.to_lowercase().contains(&needle))
        })
        .collect();
    // Closed and missing first: what needs a person is on the first page.
    hosts.sort_by(|a, b| (a.state() == GateState::Open, &a.host).cmp(&(b.state() == GateState::Open, &b.host)));
    let matching = hosts.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.min(pages - 1);
    let shown = &hosts[(page * PAGE_SIZE).min(matching)..((page + 1) * PAGE_SIZE).min(matching)];
    let link = |p: usize| format!("/?role={}&state={}&q={}&page={p}", q.role, q.state, q.q);
    let live = html! {
        section.banners aria-label="Roles" {
            @for (role, open, total, release) in &banners {
                div class={ "banner " (if open == total { "all-open" } else { "not-open" }) } data-role=(role) {
                    span.role { (role) } ": " strong { (open) "/" (total) " OPEN" }
                    @if *release > 0 { " on release " (release) } @else { " (no approved release)" }
                }
            }
        }
        @if !active_halts.is_empty() {
            section.halted role="alert" {
                @for h in &active_halts { div { "■ HALTED: " (h) } }
            }
        }
        @if may(&session, "Halt") {
            details.killswitch {
                summary { "Kill switch" }
                form #halt-form method="post" action="/halt" {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="back" value="/";
                    label { "Scope " select name="kind" { option value="role" { "role" } option value="host" { "host" } option value="fleet" { "fleet" } } }
                    label { "Name " input name="scope" placeholder="smars (empty for the fleet)"; }
                    label { "Reason " input name="reason" required placeholder="runaway orders on NYSE"; }
                    label { "Type the name (FLEET for the fleet) to confirm " input name="confirm" required autocomplete="off"; }
                    label { input type="checkbox" name="drill"; " drill" }
                    button.danger type="submit" { "HALT" }
                }
            }
        }
        form.filters method="get" action="/" {
            label { "Role " select name="role" {
                option value="" { "every role" }
                @for role in c.config.roles.keys() { option value=(role) selected[*role == q.role] { (role) } }
            } }
            label { "Gate " select name="state" {
                @for s in ["", "OPEN", "CLOSED", "MISSING"] { option value=(s) selected[s == q.state] { (if s.is_empty() { "every gate" } else { s }) } }
            } }
            label { "Host or reason " input name="q" value=(q.q); }
            button type="submit" { "Filter" }
        }
        p.count { (matching) " hosts" @if pages > 1 { ", page " (page + 1) " of " (pages) } }
        table.grid #hosts {
            thead { tr { th { "Host" } th { "Role" } th { "Gate" } th { "Reasons" } th { "Last attestation" } th { "Agent" } } }
            tbody {
                @for g in shown {
                    @let (accepted, version) = records.get(&g.host).cloned().unwrap_or_default();
                    tr data-host=(g.host) data-gate=(gate_word(g.state())) {
                        td { a href={ "/host/" (g.host) } { (g.host) } }
                        td { (g.role) }
                        td { (gate_badge(g.state())) }
                        td.reasons {
                            @for r in g.reasons.iter().take(3) { div { (r.text) } }
                            @if g.reasons.len() > 3 { div.more { "and " (g.reasons.len() - 3) " more" } }
                        }
                        td { (age(accepted)) }
                        td { (version) }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pages {
                @if page > 0 { a href=(link(page - 1)) { "← previous" } }
                @if page + 1 < pages { a href=(link(page + 1)) { "next →" } }
            }
        }
    };
    respond(&board, &headers, &session, "fleet", "/", live)
}

pub async fn host(State(board): State<Board>, headers: HeaderMap, Path(host): Path<String>) -> Response {
    let session = match session_or_login(&board, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let c = &board.controller;
    let gate = match c.board.current(&host) {
        Ok(g) => g,
        Err(e) => return refused(StatusCode::NOT_FOUND, "No such host", &e.to_string()),
    };
    let diff = c.queries.diff(&pb::DiffRequest {
        host: host.clone(),
        against: Some(Against::Release(0)),
    });
    let head = *c.ledger.sealed().borrow();
    let (ledger, named) = (c.ledger.clone(), host.clone());
    let history =
        tokio::task::spawn_blocking(move || crate::store::audit_reads::host_tail(ledger.store(), &named, head, 20))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
    let live = html! {
        h1 { (host) " " (gate_badge(gate.state())) }
        @if gate.reasons.is_empty() { p.none { "No reasons: the gate is open." } }
        ul.reasons { @for r in &gate.reasons { li { (r.text) } } }
        h2 { "Against the release" }
        @match &diff {
            Ok(d) if d.changes.is_empty() => p { (d.left) " matches " (d.right) "." },
            Ok(d) => table.grid #diff {
                caption { (d.left) " against " (d.right) }
                thead { tr { th { "Path" } th { "Expected" } th { "Found" } th { "Difference" } } }
                tbody {
                    @for ch in &d.changes {
                        tr {
                            td { code { (String::from_utf8_lossy(&ch.path)) } }
                            td { code { (entry(ch.right.as_ref())) } }
                            td { code { (entry(ch.left.as_ref())) } }
                            td { (ch.text) }
                        }
                    }
                }
            },
            Err(e) => p.none { (e.to_string()) },
        }
        h2 { "Recent history" }
        table.grid #history {
            thead { tr { th { "Time" } th { "What" } th { "Who" } th { "Detail" } } }
            tbody { @for r in &history { tr { td { (time(r.at_unix_ms)) } td { (r.action) } td { (r.actor) } td { (r.detail) } } } }
        }
    };
    respond(&board, &headers, &session, &host, "", live)
}

fn entry(e: Option<&pb::Entry>) -> String {
    match e {
        None => "absent".into(),
        Some(e) if !e.sha256.is_empty() => format!("sha256 {}", &hex::encode(&e.sha256)[..16]),
        Some(e) if !e.link_target.is_empty() => format!("→ {}", String::from_utf8_lossy(&e.link_target)),
        Some(e) => format!("mode {:o}", e.mode),
    }
}

pub async fn releases(State(board): State<Board>, headers: HeaderMap) -> Response {
    let session = match session_or_login(&board, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let c = &board.controller;
    let mut list = c.releases.list("");
    list.reverse();
    // How many of its role's hosts already run a proposed release
    // (counted again at most every 5 s).
    let matching = |r: &pb::Release| -> usize {
        let fresh = std::time::Duration::from_secs(5);
        if let Some((at, n)) = board.matching.lock().unwrap_or_else(|p| p.into_inner()).get(&r.number) {
            if at.elapsed() < fresh {
                return *n;
            }
        }
        let Ok(role) = c.config.role(&r.role) else { return 0 };
        let n = role
            .hosts
            .iter()
            .filter(|h| {
                c.queries
                    .diff(&pb::DiffRequest {
                        host: (*h).clone(),
                        against: Some(Against::Release(r.number)),
                    })
                    .is_ok_and(|d| d.changes.is_empty())
            })
            .count();
        board
            .matching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.number, (std::time::Instant::now(), n));
        n
    };
    let approver = may(&session, "ApproveRelease");
    let live = html! {
        h1 { "Releases" }
        table.grid #releases {
            thead { tr { th { "Release" } th { "Role" } th { "State" } th { "Proposed" } th { "Approved" } th { "Hosts matching" } th { "Note" } } }
            tbody {
                @for r in &list {
                    @let state = r.state().as_str_name().trim_start_matches("RELEASE_STATE_").to_string();
                    @let hosts = c.config.role(&r.role).map_or(0, |x| x.hosts.len());
                    tr data-release=(r.number) {
                        td { (r.number) br; code { (&hex::encode(&r.digest)[..16]) } }
                        td { (r.role) }
                        td { (state) }
                        td { (r.proposed_by) br; (time(r.proposed_at_unix_ms)) }
                        td {
                            @if r.approved_by.is_empty() {
                                @if approver {
                                    form.inline method="post" action="/approve" {
                                        input type="hidden" name="csrf" value=(session.csrf);
                                        input type="hidden" name="number" value=(r.number);
                                        input type="hidden" name="back" value="/releases";
                                        label { "Type " (r.number) " " input name="confirm" size="4" required autocomplete="off"; }
                                        button type="submit" { "Approve" }
                                    }
                                } @else { span.none { "not yet" } }
                            } @else { (r.approved_by) br; (time(r.approved_at_unix_ms)) }
                        }
                        td { @if r.approved_by.is_empty() { (matching(r)) " of " (hosts) } @else { "—" } }
                        td { (r.note) }
                    }
                }
            }
        }
    };
    respond(&board, &headers, &session, "releases", "/releases", live)
}

fn scope_fields(scope: Option<&pb::HaltScope>) -> (&'static str, String, String) {
    match scope.and_then(|s| s.scope.as_ref()) {
        Some(Scope::Role(r)) => ("role", r.clone(), r.clone()),
        Some(Scope::Host(h)) => ("host", h.clone(), h.clone()),
        _ => ("fleet", String::new(), "FLEET".into()),
    }
}

pub async fn halts(State(board): State<Board>, headers: HeaderMap) -> Response {
    let session = match session_or_login(&board, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let mut all = board.controller.halts.list(true);
    all.reverse();
    let operator = may(&session, "Resume");
    let live = html! {
        h1 { "Halts" }
        table.grid #halts {
            thead { tr { th { "Halt" } th { "Scope" } th { "By" } th { "Reason" } th { "Lifted" } } }
            tbody {
                @for h in all.iter().take(200) {
                    @let (kind, name, typed) = scope_fields(h.scope.as_ref());
                    tr data-halt=(h.id) {
                        td { (h.id) @if h.drill { " (drill)" } }
                        td { (kind) " " (name) }
                        td { (h.halted_by) br; (time(h.halted_at_unix_ms)) }
                        td { (h.reason) }
                        td {
                            @if !h.resumed_by.is_empty() { (h.resumed_by) br; (time(h.resumed_at_unix_ms)) }
                            @else if operator {
                                form.inline method="post" action="/resume" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input type="hidden" name="kind" value=(kind);
                                    input type="hidden" name="scope" value=(name);
                                    input type="hidden" name="back" value="/halts";
                                    label { "Reason " input name="reason" required; }
                                    label { "Type " code { (typed) } " " input name="confirm" required autocomplete="off"; }
                                    button type="submit" { "Resume" }
                                }
                            } @else { strong { "■ IN FORCE" } }
                        }
                    }
                }
            }
        }
    };
    respond(&board, &headers, &session, "halts", "/halts", live)
}

pub async fn incidents(State(board): State<Board>, headers: HeaderMap) -> Response {
    let session = match session_or_login(&board, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let list = board.controller.alerts.list();
    let operator = may(&session, "AckIncident");
    let live = html! {
        h1 { "Incidents" }
        @if list.is_empty() { p.none { "No open incidents." } }
        table.grid #incidents {
            thead { tr { th { "Incident" } th { "State" } th { "What" } th { "Opened" } th { "See" } th { "Acknowledged" } } }
            tbody {
                @for i in &list {
                    tr data-incident=(i.id) {
                        td { (i.id) }
                        td { @if i.is_resolved() { "RESOLVED" } @else { strong { "▲ FIRING" } } }
                        td { (i.title()) br; span.detail { (i.detail) } }
                        td { (time(i.opened_at_unix_ms)) }
                        td { code { (i.see()) } }
                        td {
                            @if let Some(by) = &i.acked_by { (by) }
                            @else if operator {
                                form.inline method="post" action="/ack" {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    input type="hidden" name="id" value=(i.id);
                                    input type="hidden" name="back" value="/incidents";
                                    button type="submit" { "Acknowledge" }
                                }
                            } @else { span.none { "not yet" } }
                        }
                    }
                }
            }
        }
    };
    respond(&board, &headers, &session, "incidents", "/incidents", live)
}

pub async fn audit(State(board): State<Board>, headers: HeaderMap) -> Response {
    let session = match session_or_login(&board, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let c = &board.controller;
    let head = *c.ledger.sealed().borrow();
    let tail = crate::store::audit_reads::tail(c.ledger.store(), head, 50).unwrap_or_default();
    // The tail chains to itself; the whole chain is re-verified by the controller's own check.
    let links = tail
        .windows(2)
        .all(|w| w[1].prev_hash == w[0].hash && w[1].seq == w[0].seq + 1)
        && tail.iter().all(|r| lockstep_evidence::chain::hash_of(r) == r.hash);
    let whole = c.alerts.last_verification();
    let live = html! {
        h1 { "Audit log" }
        p #chain .chain {
            @if links { "● The " (tail.len()) " newest records chain to each other and match their hashes. " }
            @else { strong { "■ BROKEN: the newest records do not chain. " } }
            @match &whole {
                Some((at, Ok(n))) => { "The whole log (" (n) " records) was verified at " (time(*at)) "." },
                Some((at, Err(why))) => { strong { "■ The whole log failed verification at " (time(*at)) ": " (why) } },
                None => { "The whole log has not been verified since the controller started (`lockstep audit verify`)." },
            }
        }
        table.grid #audit {
            thead { tr { th { "Seq" } th { "Time" } th { "What" } th { "Who" } th { "Host / role" } th { "Detail" } } }
            tbody {
                @for r in tail.iter().rev() {
                    tr data-seq=(r.seq) {
                        td { (r.seq) } td { (time(r.at_unix_ms)) } td { (r.action) } td { (r.actor) }
                        td { (r.host) " " (r.role) } td { (r.detail) }
                    }
                }
            }
        }
    };
    respond(&board, &headers, &session, "audit", "/audit", live)
}
