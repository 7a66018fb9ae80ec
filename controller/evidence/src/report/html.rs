//! The pre-open report as one self-contained page a compliance officer can
//! read and print: no script, no outside file. It carries its signed JSON
//! document, and the page is a pure function of that document, so
//! `report verify` renders it again and any edited byte shows.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::report::{Body, Signed, Transition};

const DOCUMENT_OPEN: &str = r#"<script type="application/json" id="lockstep-report">"#;
const DOCUMENT_CLOSE: &str = "</script>";

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem;color:#111;background:#fff;font-size:15px;line-height:1.4}
h1{font-size:1.6rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin:1.6rem 0 .5rem;border-bottom:1px solid #ccc}
.banner{font-size:1.3rem;font-weight:600;padding:.6rem .9rem;border:3px solid #111;display:inline-block;margin:.6rem 0}
.banner.all-open{border-style:solid}.banner.not-open{border-style:double;border-width:6px}
table{border-collapse:collapse;width:100%;margin:.3rem 0}th,td{border:1px solid #bbb;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#eee}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;word-break:break-all}
.gate{font-weight:700;white-space:nowrap}.gate.OPEN::before{content:'\\25CF  '}.gate.CLOSED::before{content:'\\25A0  '}.gate.MISSING::before{content:'\\25CB  '}
.none{color:#555;font-style:italic}td.host{white-space:nowrap}.marks{columns:2;font-size:.9em}.meta{color:#333}
svg text{font-family:system-ui,sans-serif;font-size:11px}
@media print{body{margin:1cm;font-size:11px}.banner{font-size:1rem}}
";

/// The page for `doc`.
pub fn render(doc: &Signed) -> String {
    let r = &doc.report;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "lockstep pre-open report: " (r.role) " on " (r.date) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Pre-open report: role " (r.role) ", " (r.date) }
                p.meta {
                    "The pre-open check recorded at " (time(r, r.check.at_unix_ms)) " " (zone(r))
                    " by " (r.check.by) " (audit record " (r.check.seq) ")"
                    @if !r.at.is_empty() { ", the last one at or before " (r.at) }
                    "."
                }
                div class=(if r.open_hosts == r.total_hosts { "banner all-open" } else { "banner not-open" }) {
                    (r.check.summary) " — exit " (r.check.exit)
                }
                h2 { "The release the hosts were held to" }
                (release(r))
                h2 { "Hosts (" (r.open_hosts) " of " (r.total_hosts) " OPEN)" }
                (hosts(r))
                h2 { "The morning" }
                (picture(r))
                h2 { "Halts in force at the check" }
                (halts_in_force(r))
                h2 { "Halts, drills and resumes that day" }
                (halts_today(r))
                h2 { "Incidents not closed at the check" }
                (incidents(r))
                h2 { "Gate checks that day" }
                (gate_checks(r))
                h2 { "Releases proposed or approved that day" }
                (releases_today(r))
                h2 { "What this report rests on" }
                (evidence(doc))
                (PreEscaped(DOCUMENT_OPEN)) (PreEscaped(document_json(doc))) (PreEscaped(DOCUMENT_CLOSE))
            }
        }
    };
    // One element a line, so that a changed byte is named by its line.
    page.into_string().replace("><", ">\n<")
}

/// The signed document inside a page, if it has one.
pub fn embedded(page: &str) -> Option<String> {
    let start = page.find(DOCUMENT_OPEN)? + DOCUMENT_OPEN.len();
    let len = page[start..].find(DOCUMENT_CLOSE)?;
    Some(page[start..start + len].to_string())
}

/// JSON that cannot end its script element: every `<` is written `\u003c`,
/// which only ever occurs inside JSON strings.
fn document_json(doc: &Signed) -> String {
    serde_json::to_string(doc).unwrap_or_default().replace('<', "\\u003c")
}

fn time(r: &Body, unix_ms: i64) -> String {
    local(r, unix_ms, "%H:%M:%S")
}

fn local(r: &Body, unix_ms: i64, format: &str) -> String {
    let offset = jiff::tz::Offset::from_seconds(r.utc_offset_seconds).unwrap_or(jiff::tz::Offset::UTC);
    match jiff::Timestamp::from_millisecond(unix_ms) {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::fixed(offset))
            .strftime(format)
            .to_string(),
        Err(_) => "(no time)".into(),
    }
}

fn zone(r: &Body) -> String {
    let s = r.utc_offset_seconds;
    let sign = if s < 0 { '-' } else { '+' };
    format!(
        "{} (UTC{sign}{:02}:{:02})",
        r.time_zone,
        s.abs() / 3600,
        s.abs() % 3600 / 60
    )
}

