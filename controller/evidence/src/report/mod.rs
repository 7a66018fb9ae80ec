//! The pre-open report: what a role looked like at the morning's pre-open
//! check, derived from audit records alone so that anyone holding an
//! `audit export` can derive it again and compare ([`check_against`]).
//!
//! The report rests on one `gate.checked` record (the last check of the
//! role that day up to the time asked for): its facts are the answer, the
//! release, the halts and the incidents as the controller held them when it
//! answered, and every host's gate by the `gate.state` it names
//! ([`crate::gate_state`]; checks written before gate states list the hosts
//! themselves, with their last attestation: format v1). Around it come the
//! day's records of the same role: gate transitions, releases, halts and
//! resumes, and every other gate check. The segment is every record from
//! the first of the day (or the first gate state the check rests on, when
//! that is older) to that check; its ends are named by seq and hash.
//!
//! The signed document is `{"report": BODY, "signature": {...}}`; the
//! signature is Ed25519 over `"lockstep.v1.report\0"` followed by BODY in
//! canonical JSON (members sorted by name, no whitespace). Checking one is
//! [`crate::report::verify`].

pub mod html;
pub mod key;
pub mod verify;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::action::AuditAction;
use crate::chain::AuditRecord;
use crate::facts::{GateChanged, GateChecked, HaltFact, HostFact, IncidentFact, ReleaseFact, Resumed, from_facts};
use crate::report::key::ReportKey;

/// Reports resting on a `gate.state` ([`crate::gate_state`]).
pub const FORMAT: &str = "lockstep.v2.pre-open-report";
/// Reports resting on a check that lists every host itself (written before
/// gate states): the same body, with each host's last attestation.
pub const FORMAT_V1: &str = "lockstep.v1.pre-open-report";
const SIGNING_CONTEXT: &[u8] = b"lockstep.v1.report\0";

/// What was asked: a role, a day in a time zone, and optionally a time of
/// that day (the report then rests on the last check at or before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub role: String,
    /// YYYY-MM-DD.
    pub date: String,
    /// An IANA zone such as America/New_York.
    pub time_zone: String,
    /// HH:MM, or empty for the whole day.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("--date {0:?}: give a day like 2026-12-02")]
    BadDate(String),
    #[error("--at {0:?}: give a time of day like 09:25 (or 09:25:03, 09:25:03.250)")]
    BadTime(String),
    #[error("--time-zone {0:?}: give an IANA zone like America/New_York or UTC")]
    BadZone(String),
    #[error(
        "no `lockstep gate check --role {role}` was recorded on {date} up to {until}: the report describes the pre-open check, so run it first (or pick another --date/--at)"
    )]
    NoCheck { role: String, date: String, until: String },
    #[error(
        "the gate check in audit record {seq} carries no facts (a controller before reports wrote it): no report can rest on it"
    )]
    NoFacts { seq: u64 },
    #[error("the gate check in audit record {check} rests on a gate state that cannot be read back: {problem}")]
    State {
        check: u64,
        problem: crate::gate_state::StateError,
    },
}

/// The report itself: every fact, and the records it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    pub format: String,
    pub role: String,
    pub date: String,
    pub time_zone: String,
    /// The time asked for ("" for the whole day).
    pub at: String,
    /// The zone's offset from UTC at the check, which the HTML writes times in.
    pub utc_offset_seconds: i32,
    pub day_start_unix_ms: i64,
    pub until_unix_ms: i64,
    /// The pre-open check this report describes.
    pub check: CheckRun,
    pub mode: String,
    pub release: Option<ReleaseFact>,
    pub open_hosts: u32,
    pub total_hosts: u32,
    pub hosts: Vec<HostFact>,
    pub halts_in_force: Vec<HaltFact>,
    pub incidents: Vec<IncidentFact>,
    /// Every gate check of the role that day, up to this one.
    pub gate_checks: Vec<CheckRun>,
    pub halts_today: Vec<HaltEvent>,
    pub releases_today: Vec<ReleaseEvent>,
    /// The role's gate transitions that day, up to the check.
    pub timeline: Vec<Transition>,
    pub segment: Segment,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    pub seq: u64,
    pub at_unix_ms: i64,
    pub by: String,
    pub exit: u8,
    pub summary: String,
}

