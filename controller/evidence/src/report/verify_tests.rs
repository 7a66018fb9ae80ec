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
        tpm: None,
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

/// A check that names the gate state its hosts are in.
fn stated_check(by: &str, exit: u8, hosts: usize, open: usize, state: &crate::gate_state::StateRef) -> AuditEvent {
    let summary = format!("smars: {open}/{hosts} OPEN on release 1");
    let mut event = check(by, exit, Vec::new(), 1);
    let mut facts: GateChecked = crate::facts::from_facts(&event.facts).unwrap();
    facts.summary = summary.clone();
    facts.state = Some(state.clone());
    event.detail = format!("{summary}; exit {exit}");
    event.facts = to_facts(&facts);
    event
}

/// A log of 500 hosts whose checks name gate states: the complete state
/// and a check yesterday, an unchanged check at 09:00 and, after smars-002
/// drifts, its change and a check at 09:25.
fn stated_morning() -> (Vec<AuditRecord>, Vec<crate::facts::HostFact>) {
    use crate::gate_state::{StateRef, next, written};
    let mut head = ChainHead::after(None);
    let mut all: Vec<AuditRecord> = Vec::new();
    let mut add = |events: Vec<AuditEvent>, at: i64| {
        let (records, next) = seal(&head, events, at);
        head = next;
        all.extend(records.clone());
        records
    };
    let state_event = |s: &crate::gate_state::GateState| AuditEvent {
        role: "smars".into(),
        facts: to_facts(s),
        ..AuditEvent::new("bob (approver)", crate::action::AuditAction::GateState, "gate state")
    };
    let quiet = |h: HostFact| HostFact {
        last_seq: 0,
        measured_at_unix_ms: 0,
        accepted_at_unix_ms: 0,
        ..h
    };
    let mut hosts: std::collections::BTreeMap<String, HostFact> = (0..500)
        .map(|i| format!("smars-{i:03}"))
        .map(|n| (n.clone(), quiet(host(&n, "OPEN", &[]))))
        .collect();
    let complete = next("smars", None, &hosts, 0).unwrap();
    let seq = add(vec![state_event(&complete)], DAY - 10 * 60 * MIN)[0].seq;
    let mut last = written(None, &complete, seq, hosts.clone(), 0);
    let named = |w: &crate::gate_state::Written| StateRef {
        seq: w.seq,
        digest: w.digest.clone(),
    };
    add(
        vec![stated_check("carol (viewer)", 0, 500, 500, &named(&last))],
        DAY - 10 * 60 * MIN,
    );
    add(vec![changed("smars-002", "MISSING", "OPEN", "")], DAY + 8 * 60 * MIN);
    assert!(
        next("smars", Some(&last), &hosts, 0).is_none(),
        "unchanged: nothing to write"
    );
    add(
        vec![stated_check("bob (approver)", 0, 500, 500, &named(&last))],
        DAY + 9 * 60 * MIN,
    );
    add(
        vec![changed("smars-002", "OPEN", "CLOSED", "drift: /opt/smars/bin/router")],
        DAY + 9 * 60 * MIN + 10 * MIN,
    );
    hosts.insert(
        "smars-002".into(),
        quiet(host("smars-002", "CLOSED", &["drift: /opt/smars/bin/router"])),
    );
    let delta = next("smars", Some(&last), &hosts, 0).unwrap();
    assert_eq!((delta.base, delta.hosts.len()), (1, 1), "only the host that changed");
    let seq = add(vec![state_event(&delta)], DAY + 9 * 60 * MIN + 25 * MIN)[0].seq;
    last = written(Some(last), &delta, seq, hosts.clone(), 0);
    add(
        vec![stated_check("bob (approver)", 3, 500, 499, &named(&last))],
        DAY + 9 * 60 * MIN + 25 * MIN,
    );
    (all, hosts.into_values().collect())
}

