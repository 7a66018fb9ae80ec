use super::*;
use crate::chain::{AuditEvent, ChainHead, seal};
use crate::facts::{GateChanged, GateChecked, HaltFact, HostFact, ReleaseFact, Resumed, to_facts};
use crate::report::key::ReportKey;
use crate::report::{ReportError, canonical, sign};

/// 2026-12-02T00:00:00Z.
const DAY: i64 = 1_796_169_600_000;
const MIN: i64 = 60_000;

fn host(name: &str, gate: &str, reasons: &[&str]) -> HostFact {
    HostFact {
        host: name.into(),
        gate: gate.into(),
        reasons: reasons.iter().map(|r| r.to_string()).collect(),
        agent_version: "0.1.0".into(),
        last_seq: 7,
        measured_at_unix_ms: DAY + 9 * 60 * MIN,
        accepted_at_unix_ms: DAY + 9 * 60 * MIN,
        digest: "ab".repeat(32),
    }
}

fn check(by: &str, exit: u8, hosts: Vec<HostFact>, release: u64) -> AuditEvent {
    let open = hosts.iter().filter(|h| h.gate == "OPEN").count();
    let summary = format!("smars: {open}/{} OPEN on release {release}", hosts.len());
    AuditEvent {
        actor: by.into(),
        action: crate::action::AuditAction::GateChecked,
        role: "smars".into(),
        detail: format!("{summary}; exit {exit}"),
        facts: to_facts(&GateChecked {
            exit,
            summary,
            mode: "release".into(),
            release: Some(ReleaseFact {
                number: release,
                role: "smars".into(),
                digest: "cd".repeat(32),
                entries: 3,
                proposed_by: "alice".into(),
                approved_by: "bob".into(),
                ..ReleaseFact::default()
            }),
            hosts,
            ..GateChecked::default()
        }),
        ..AuditEvent::new("", crate::action::AuditAction::GateChanged, "")
    }
}

fn changed(h: &str, from: &str, to: &str, why: &str) -> AuditEvent {
    AuditEvent {
        actor: "controller".into(),
        action: crate::action::AuditAction::GateChanged,
        host: h.into(),
        role: "smars".into(),
        detail: format!("{from} -> {to}"),
        facts: to_facts(&GateChanged {
            from: from.into(),
            to: to.into(),
            reasons: if why.is_empty() { vec![] } else { vec![why.into()] },
        }),
    }
}

/// A log: yesterday's check, then this morning: two hosts open, a check at
/// 09:00 (2/2), smars-02 drifts, a drill halt and its resume, a check at 09:25 (1/2).
fn morning() -> Vec<AuditRecord> {
    let mut head = ChainHead::after(None);
    let mut all = Vec::new();
    let mut add = |events: Vec<AuditEvent>, at: i64| {
        let (records, next) = seal(&head, events, at);
        head = next;
        all.extend(records);
    };
    let open = || vec![host("smars-01", "OPEN", &[]), host("smars-02", "OPEN", &[])];
    add(vec![check("carol (viewer)", 0, open(), 1)], DAY - 10 * 60 * MIN);
    add(
        vec![
            changed("smars-01", "MISSING", "OPEN", ""),
            changed("smars-02", "MISSING", "OPEN", ""),
        ],
        DAY + 8 * 60 * MIN,
    );
    add(vec![check("bob (approver)", 0, open(), 1)], DAY + 9 * 60 * MIN);
    add(
        vec![changed("smars-02", "OPEN", "CLOSED", "drift: /opt/smars/bin/router")],
        DAY + 9 * 60 * MIN + 10 * MIN,
    );
    let drill = AuditEvent {
        actor: "alice (operator)".into(),
        action: crate::action::AuditAction::Halt,
        role: "smars".into(),
        detail: "drill halt 1 on role smars: RTS 6 test".into(),
        facts: to_facts(&HaltFact {
            id: 1,
            scope: "role smars".into(),
            reason: "RTS 6 test".into(),
            by: "alice".into(),
            at_unix_ms: DAY + 9 * 60 * MIN + 12 * MIN,
            drill: true,
        }),
        ..AuditEvent::new("", crate::action::AuditAction::GateChanged, "")
    };
    add(vec![drill], DAY + 9 * 60 * MIN + 12 * MIN);
    let resume = AuditEvent {
        actor: "alice (operator)".into(),
        action: crate::action::AuditAction::Resume,
        role: "smars".into(),
        facts: to_facts(&Resumed {
            ids: vec![1],
            scope: "role smars".into(),
            reason: "drill over".into(),
            by: "alice".into(),
        }),
        ..AuditEvent::new("", crate::action::AuditAction::GateChanged, "")
    };
    add(vec![resume], DAY + 9 * 60 * MIN + 13 * MIN);
    // Another role's check is not this role's.
    add(
        vec![AuditEvent {
            action: crate::action::AuditAction::GateChecked,
            role: "oms".into(),
            ..check("bob (approver)", 0, vec![], 1)
        }],
        DAY + 9 * 60 * MIN + 20 * MIN,
    );
    let drifting = vec![
        host("smars-01", "OPEN", &[]),
        host("smars-02", "CLOSED", &["drift: /opt/smars/bin/router"]),
    ];
    add(
        vec![check("bob (approver)", 3, drifting, 1)],
        DAY + 9 * 60 * MIN + 25 * MIN,
    );
    add(
        vec![AuditEvent::new(
            "controller",
            crate::action::AuditAction::GateChanged,
            "",
        )],
        DAY + 10 * 60 * MIN,
    );
    all
}

