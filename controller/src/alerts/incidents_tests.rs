#![allow(clippy::unwrap_used)]

use super::*;
use lockstep_proto::pb::Reason;

const G: crate::config::Grouping = crate::config::Grouping {
    wait_ms: 1000,
    max_wait_ms: 10_000,
};

fn closed(host: &str, kind: ReasonKind, release: u64, text: &str) -> Signal {
    let gate = Gate {
        host: host.into(),
        role: "smars".into(),
        state: GateState::Closed as i32,
        release,
        reasons: vec![Reason {
            kind: kind as i32,
            text: text.into(),
        }],
        ..Default::default()
    };
    Signal::Gate {
        host: host.into(),
        role: "smars".into(),
        role_hosts: 8,
        cause: cause_of(&gate),
    }
}

fn open(host: &str) -> Signal {
    Signal::Gate {
        host: host.into(),
        role: "smars".into(),
        role_hosts: 8,
        cause: None,
    }
}

fn rejected(host: &str) -> Signal {
    Signal::Rejected {
        host: host.into(),
        role: "smars".into(),
        role_hosts: 8,
        detail: "signature does not verify".into(),
    }
}

#[test]
fn hosts_with_one_root_cause_are_one_incident() {
    let mut book = Incidents::load(Vec::new());
    for (t, h) in [(0, "smars-03"), (200, "smars-05"), (400, "smars-08")] {
        book.observe(closed(h, ReasonKind::Drift, 2, "drift: /opt/smars/bin/smars"), t);
    }
    assert!(book.due(1000, G).is_empty(), "still inside the grouping wait");
    let due = book.due(1400, G);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].status, Notified::Firing);
    assert_eq!(due[0].record.title(), "release 2 missing on 3 of 8 smars hosts");
    assert_eq!(due[0].record.see(), "lockstep diff smars-03 --release");
    assert!(book.due(100_000, G).is_empty(), "nothing new, nothing sent");
}

#[test]
fn a_repeating_rejection_is_one_alert_with_a_count() {
    let mut book = Incidents::load(Vec::new());
    for t in 0..1000 {
        book.observe(rejected("smars-02"), t);
        // The gate closing on the same cause is not a second occurrence.
        book.observe(
            closed("smars-02", ReasonKind::Rejected, 1, "last attestation rejected"),
            t,
        );
    }
    let due = book.due(3000, G);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].record.count, 1000);
    assert_eq!(due[0].record.hosts.len(), 1);
    for t in 3000..3500 {
        book.observe(rejected("smars-02"), t);
    }
    assert!(book.due(10_000, G).is_empty(), "repeats only raise the count");
    assert_eq!(book.list()[0].count, 1500);
}

#[test]
fn a_storm_that_never_pauses_is_still_reported() {
    let mut book = Incidents::load(Vec::new());
    let mut sent = 0;
    for t in (0..20_000).step_by(100) {
        book.observe(rejected(&format!("smars-{}", t / 100)), t);
        sent += book.due(t, G).len();
    }
    assert!(sent >= 1, "max_wait bounds the delay");
    assert!(sent <= 2, "but it is not a storm: {sent}");
}

#[test]
fn an_incident_stays_listed_until_resolved_and_acknowledged() {
    let mut book = Incidents::load(Vec::new());
    book.observe(closed("smars-01", ReasonKind::Stale, 1, "stale"), 0);
    assert_eq!(book.due(2000, G)[0].status, Notified::Firing);
    let id = book.list()[0].id;
    book.observe(open("smars-01"), 3000);
    let due = book.due(5000, G);
    assert_eq!(due[0].status, Notified::Resolved);
    assert_eq!(book.list().len(), 1, "resolved but unread: still listed");
    let acked = book.ack(id, "alice", 6000).unwrap();
    assert_eq!(acked.acked_by.as_deref(), Some("alice"));
    assert!(book.list().is_empty());
    assert!(
        book.ack(id, "alice", 6000).is_none(),
        "a closed incident cannot be acknowledged"
    );
}