/// A halt thrown or lifted that day over the role, a host of it, or the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltEvent {
    pub seq: u64,
    pub at_unix_ms: i64,
    /// "halt" or "resume".
    pub action: String,
    pub by: String,
    pub scope: String,
    pub reason: String,
    pub ids: Vec<u64>,
    pub drill: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEvent {
    pub seq: u64,
    pub at_unix_ms: i64,
    /// "proposed" or "approved".
    pub action: String,
    pub number: u64,
    pub digest: String,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub seq: u64,
    pub at_unix_ms: i64,
    pub host: String,
    pub from: String,
    pub to: String,
    pub reasons: Vec<String>,
}

/// The records the report rests on: a contiguous stretch of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub first_seq: u64,
    /// The hash the first record follows (the record before the day's first).
    pub first_prev_hash: String,
    pub first_hash: String,
    pub last_seq: u64,
    pub last_hash: String,
    pub records: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub algorithm: String,
    pub key_id: String,
    /// Ed25519 public key, hex: compare it with `lockstep pki report-key`.
    pub public_key: String,
    pub value: String,
}

/// The document a report file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub report: Body,
    pub signature: Signature,
}

/// The instants a request stands for.
struct Window {
    day_start: i64,
    until: i64,
    zone: jiff::tz::TimeZone,
}

/// The first and last instants (Unix ms, both included) whose records a
/// report `asked` for rests on: the day's start to the time asked for.
pub fn bounds(asked: &Asked) -> Result<(i64, i64), ReportError> {
    window(asked).map(|w| (w.day_start, w.until))
}

fn window(asked: &Asked) -> Result<Window, ReportError> {
    let zone = jiff::tz::TimeZone::get(&asked.time_zone).map_err(|_| ReportError::BadZone(asked.time_zone.clone()))?;
    let date: jiff::civil::Date = asked
        .date
        .parse()
        .map_err(|_| ReportError::BadDate(asked.date.clone()))?;
    let start = date
        .to_zoned(zone.clone())
        .map_err(|_| ReportError::BadDate(asked.date.clone()))?;
    let until = if asked.at.is_empty() {
        start
            .tomorrow()
            .map_err(|_| ReportError::BadDate(asked.date.clone()))?
            .start_of_day()
            .map_err(|_| ReportError::BadDate(asked.date.clone()))?
            .timestamp()
            .as_millisecond()
            - 1
    } else {
        let time: jiff::civil::Time = asked.at.parse().map_err(|_| ReportError::BadTime(asked.at.clone()))?;
        date.to_datetime(time)
            .to_zoned(zone.clone())
            .map_err(|_| ReportError::BadTime(asked.at.clone()))?
            .timestamp()
            .as_millisecond()
            // Through the whole minute (or second) asked for: a check at 09:25:40 is "at 09:25".
            + match asked.at.len() {
                0..=5 => 59_999,
                6..=8 => 999,
                _ => 0,
            }
    };
    Ok(Window {
        day_start: start.timestamp().as_millisecond(),
        until,
        zone,
    })
}