fn asked(at: &str) -> Asked {
    Asked {
        role: "smars".into(),
        date: "2026-12-02".into(),
        time_zone: "UTC".into(),
        at: at.into(),
    }
}

fn key() -> (tempfile::TempDir, ReportKey) {
    let d = tempfile::tempdir().unwrap();
    let (k, _) = ReportKey::generate().unwrap();
    (d, k)
}

#[test]
fn the_report_rests_on_the_last_check_up_to_the_time_asked() {
    let records = morning();
    let at_0925 = derive(&records, &asked("09:25")).unwrap();
    assert_eq!(at_0925.check.exit, 3);
    assert_eq!(at_0925.check.by, "bob (approver)");
    assert_eq!((at_0925.open_hosts, at_0925.total_hosts), (1, 2));
    assert_eq!(at_0925.hosts[1].gate, "CLOSED");
    assert_eq!(at_0925.hosts[1].reasons, vec!["drift: /opt/smars/bin/router"]);
    assert_eq!(at_0925.release.as_ref().unwrap().approved_by, "bob");
    // The day's checks of this role only (not yesterday's, not oms').
    assert_eq!(
        at_0925.gate_checks.iter().map(|c| c.exit).collect::<Vec<_>>(),
        vec![0, 3]
    );
    assert_eq!(at_0925.halts_today.len(), 2);
    assert!(at_0925.halts_today[0].drill);
    assert_eq!(at_0925.halts_today[1].ids, vec![1]);
    assert_eq!(at_0925.timeline.len(), 3);
    // The segment: from the day's first record to the check.
    assert_eq!((at_0925.segment.first_seq, at_0925.segment.last_seq), (2, 9));
    assert_eq!(at_0925.segment.first_prev_hash, records[0].hash);
    assert_eq!(at_0925.segment.last_hash, records[8].hash);

    let at_0915 = derive(&records, &asked("09:15")).unwrap();
    assert_eq!(at_0915.check.exit, 0);
    assert_eq!(at_0915.open_hosts, 2);
    assert_eq!(at_0915.segment.last_seq, 4);
    assert!(at_0915.halts_today.is_empty());
    // No --at: the day's last check.
    let whole_day = derive(&records, &asked("")).unwrap();
    assert_eq!(
        (&whole_day.check, &whole_day.segment),
        (&at_0925.check, &at_0925.segment)
    );
}

#[test]
fn no_check_and_bad_arguments_are_refused_naming_the_fix() {
    let records = morning();
    let err = derive(&records, &asked("08:30")).unwrap_err();
    assert!(matches!(err, ReportError::NoCheck { .. }), "{err}");
    assert!(err.to_string().contains("run it first"), "{err}");
    let bad = |a: Asked| derive(&records, &a).unwrap_err();
    assert!(matches!(
        bad(Asked {
            date: "2026-13-02".into(),
            ..asked("")
        }),
        ReportError::BadDate(_)
    ));
    assert!(matches!(bad(asked("9h25")), ReportError::BadTime(_)));
    assert!(matches!(
        bad(Asked {
            time_zone: "Mars/Olympus".into(),
            ..asked("")
        }),
        ReportError::BadZone(_)
    ));
}