#[test]
fn an_acknowledged_incident_that_is_still_failing_stays_open() {
    let mut book = Incidents::load(Vec::new());
    book.observe(closed("smars-01", ReasonKind::Halted, 0, "halted"), 0);
    book.due(2000, G);
    let id = book.list()[0].id;
    book.ack(id, "alice", 2500).unwrap();
    assert_eq!(book.list().len(), 1);
    book.observe(open("smars-01"), 3000);
    let due = book.due(5000, G);
    assert_eq!(due[0].status, Notified::Resolved);
    assert!(book.list().is_empty(), "resolved and acknowledged: closed");
}

#[test]
fn a_flap_shorter_than_the_wait_sends_nothing() {
    let mut book = Incidents::load(Vec::new());
    book.observe(closed("smars-01", ReasonKind::Missing, 0, "never reported"), 0);
    book.observe(open("smars-01"), 300);
    assert!(book.due(5000, G).is_empty());
    assert!(book.list().is_empty());
}

#[test]
fn a_host_moves_to_its_new_root_cause() {
    let mut book = Incidents::load(Vec::new());
    book.observe(closed("smars-01", ReasonKind::Stale, 1, "stale"), 0);
    book.due(2000, G);
    book.observe(closed("smars-01", ReasonKind::Drift, 1, "drift"), 3000);
    let due = book.due(5000, G);
    let statuses: Vec<(String, Notified)> = due.iter().map(|d| (d.record.key.clone(), d.status)).collect();
    assert!(
        statuses.contains(&("stale:smars".into(), Notified::Resolved)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("drift:smars:release-1".into(), Notified::Firing)),
        "{statuses:?}"
    );
}

#[test]
fn the_book_survives_a_restart() {
    let mut book = Incidents::load(Vec::new());
    book.observe(closed("smars-01", ReasonKind::Stale, 1, "stale"), 0);
    let fired = book.due(2000, G);
    let mut again = Incidents::load(vec![fired[0].record.clone()]);
    assert_eq!(again.list().len(), 1);
    again.observe(open("smars-01"), 3000);
    assert_eq!(again.due(5000, G)[0].status, Notified::Resolved);
    again.observe(closed("smars-02", ReasonKind::Stale, 1, "stale"), 6000);
    assert_eq!(again.list()[0].id, 1, "same cause, not yet acknowledged: reopened");
    again.observe(
        Signal::AuditBroken {
            detail: "record 7".into(),
        },
        7000,
    );
    assert_eq!(again.list()[1].id, 2, "ids continue after the stored ones");
}

#[test]
fn a_lost_siem_collector_is_one_incident_that_resolves_when_it_answers() {
    let mut book = Incidents::load(Vec::new());
    for at in [1_000, 2_000, 3_000] {
        book.observe(
            Signal::SiemUnreachable {
                address: "siem.example:6514".into(),
                detail: "connection refused; records wait in the audit log".into(),
            },
            at,
        );
    }
    let open = book.list();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].key, "siem");
    assert_eq!(open[0].count, 1, "one outage counts once");
    assert!(
        open[0]
            .title()
            .contains("not reaching the SIEM collector at siem.example:6514"),
        "{}",
        open[0].title()
    );
    // The cause is said once: the title names the collector, the detail why.
    assert!(!open[0].title().contains("connection refused"), "{}", open[0].title());
    assert!(!open[0].is_resolved());
    book.observe(Signal::SiemReachable, 4_000);
    assert!(book.list()[0].is_resolved());
    book.observe(
        Signal::SiemUnreachable {
            address: "siem.example:6514".into(),
            detail: "again".into(),
        },
        5_000,
    );
    let again = book.list();
    assert!(!again[0].is_resolved() && again[0].count == 2, "{again:?}");
}

#[test]
fn a_store_filling_up_is_one_incident_that_resolves_when_it_has_room() {
    let mut book = Incidents::load(Vec::new());
    for at in [1_000, 31_000, 61_000] {
        book.observe(
            Signal::StoreFilling {
                detail: "etcd's database is 1434 MiB, 70 % of its 2048 MiB quota".into(),
            },
            at,
        );
    }
    let open = book.list();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!((open[0].key.as_str(), open[0].count), ("store", 1));
    assert!(
        open[0].title().contains("the store is filling up"),
        "{}",
        open[0].title()
    );
    assert_eq!(open[0].see(), "lockstep cluster status");
    book.observe(Signal::StoreRoomy, 91_000);
    assert!(book.list()[0].is_resolved());
}