fn when(r: &Body, unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".into();
    }
    let day = local(r, unix_ms, "%Y-%m-%d");
    if day == r.date {
        time(r, unix_ms)
    } else {
        format!("{day} {}", time(r, unix_ms))
    }
}

fn none(text: &str) -> Markup {
    html! { p.none { (text) } }
}

fn release(r: &Body) -> Markup {
    let Some(rel) = &r.release else {
        return none(&format!(
            "No approved release: the role is in {} mode (hosts are held to each other).",
            r.mode
        ));
    };
    html! {
        table {
            tr { th { "Release" } td { (rel.number) " (" (rel.entries) " entries)" } }
            tr { th { "Digest (SHA-256 of the version set)" } td { code { (rel.digest) } } }
            tr { th { "Proposed by" } td { (rel.proposed_by) " at " (when(r, rel.proposed_at_unix_ms)) } }
            tr { th { "Approved by" } td { (rel.approved_by) " at " (when(r, rel.approved_at_unix_ms)) } }
        }
    }
}

fn hosts(r: &Body) -> Markup {
    // Reports resting on a gate state name no attestation per host: an
    // OPEN gate is the proof of one within the freshness TTL.
    let attestations = r.format == super::FORMAT_V1;
    // Shown only when a host is TPM-bound: a page of hosts without TPMs
    // reads (and verifies) as it always did.
    let tpm = r.hosts.iter().any(|h| h.tpm.is_some());
    html! {
        table {
            tr {
                th { "Host" } th { "Gate" } th { "Reasons" }
                @if attestations { th { "Last accepted attestation" } }
                @if tpm { th { "TPM" } }
                th { "Version set" } th { "Agent" }
            }
            @for h in &r.hosts {
                tr {
                    td.host { (h.host) }
                    td { span class={ "gate " (h.gate) } { (h.gate) } }
                    td {
                        @if h.reasons.is_empty() { span.none { "none" } }
                        @for reason in &h.reasons { div { (reason) } }
                    }
                    @if attestations {
                        td {
                            @if h.last_seq == 0 { span.none { "none" } } @else {
                                "seq " (h.last_seq) ", measured " (when(r, h.measured_at_unix_ms)) ", accepted " (when(r, h.accepted_at_unix_ms))
                            }
                        }
                    }
                    @if tpm {
                        td {
                            @match &h.tpm {
                                None => span.none { "none (file keys)" },
                                Some(t) => {
                                    div { "EK " code { (t.ek) } ", " (t.ek_trust) }
                                    div { (t.boot) }
                                    div { "a verified quote within " (t.quote_max_age_s) " s of the check when OPEN" }
                                }
                            }
                        }
                    }
                    td { code { (h.digest) } }
                    td { (h.agent_version) }
                }
            }
        }
    }
}

fn halts_in_force(r: &Body) -> Markup {
    if r.halts_in_force.is_empty() {
        return none("None.");
    }
    html! {
        table {
            tr { th { "Halt" } th { "Scope" } th { "By" } th { "Since" } th { "Reason" } }
            @for h in &r.halts_in_force {
                tr {
                    td { (h.id) @if h.drill { " (drill)" } }
                    td { (h.scope) } td { (h.by) } td { (when(r, h.at_unix_ms)) } td { (h.reason) }
                }
            }
        }
    }
}

fn halts_today(r: &Body) -> Markup {
    if r.halts_today.is_empty() {
        return none("None.");
    }
    html! {
        table {
            tr { th { "Time" } th { "What" } th { "Scope" } th { "By" } th { "Reason" } th { "Record" } }
            @for h in &r.halts_today {
                tr {
                    td { (time(r, h.at_unix_ms)) }
                    td { (halt_word(&h.action, h.drill)) " " (ids(&h.ids)) }
                    td { (h.scope) } td { (h.by) } td { (h.reason) } td { (h.seq) }
                }
            }
        }
    }
}

fn halt_word(action: &str, drill: bool) -> &'static str {
    match (crate::action::AuditAction::Halt.is(action), drill) {
        (true, true) => "drill halt",
        (true, false) => "halt",
        (false, _) => "resume of halt",
    }
}