#[test]
fn the_day_is_the_day_in_the_zone_asked() {
    // 04:20 in New York is 09:20 UTC: the New York day of 2026-12-02
    // starts at 05:00 UTC (yesterday's check is not in it), and the last
    // check by 04:20 is the 09:00 UTC one.
    let records = morning();
    let ny = derive(
        &records,
        &Asked {
            time_zone: "America/New_York".into(),
            at: "04:20".into(),
            ..asked("")
        },
    )
    .unwrap();
    assert_eq!(ny.check.seq, 4);
    assert_eq!(ny.utc_offset_seconds, -5 * 3600);
    assert_eq!(ny.segment.first_seq, 2);
    assert_eq!(ny.gate_checks.len(), 1);
}

#[test]
fn a_signed_report_holds_against_its_records() {
    let (_d, k) = key();
    let records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let text = serde_json::to_string_pretty(&doc).unwrap();
    let v = verify(&text, Some(&records), Some(k.public_hex()));
    assert!(v.holds(), "{:?}", v.findings);
    let page = crate::report::html::render(&doc);
    let v = verify(&page, Some(&records), None);
    assert!(v.holds(), "{:?}", v.findings);
}

#[test]
fn one_byte_changed_in_the_report_is_named() {
    let (_d, k) = key();
    let records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let text = serde_json::to_string_pretty(&doc).unwrap();
    // The exit code of the check: 3 becomes 0.
    let edited = text.replacen("\"exit\": 3", "\"exit\": 0", 1);
    assert_ne!(edited, text);
    let v = verify(&edited, Some(&records), None);
    assert!(v.findings.contains(&Finding::BadSignature), "{:?}", v.findings);
    let differs = v.findings.iter().find_map(|f| match f {
        Finding::Differs { path, report, records } => Some((path.clone(), report.clone(), records.clone())),
        _ => None,
    });
    assert_eq!(differs, Some(("report.check.exit".into(), "0".into(), "3".into())));
    // Without the records the signature still fails.
    assert_eq!(verify(&edited, None, None).findings, vec![Finding::BadSignature]);
    // Another key than the auditor's is named.
    let (_d2, other) = key();
    let v = verify(&text, None, Some(other.public_hex()));
    assert!(matches!(v.findings[..], [Finding::OtherKey { .. }]), "{:?}", v.findings);
}

#[test]
fn one_byte_changed_or_a_record_dropped_in_the_export_is_named() {
    let (_d, k) = key();
    let records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let text = serde_json::to_string(&doc).unwrap();

    // smars-02's reason in the check's facts: "router" becomes "routes".
    let mut edited = records.clone();
    edited[8].facts = edited[8].facts.replacen("router", "routes", 1);
    let v = verify(&text, Some(&edited), None);
    assert!(
        v.findings.contains(&Finding::BrokenChain {
            seq: 9,
            problem: "its content does not match its hash: it was edited".into()
        }),
        "{:?}",
        v.findings
    );
    assert!(
        v.findings
            .iter()
            .any(|f| matches!(f, Finding::Differs { path, .. } if path == "report.hosts[1].reasons[0]")),
        "{:?}",
        v.findings
    );

    let mut dropped = records.clone();
    dropped.remove(4);
    let v = verify(&text, Some(&dropped), None);
    assert!(
        v.findings.contains(&Finding::MissingRecord { seq: 5 }),
        "{:?}",
        v.findings
    );
}

#[test]
fn an_edited_page_is_named_by_its_line() {
    let (_d, k) = key();
    let records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let page = crate::report::html::render(&doc);
    assert!(page.contains("smars-02") && page.contains("<svg"), "{page}");
    let edited = page.replacen(">CLOSED<", ">OPEN<", 1);
    assert_ne!(edited, page);
    let v = verify(&edited, Some(&records), None);
    assert!(
        matches!(&v.findings[..], [Finding::PageEdited { found, .. }] if found.contains("OPEN")),
        "{:?}",
        v.findings
    );
    assert!(!verify("<html>nothing</html>", None, None).holds());
}

#[test]
fn canonical_json_sorts_members_and_drops_whitespace() {
    let a: Value = serde_json::from_str(r#"{"b": [1, {"y": "é", "x": null}], "a": true}"#).unwrap();
    assert_eq!(canonical(&a), r#"{"a":true,"b":[1,{"x":null,"y":"é"}]}"#);
}