#[test]
fn a_report_resting_on_gate_states_has_every_host_and_reaches_back_to_the_state() {
    let (records, hosts) = stated_morning();
    // An unchanged check costs a few hundred bytes whatever the fleet's size.
    let unchanged = &records[3];
    assert!(
        unchanged.facts.len() < 600,
        "{} bytes: {}",
        unchanged.facts.len(),
        unchanged.facts
    );
    let delta = &records[5];
    assert!(
        delta.facts.len() < 1_000,
        "a change of one host: {} bytes",
        delta.facts.len()
    );

    let at_0925 = derive(&records, &asked("09:25")).unwrap();
    assert_eq!(at_0925.format, crate::report::FORMAT);
    assert_eq!(at_0925.hosts, hosts);
    assert_eq!((at_0925.open_hosts, at_0925.total_hosts), (499, 500));
    assert_eq!(at_0925.hosts[2].reasons, vec!["drift: /opt/smars/bin/router"]);
    // Yesterday's complete state is where the segment starts.
    assert_eq!((at_0925.segment.first_seq, at_0925.segment.last_seq), (1, 7));
    assert_eq!(at_0925.segment.first_prev_hash, crate::chain::GENESIS);
    // The day's lists hold the day alone.
    assert_eq!(
        at_0925.gate_checks.iter().map(|c| c.exit).collect::<Vec<_>>(),
        vec![0, 3]
    );
    let at_0915 = derive(&records, &asked("09:15")).unwrap();
    assert_eq!(
        (at_0915.open_hosts, at_0915.segment.first_seq, at_0915.segment.last_seq),
        (500, 1, 4)
    );

    let (_d, k) = key();
    let doc = sign(at_0925, &k);
    let text = serde_json::to_string(&doc).unwrap();
    let v = verify(&text, Some(&records), Some(k.public_hex()));
    assert!(v.holds(), "{:?}", v.findings);
    let page = crate::report::html::render(&doc);
    assert!(
        !page.contains("Last accepted attestation"),
        "no per-host attestation in v2"
    );
    assert!(verify(&page, Some(&records), None).holds());
}

#[test]
fn a_gate_state_missing_from_the_export_or_edited_in_it_is_named() {
    let (records, _) = stated_morning();
    let (_d, k) = key();
    let text = serde_json::to_string(&sign(derive(&records, &asked("09:25")).unwrap(), &k)).unwrap();

    // An export of the day alone lacks yesterday's complete state.
    let err = derive(&records[2..], &asked("09:25")).unwrap_err();
    assert!(err.to_string().contains("audit record 1"), "{err}");
    assert!(!verify(&text, Some(&records[2..]), None).holds());

    // smars-002's reason edited in the change: the chain and the state's
    // digest both say so.
    let mut edited = records.clone();
    edited[5].facts = edited[5].facts.replacen("router", "routes", 1);
    let v = verify(&text, Some(&edited), None);
    assert!(
        v.findings.contains(&Finding::BrokenChain {
            seq: 6,
            problem: "its content does not match its hash: it was edited".into()
        }),
        "{:?}",
        v.findings
    );
    let err = derive(&edited, &asked("09:25")).unwrap_err();
    assert!(err.to_string().contains("does not add up"), "{err}");
}

#[test]
fn a_member_given_twice_is_refused_though_the_signature_holds_for_one_reading() {
    let (_d, k) = key();
    let records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let text = serde_json::to_string_pretty(&doc).unwrap();
    // "exit": 0 written before the real "exit": 3: a reader that keeps the
    // last sees a valid signature, one that keeps the first sees exit 0.
    let doubled = text.replacen("\"exit\": 3", "\"exit\": 0,\n      \"exit\": 3", 1);
    assert_ne!(doubled, text);
    let v = verify(&doubled, Some(&records), Some(k.public_hex()));
    assert!(!v.holds());
    assert!(
        matches!(&v.findings[..], [Finding::NotAReport(why)] if why.contains("\"exit\" is given twice")),
        "{:?}",
        v.findings
    );
    // So is a second document after the first.
    let v = verify(&format!("{text}\n{text}"), None, None);
    assert!(
        matches!(&v.findings[..], [Finding::NotAReport(why)] if why.contains("more after the document")),
        "{:?}",
        v.findings
    );
    // And a number not written as the integer it was signed as.
    let fraction = text.replacen("\"exit\": 3", "\"exit\": 3.0", 1);
    assert_ne!(fraction, text);
    let v = verify(&fraction, None, None);
    assert!(
        matches!(&v.findings[..], [Finding::NotAReport(why)] if why.contains("fraction or an exponent")),
        "{:?}",
        v.findings
    );
}