fn ids(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn incidents(r: &Body) -> Markup {
    if r.incidents.is_empty() {
        return none("None.");
    }
    html! {
        table {
            tr { th { "Incident" } th { "What" } th { "Opened" } th { "Resolved" } th { "Acknowledged" } }
            @for i in &r.incidents {
                tr {
                    td { (i.id) } td { (i.title) } td { (when(r, i.opened_at_unix_ms)) }
                    td { @if i.resolved_at_unix_ms == 0 { "not yet" } @else { (when(r, i.resolved_at_unix_ms)) } }
                    td { @if i.acked_by.is_empty() { "not yet" } @else { (i.acked_by) " at " (when(r, i.acked_at_unix_ms)) } }
                }
            }
        }
    }
}

fn gate_checks(r: &Body) -> Markup {
    html! {
        table {
            tr { th { "Time" } th { "By" } th { "Exit" } th { "Answer" } th { "Record" } }
            @for c in &r.gate_checks {
                tr { td { (time(r, c.at_unix_ms)) } td { (c.by) } td { (c.exit) } td { (c.summary) } td { (c.seq) } }
            }
        }
    }
}

fn releases_today(r: &Body) -> Markup {
    if r.releases_today.is_empty() {
        return none("None.");
    }
    html! {
        table {
            tr { th { "Time" } th { "What" } th { "By" } th { "Digest" } th { "Record" } }
            @for e in &r.releases_today {
                tr {
                    td { (time(r, e.at_unix_ms)) } td { "release " (e.number) " " (e.action) } td { (e.by) }
                    td { code { (e.digest) } } td { (e.seq) }
                }
            }
        }
    }
}

fn evidence(doc: &Signed) -> Markup {
    let s = &doc.report.segment;
    html! {
        table {
            tr { th { "Audit records" } td { (s.records) ", seq " (s.first_seq) " to " (s.last_seq) } }
            tr { th { "First record's hash" } td { code { (s.first_hash) } } }
            tr { th { "It follows" } td { code { (s.first_prev_hash) } } }
            tr { th { "Last record's hash" } td { code { (s.last_hash) } } }
            tr { th { "Signed by" } td { "Ed25519 key " (doc.signature.key_id) ": " code { (doc.signature.public_key) } } }
        }
        p {
            "To check it: " code { "lockstep report verify THIS-FILE --audit EXPORT --public-key KEY" }
            ", with an " code { "lockstep audit export" } " and the key " code { "lockstep pki report-key" }
            " prints on the controller. docs/protocol.md specifies the format for a tool of your own."
        }
    }
}

/// Gate state over the morning, one row a host, with releases, halts and
/// checks marked. State is told by fill pattern and a legend, not colour alone.
fn picture(r: &Body) -> Markup {
    const LEFT: f64 = 130.0;
    const WIDTH: f64 = 980.0;
    const ROW: f64 = 18.0;
    const TOP: f64 = 56.0;
    const MAX_ROWS: usize = 200;
    let end = r.check.at_unix_ms;
    let mut start = end;
    for t in r
        .timeline
        .iter()
        .map(|t| t.at_unix_ms)
        .chain(r.halts_today.iter().map(|h| h.at_unix_ms))
        .chain(r.releases_today.iter().map(|e| e.at_unix_ms))
        .chain(r.gate_checks.iter().map(|c| c.at_unix_ms))
    {
        start = start.min(t);
    }
    // A morning with nothing but the check still gets an axis.
    start = start.min(end - 1_000);
    let pad = (end - start) / 50;
    let (start, end_axis) = (start - pad, end + pad);
    let span = (end_axis - start) as f64;
    let x = |t: i64| LEFT + (t - start) as f64 / span * (WIDTH - LEFT - 10.0);
    // Hosts that changed come first; at 10,000 hosts the rest are counted, not drawn.
    let mut rows: Vec<(&str, Vec<&Transition>, &str)> = r
        .hosts
        .iter()
        .map(|h| {
            let moves: Vec<&Transition> = r.timeline.iter().filter(|t| t.host == h.host).collect();
            (h.host.as_str(), moves, h.gate.as_str())
        })
        .collect();
    rows.sort_by_key(|(_, moves, _)| moves.is_empty());
    let hidden = rows.len().saturating_sub(MAX_ROWS);
    rows.truncate(MAX_ROWS);
    let bottom = TOP + ROW * rows.len() as f64;
    let height = bottom + 60.0;
    let mut marks: Vec<(i64, String, &str)> = Vec::new();
    for e in &r.releases_today {
        marks.push((e.at_unix_ms, format!("release {} {}", e.number, e.action), "5 3"));
    }
    for h in &r.halts_today {
        marks.push((
            h.at_unix_ms,
            format!("{} {}", halt_word(&h.action, h.drill), ids(&h.ids)),
            "none",
        ));
    }
    for c in &r.gate_checks {
        marks.push((c.at_unix_ms, format!("gate check by {}: exit {}", c.by, c.exit), "1 2"));
    }
    marks.sort_by_key(|m| m.0);
    let ticks: Vec<(i64, &str)> = (0..=4)
        .map(|i| {
            (
                start + (end_axis - start) * i / 4,
                if i == 4 {
                    "end"
                } else if i == 0 {
                    "start"
                } else {
                    "middle"
                },
            )
        })
        .collect();
    // A morning replayed in seconds (a test, a drill) is told in milliseconds.
    let tick_label = |t: i64| {
        if end_axis - start < 60_000 {
            local(r, t, "%H:%M:%S%.3f")
        } else {
            time(r, t)
        }
    };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(height) viewBox={ "0 0 " (WIDTH) " " (height) } role="img"
            aria-label={ "Gates of role " (r.role) " from " (time(r, start)) " to " (time(r, end)) } {
            defs {
                pattern #closed width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)" {
                    rect width="6" height="6" fill="#c62828" {}
                    line x1="0" y1="0" x2="0" y2="6" stroke="#fff" stroke-width="2" {}
                }
                pattern #missing width="6" height="6" patternUnits="userSpaceOnUse" {
                    rect width="6" height="6" fill="#9e9e9e" {}
                    circle cx="3" cy="3" r="1.2" fill="#fff" {}
                }
            }
            @for (row, (host, moves, at_check)) in rows.iter().enumerate() {
                @let y = TOP + ROW * row as f64;
                text x="4" y=(fmt(y + 13.0)) { (host) }
                @for (from, to, state) in spans(moves, at_check, start + pad, end) {
                    rect x=(fmt(x(from))) y=(fmt(y + 2.0)) width=(fmt((x(to) - x(from)).max(1.0))) height=(fmt(ROW - 4.0)) fill=(fill(state)) stroke="#333" stroke-width="0.5" {
                        title { (host) " " (state) " from " (time(r, from)) }
                    }
                }
            }
            @for (i, (at, _, dash)) in marks.iter().enumerate() {
                line x1=(fmt(x(*at))) y1=(fmt(TOP - 6.0)) x2=(fmt(x(*at))) y2=(fmt(bottom)) stroke="#1a237e" stroke-width="1.5" stroke-dasharray=(dash) {}
                text x=(fmt(x(*at))) y=(fmt(12.0 + 14.0 * (i % 3) as f64)) fill="#1a237e" text-anchor="middle" font-weight="700" { (i + 1) }
            }
            @for (t, anchor) in &ticks {
                line x1=(fmt(x(*t))) y1=(fmt(bottom)) x2=(fmt(x(*t))) y2=(fmt(bottom + 5.0)) stroke="#333" {}
                text x=(fmt(x(*t))) y=(fmt(bottom + 17.0)) text-anchor=(anchor) { (tick_label(*t)) }
            }
            @let legend = height - 8.0;
            @if hidden > 0 {
                text x="4" y=(fmt(bottom + 17.0)) { "+ " (hidden) " hosts in one state all day" }
            }
            rect x="4" y=(fmt(legend - 10.0)) width="22" height="12" fill=(fill("OPEN")) stroke="#333" {}
            text x="30" y=(fmt(legend)) { "OPEN" }
            rect x="80" y=(fmt(legend - 10.0)) width="22" height="12" fill=(fill("CLOSED")) stroke="#333" {}
            text x="106" y=(fmt(legend)) { "CLOSED (hatched)" }
            rect x="220" y=(fmt(legend - 10.0)) width="22" height="12" fill=(fill("MISSING")) stroke="#333" {}
            text x="246" y=(fmt(legend)) { "MISSING (dotted)" }
            text x="380" y=(fmt(legend)) { "numbered lines: dashed = release, solid = halt or resume, dotted = gate check" }
        }
        @if !marks.is_empty() {
            ol.marks {
                @for (at, label, _) in &marks { li { (time(r, *at)) " " (label) } }
            }
        }
    }
}

/// A host's states over [start, end]: before its first move it was in that
/// move's `from` state, or, if it never moved, in the state the check found.
fn spans<'a>(moves: &[&'a Transition], at_check: &'a str, start: i64, end: i64) -> Vec<(i64, i64, &'a str)> {
    let mut out = Vec::new();
    let mut state: &str = moves.first().map_or(at_check, |m| m.from.as_str());
    let mut since = start;
    for m in moves {
        out.push((since, m.at_unix_ms, state));
        state = m.to.as_str();
        since = m.at_unix_ms;
    }
    out.push((since, end, state));
    out
}

fn fill(state: &str) -> &'static str {
    match state {
        "OPEN" => "#2e7d32",
        "CLOSED" => "url(#closed)",
        _ => "url(#missing)",
    }
}

/// Coordinates with one decimal: the same document always gives the same page.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}