/// The report `asked` for, from `records` (in seq order, contiguous; at
/// least the whole day up to the check, and back to the first gate state
/// the check names). The same records always give the same report.
pub fn derive(records: &[AuditRecord], asked: &Asked) -> Result<Body, ReportError> {
    let w = window(asked)?;
    let role = asked.role.as_str();
    let day: Vec<&AuditRecord> = records
        .iter()
        .skip_while(|r| r.at_unix_ms < w.day_start)
        .take_while(|r| r.at_unix_ms <= w.until)
        .collect();
    let Some(anchor) = day
        .iter()
        .rev()
        .find(|r| AuditAction::GateChecked.is(&r.action) && r.role == role)
        .copied()
    else {
        return Err(ReportError::NoCheck {
            role: role.into(),
            date: asked.date.clone(),
            until: if asked.at.is_empty() {
                "the end of the day".into()
            } else {
                format!("{} {}", asked.at, asked.time_zone)
            },
        });
    };
    let mut facts: GateChecked = from_facts(&anchor.facts).ok_or(ReportError::NoFacts { seq: anchor.seq })?;
    let (format, first_state) = match facts.state.clone() {
        None => (FORMAT_V1, None),
        Some(named) => {
            let (hosts, first) = hosts_of_state(records, role, anchor.seq, &named)?;
            facts.hosts = hosts;
            (FORMAT, Some(first))
        }
    };
    let today: Vec<&AuditRecord> = day.into_iter().take_while(|r| r.seq <= anchor.seq).collect();
    // The records the report rests on: the day's up to the check, reaching
    // back to the first gate state it names when that is older.
    let first_seq = first_state.map_or(today[0].seq, |s| s.min(today[0].seq));
    let segment: Vec<&AuditRecord> = records
        .iter()
        .skip_while(|r| r.seq < first_seq)
        .take_while(|r| r.seq <= anchor.seq)
        .collect();
    let inventory: std::collections::BTreeSet<&str> = facts.hosts.iter().map(|h| h.host.as_str()).collect();
    // A halt or resume concerns the role when it names it, one of its hosts, or nobody (the fleet).
    let concerns = |r: &AuditRecord| {
        r.role == role || inventory.contains(r.host.as_str()) || (r.role.is_empty() && r.host.is_empty())
    };

    let mut gate_checks = Vec::new();
    let mut halts_today = Vec::new();
    let mut releases_today = Vec::new();
    let mut timeline = Vec::new();
    for r in &today {
        match AuditAction::parse(&r.action) {
            Some(AuditAction::GateChecked) if r.role == role => {
                let f: GateChecked = from_facts(&r.facts).unwrap_or_default();
                gate_checks.push(check_run(r, &f));
            }
            Some(AuditAction::Halt) if concerns(r) => {
                let f: HaltFact = from_facts(&r.facts).unwrap_or_default();
                halts_today.push(HaltEvent {
                    seq: r.seq,
                    at_unix_ms: r.at_unix_ms,
                    action: AuditAction::Halt.as_str().into(),
                    by: r.actor.clone(),
                    scope: f.scope,
                    reason: f.reason,
                    ids: vec![f.id],
                    drill: f.drill,
                });
            }
            Some(AuditAction::Resume) if concerns(r) => {
                let f: Resumed = from_facts(&r.facts).unwrap_or_default();
                halts_today.push(HaltEvent {
                    seq: r.seq,
                    at_unix_ms: r.at_unix_ms,
                    action: AuditAction::Resume.as_str().into(),
                    by: r.actor.clone(),
                    scope: f.scope,
                    reason: f.reason,
                    ids: f.ids,
                    drill: false,
                });
            }
            Some(AuditAction::ReleaseProposed | AuditAction::ReleaseApproved) if r.role == role => {
                let f: ReleaseFact = from_facts(&r.facts).unwrap_or_default();
                releases_today.push(ReleaseEvent {
                    seq: r.seq,
                    at_unix_ms: r.at_unix_ms,
                    action: r.action.trim_start_matches("release.").into(),
                    number: f.number,
                    digest: f.digest,
                    by: r.actor.clone(),
                });
            }
            Some(AuditAction::GateChanged) if r.role == role => {
                if let Some(f) = from_facts::<GateChanged>(&r.facts) {
                    timeline.push(Transition {
                        seq: r.seq,
                        at_unix_ms: r.at_unix_ms,
                        host: r.host.clone(),
                        from: f.from,
                        to: f.to,
                        reasons: f.reasons,
                    });
                }
            }
            _ => {}
        }
    }
    let (first, last) = (segment[0], anchor);
    let check_at = jiff::Timestamp::from_millisecond(anchor.at_unix_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let open_hosts = facts.hosts.iter().filter(|h| h.gate == "OPEN").count();
    Ok(Body {
        format: format.into(),
        role: role.into(),
        date: asked.date.clone(),
        time_zone: asked.time_zone.clone(),
        at: asked.at.clone(),
        utc_offset_seconds: w.zone.to_offset(check_at).seconds(),
        day_start_unix_ms: w.day_start,
        until_unix_ms: w.until,
        check: check_run(anchor, &facts),
        mode: facts.mode.clone(),
        release: facts.release.clone(),
        open_hosts: u32::try_from(open_hosts).unwrap_or(u32::MAX),
        total_hosts: u32::try_from(facts.hosts.len()).unwrap_or(u32::MAX),
        hosts: facts.hosts,
        halts_in_force: facts.halts,
        incidents: facts.incidents,
        gate_checks,
        halts_today,
        releases_today,
        timeline,
        segment: Segment {
            first_seq: first.seq,
            first_prev_hash: first.prev_hash.clone(),
            first_hash: first.hash.clone(),
            last_seq: last.seq,
            last_hash: last.hash.clone(),
            records: u64::try_from(segment.len()).unwrap_or(u64::MAX),
        },
    })
}

/// The hosts of the gate state a check names, read from `records` (in seq
/// order), and the seq of the first state record they rest on.
fn hosts_of_state(
    records: &[AuditRecord],
    role: &str,
    check: u64,
    named: &crate::gate_state::StateRef,
) -> Result<(Vec<HostFact>, u64), ReportError> {
    let by_seq = |seq: u64| -> Result<Option<AuditRecord>, std::convert::Infallible> {
        Ok(records
            .binary_search_by_key(&seq, |r| r.seq)
            .ok()
            .map(|i| records[i].clone()))
    };
    let failed = |problem| ReportError::State { check, problem };
    let chain = match crate::gate_state::chain(role, named.seq, by_seq) {
        Ok(chain) => chain.map_err(failed)?,
        Err(never) => match never {},
    };
    let hosts = crate::gate_state::apply(&chain).map_err(failed)?;
    let found = crate::gate_state::digest(&hosts);
    if found != named.digest {
        return Err(failed(crate::gate_state::StateError::Digest {
            seq: named.seq,
            found,
            said: named.digest.clone(),
        }));
    }
    Ok((
        hosts.into_values().collect(),
        chain.first().map_or(named.seq, |(seq, _)| *seq),
    ))
}

fn check_run(r: &AuditRecord, f: &GateChecked) -> CheckRun {
    CheckRun {
        seq: r.seq,
        at_unix_ms: r.at_unix_ms,
        by: r.actor.clone(),
        exit: f.exit,
        summary: f.summary.clone(),
    }
}

/// `body` signed with `key`.
pub fn sign(body: Body, key: &ReportKey) -> Signed {
    let value = key.sign(&signing_input(&to_value(&body)));
    Signed {
        report: body,
        signature: Signature {
            algorithm: "Ed25519".into(),
            key_id: key.key_id(),
            public_key: key.public_hex().into(),
            value: hex::encode(value),
        },
    }
}

pub(crate) fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub(crate) fn signing_input(body: &Value) -> Vec<u8> {
    let mut input = SIGNING_CONTEXT.to_vec();
    input.extend_from_slice(canonical(body).as_bytes());
    input
}

/// JSON with object members sorted by name and no whitespace: the bytes
/// the signature covers (the report holds only strings, integers, booleans,
/// null, lists and objects, so this is RFC 8785 for it).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

/// [`canonical`] into one buffer: a 10,000-host report is written once,
/// not once per level of nesting.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string as serde_json escapes it (the escaping protocol.md names).
fn write_string(text: &str, out: &mut String) {
    // serde_json writes valid UTF-8 into the Vec; the fallback never runs.
    let mut bytes = Vec::with_capacity(text.len() + 2);
    if serde_json::to_writer(&mut bytes, text).is_ok() {
        out.push_str(&String::from_utf8_lossy(&bytes));
    }
}

/// The audit records of an `audit export` (JSON lines).
pub fn parse_export(text: &str) -> Result<Vec<AuditRecord>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| AuditRecord::from_json(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