#[test]
fn an_export_line_with_a_member_the_hash_does_not_cover_is_refused() {
    let records = morning();
    let mut lines: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
    assert_eq!(crate::report::parse_export(&lines.join("\n")).unwrap(), records);
    lines[2] = lines[2].replacen('{', "{\"exit\":0,", 1);
    let e = crate::report::parse_export(&lines.join("\n")).unwrap_err();
    assert!(
        e.contains("line 3: the member \"exit\" is not one of the format's"),
        "{e}"
    );
    lines[2] = serde_json::to_string(&records[2])
        .unwrap()
        .replacen("\"seq\":", "\"seq\":1,\"seq\":", 1);
    let e = crate::report::parse_export(&lines.join("\n")).unwrap_err();
    assert!(e.contains("line 3: the member \"seq\" is given twice"), "{e}");
}

#[test]
fn a_broken_record_after_the_segment_is_named_though_the_report_holds_on_its_own() {
    let (_d, k) = key();
    let mut records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let text = serde_json::to_string(&doc).unwrap();
    let (later, _) = seal(
        &ChainHead::after(records.last()),
        vec![
            AuditEvent::new(
                "alice (operator)",
                crate::action::AuditAction::ScanRequested,
                "after the report",
            ),
            AuditEvent::new(
                "alice (operator)",
                crate::action::AuditAction::ScanRequested,
                "later still",
            ),
        ],
        DAY + 11 * 3_600_000,
    );
    records.extend(later);
    assert!(verify(&text, Some(&records), None).holds());
    let last = records.len() - 2;
    records[last].detail = "nothing happened".into();
    let seq = records[last].seq;
    let v = verify(&text, Some(&records), None);
    assert!(!v.holds());
    assert!(
        v.findings.iter().any(
            |f| matches!(f, Finding::BrokenOutside { seq: s, problem } if *s == seq && problem.contains("edited"))
        ),
        "{:?}",
        v.findings
    );
}

#[test]
fn every_differing_fact_is_named_once() {
    let (_d, k) = key();
    let records = morning();
    let mut body = derive(&records, &asked("09:25")).unwrap();
    body.check.exit = 0;
    body.total_hosts += 1;
    body.hosts[0].gate = "CLOSED".into();
    let text = serde_json::to_string(&sign(body, &k)).unwrap();
    let v = verify(&text, Some(&records), Some(k.public_hex()));
    let paths: Vec<&str> = v
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Differs { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        paths,
        vec!["report.check.exit", "report.hosts[0].gate", "report.total_hosts"],
        "{:?}",
        v.findings
    );
}

#[test]
fn records_swapped_in_the_export_are_named_out_of_order_not_missing() {
    let (_d, k) = key();
    let records = morning();
    let doc = sign(derive(&records, &asked("09:25")).unwrap(), &k);
    let text = serde_json::to_string(&doc).unwrap();
    let mut swapped = records.clone();
    swapped.swap(3, 4);
    let v = verify(&text, Some(&swapped), None);
    assert!(
        v.findings.contains(&Finding::OutOfOrder { seq: 4, after: 5 }),
        "{:?}",
        v.findings
    );
    assert!(
        !v.findings.iter().any(|f| matches!(f, Finding::MissingRecord { .. })),
        "{:?}",
        v.findings
    );
}

/// Every report document these tests derive (v2 resting on gate states,
/// v1 listing its hosts) against docs/schema/pre-open-report.schema.json.
#[test]
fn reports_match_the_published_schema() {
    let schema: Value =
        serde_json::from_str(include_str!("../../../../docs/schema/pre-open-report.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let (_d, k) = key();
    let records = morning();
    let (stated, _) = stated_morning();
    let mut formats = std::collections::BTreeSet::new();
    for log in [&records, &stated] {
        for at in ["", "09:25", "09:25:30", "09:25:30.250"] {
            let doc = sign(derive(log, &asked(at)).unwrap(), &k);
            formats.insert(doc.report.format.clone());
            let value = serde_json::to_value(&doc).unwrap();
            let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{at:?}: {errors:?}");
        }
    }
    assert_eq!(formats.len(), 2, "both formats checked: {formats:?}");
    // A member the schema does not know is refused by it.
    let mut extra = serde_json::to_value(sign(derive(&records, &asked("")).unwrap(), &k)).unwrap();
    extra["report"]["exit_code"] = 0.into();
    assert!(!validator.is_valid(&extra));
}
