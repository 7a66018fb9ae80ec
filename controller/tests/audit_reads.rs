//! Reading the audit log page by page: a day found by seq, the chain
//! checked a page at a time and from where the last check ended, `audit`
//! answers bounded and paged. Real sled, the controller library, no
//! network; logs several pages long.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_controller::queries::{AUDIT_REPLY_MAX, list_audit};
use lockstep_controller::store::Store;
use lockstep_controller::store::audit_reads::{self, PAGE};
use lockstep_controller::store::sled::SledStore;
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::{AuditEvent, ChainCheck, ChainHead, seal};
use lockstep_proto::pb;

const HOUR: i64 = 3_600_000;

/// `n` records, record i sealed at `at(i)`, host "h-{i % 7}".
fn log(store: &SledStore, n: u64, at: impl Fn(u64) -> i64) {
    let mut head = ChainHead::after(store.last_audit().unwrap().as_ref());
    for i in 0..n {
        let event = AuditEvent {
            host: format!("h-{}", i % 7),
            ..AuditEvent::new("alice (operator)", AuditAction::Halt, format!("event {i}"))
        };
        let (records, next) = seal(&head, vec![event], at(i));
        store.put_audit(&records[0]).unwrap();
        head = next;
    }
    store.flush().unwrap();
}

fn all(store: &SledStore) -> Vec<lockstep_evidence::chain::AuditRecord> {
    store.audit_page(0, usize::MAX).unwrap()
}

#[test]
fn a_day_is_found_by_seq_and_holds_exactly_the_day_s_records() {
    let d = tempfile::tempdir().unwrap();
    let store = SledStore::open(&d.path().join("store")).unwrap();
    // Five days, a record every 7 minutes, with a clock stepped back an
    // hour on day 3 (the ledger seals no record before the one before it).
    log(&store, 5 * 24 * 60 / 7, |i| {
        let t = i64::try_from(i).unwrap() * 7 * 60_000;
        if (2 * 24 * HOUR..2 * 24 * HOUR + HOUR).contains(&t) {
            t - HOUR
        } else {
            t
        }
    });
    let records = all(&store);
    assert!(records.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms));
    for (from, until) in [
        (0, 24 * HOUR - 1),
        (24 * HOUR, 48 * HOUR - 1),
        (2 * 24 * HOUR, 2 * 24 * HOUR + 9 * HOUR + 25 * 60_000),
        (4 * 24 * HOUR + 3, 9 * 24 * HOUR),
        (10 * 24 * HOUR, 11 * 24 * HOUR),
    ] {
        let expected: Vec<_> = records
            .iter()
            .filter(|r| r.at_unix_ms >= from && r.at_unix_ms <= until)
            .cloned()
            .collect();
        let found = audit_reads::sealed_between(&store, from, until).unwrap();
        assert_eq!(found, expected, "the records from {from} to {until}");
    }
    assert_eq!(audit_reads::first_sealed_at_or_after(&store, i64::MAX).unwrap(), None);
    assert_eq!(audit_reads::first_sealed_at_or_after(&store, -1).unwrap(), Some(1));
}

#[test]
fn the_chain_is_checked_a_page_at_a_time_and_a_later_check_goes_on_from_the_last() {
    let d = tempfile::tempdir().unwrap();
    let store = SledStore::open(&d.path().join("store")).unwrap();
    let n = 3 * PAGE as u64 + 17;
    log(&store, n, |i| i64::try_from(i).unwrap());
    let mut check = ChainCheck::from_start();
    assert_eq!(audit_reads::verify(&store, &mut check).unwrap(), Ok(()));
    assert_eq!((check.checked(), check.head().next_seq), (n, n + 1));

    // New records: the next check looks at them alone.
    log(&store, 5, |_| 10_000_000);
    let mut later = check.clone();
    assert_eq!(audit_reads::verify(&store, &mut later).unwrap(), Ok(()));
    assert_eq!(later.checked() - check.checked(), 5);

    // An edit far back, two pages in, is named by a check from the start.
    let mut edited = store.audit_page(2 * PAGE as u64 + 3, 1).unwrap().remove(0);
    edited.detail = "nothing happened".into();
    store.put_audit(&edited).unwrap();
    let broken = audit_reads::verify(&store, &mut ChainCheck::from_start())
        .unwrap()
        .unwrap_err();
    assert_eq!(broken.seq, 2 * PAGE as u64 + 3);
    assert!(broken.problem.contains("edited"), "{}", broken.problem);
}

#[test]
fn audit_answers_are_bounded_and_page_through_the_whole_log() {
    let d = tempfile::tempdir().unwrap();
    let store = SledStore::open(&d.path().join("store")).unwrap();
    let n = 2 * AUDIT_REPLY_MAX as u64 + 123;
    log(&store, n, |i| i64::try_from(i).unwrap() * 1_000);
    let archive = d.path().join("audit-archive");

    // Paging forwards from the start reaches every record once, in order.
    let mut req = pb::ListAuditRequest::default();
    let mut seen = Vec::new();
    let mut answers = 0;
    loop {
        let list = list_audit(&store, &archive, &req).unwrap();
        answers += 1;
        assert!(list.records.len() <= AUDIT_REPLY_MAX);
        seen.extend(list.records.iter().map(|r| r.seq));
        if !list.more {
            break;
        }
        req.after_seq = list.next_after_seq;
    }
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    assert_eq!(answers, 3);

    // The newest N of one host, oldest first.
    let newest = list_audit(
        &store,
        &archive,
        &pb::ListAuditRequest {
            host: "h-3".into(),
            limit: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let mut expected: Vec<u64> = (1..=n).rev().filter(|s| (s - 1) % 7 == 3).take(10).collect();
    expected.reverse();
    assert_eq!(newest.records.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
    assert_eq!(newest.next_after_seq, n, "following goes on from the head");

    // Since a time: the first match is the first record sealed then.
    let since = list_audit(
        &store,
        &archive,
        &pb::ListAuditRequest {
            since_unix_ms: 7_000_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(since.records.first().map(|r| r.seq), Some(7_001));
    assert!(since.records.iter().all(|r| r.at_unix_ms >= 7_000_000));
}
