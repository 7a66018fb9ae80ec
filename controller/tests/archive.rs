//! The audit log over time: segments close at each day's end with a signed
//! checkpoint, segments older than `keep_online` move to the archive and
//! leave the store, and the log still reads, verifies and reports as one,
//! across segments, the archive and the store. Real sled, real files, the
//! controller library with a clock the test moves a day at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use lockstep_controller::archive::Archivist;
use lockstep_controller::audit::operator::Operator;
use lockstep_controller::config::ControllerConfig;
use lockstep_controller::controller::Controller;
use lockstep_controller::queries;
use lockstep_controller::store::audit_reads;
use lockstep_controller::store::sled::SledStore;
use lockstep_daemon::clock::Clock;
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::{AuditEvent, AuditRecord, ChainCheck};
use lockstep_evidence::report::key::ReportKey;
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb;

const DAY: i64 = 24 * 3600 * 1000;
/// 2026-03-02T06:00:00Z.
const START: i64 = 1_772_431_200_000;

struct MovedClock(AtomicI64);

impl Clock for MovedClock {
    fn now_unix_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Fleet {
    controller: Arc<Controller>,
    clock: Arc<MovedClock>,
    archivist: Archivist,
    key: Arc<ReportKey>,
}

fn config(dir: &Path) -> ControllerConfig {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[audit]\nsegment = \"1d\"\nkeep_online = \"2d\"\n[[role]]\nname = \"smars\"\nhosts = [\"smars-01\", \"smars-02\", \"smars-03\"]\n",
        dir.display()
    );
    ControllerConfig::parse(&text, Path::new("controller.toml")).unwrap()
}

fn open(dir: &Path, at: i64) -> Fleet {
    let config = config(dir);
    let key_path = lockstep_controller::report::ReportIssuer::key_path(&config);
    let key = Arc::new(lockstep_controller::report::open_or_create_key(&key_path).unwrap());
    let clock = Arc::new(MovedClock(AtomicI64::new(at)));
    let store = Arc::new(SledStore::open(&dir.join("store")).unwrap());
    let controller = Arc::new(Controller::with_clock(config, store, clock.clone()).unwrap());
    let archivist = Archivist::new(controller.config.clone(), controller.ledger.clone(), key.clone());
    Fleet {
        controller,
        clock,
        archivist,
        key,
    }
}

fn carol() -> Operator {
    Operator {
        name: "carol".into(),
        role: OperatorRole::Viewer,
    }
}

/// A day's work: a recorded gate check and some operator records.
async fn a_day(f: &Fleet, day: i64) {
    f.controller
        .queries
        .gate_check_recorded(&carol(), "smars", &[])
        .await
        .unwrap();
    let events = (0..40)
        .map(|i| AuditEvent {
            host: format!("smars-0{}", 1 + i % 3),
            ..AuditEvent::new(
                "alice (operator)",
                AuditAction::ScanRequested,
                format!("day {day} scan {i}"),
            )
        })
        .collect();
    f.controller.ledger.record(events).await.unwrap();
}

/// Every record, read as one log through the console's own paging.
fn export(f: &Fleet) -> Vec<AuditRecord> {
    let (store, dir) = (f.controller.ledger.store(), &f.controller.config.audit.archive_dir);
    let mut req = pb::ListAuditRequest::default();
    let mut out = Vec::new();
    loop {
        let list = queries::list_audit(store, dir, &req).unwrap();
        out.extend(list.records.iter().map(AuditRecord::from_pb));
        if !list.more {
            return out;
        }
        req.after_seq = list.next_after_seq;
    }
}

fn date(at: i64) -> String {
    jiff::Timestamp::from_millisecond(at)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_close_as_signed_segments_old_ones_move_to_the_archive_and_the_log_still_verifies_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let f = open(d.path(), START);
    for day in 0..6 {
        f.clock.0.store(START + day * DAY, Ordering::SeqCst);
        let round = f.archivist.round().await.unwrap();
        if day > 0 {
            assert!(round.closed.is_some(), "day {day}: yesterday's segment closes");
        }
        a_day(&f, day).await;
        // A second round the same day closes nothing more.
        assert_eq!(f.archivist.round().await.unwrap().closed, None);
    }
    f.clock.0.store(START + 6 * DAY, Ordering::SeqCst);
    f.archivist.round().await.unwrap();

    // Days 0 to 3 are archived (their checkpoints older than 2 days), and
    // gone from the store.
    let archive_dir = f.controller.config.audit.archive_dir.clone();
    let files = lockstep_evidence::archive::list(&archive_dir).unwrap();
    assert_eq!(files.len(), 4, "{files:?}");
    let store = f.controller.ledger.store();
    let mark = store.archive_mark().unwrap().unwrap();
    assert!(mark.recorded);
    assert_eq!(mark.through_seq, files[3].last_seq);
    let first_kept = audit_reads::at_or_after(store, 0).unwrap().unwrap();
    assert_eq!(first_kept.seq, mark.through_seq + 1);
    assert_eq!(first_kept.prev_hash, mark.through_hash);

    // A host's history comes from the per-host index, newest first, and
    // the index holds the online window only.
    let head = store.last_audit().unwrap().unwrap().seq;
    let history = audit_reads::host_tail(store, "smars-02", head, 20).unwrap();
    assert_eq!(history.len(), 20);
    assert!(history.iter().all(|r| r.host == "smars-02"));
    assert!(history.windows(2).all(|w| w[0].seq > w[1].seq));
    assert!(history[0].detail.starts_with("day 5 "), "{}", history[0].detail);
    let indexed = store.host_audit_seqs("smars-02", u64::MAX, 10_000).unwrap();
    assert_eq!(indexed.len(), 2 * 13, "days 4 and 5, 13 records each");
    assert!(indexed.iter().all(|&seq| seq > mark.through_seq));

    // The archive verifies offline with the pinned key, and links to the store.
    let verdict = lockstep_evidence::archive::verify_dir(&archive_dir, Some(f.key.public_hex()), true).unwrap();
    assert_eq!(verdict.segments, 4);
    assert_eq!(verdict.head.unwrap(), mark.head());
    // The store's log verifies from the mark.
    let live = queries::verify_audit(store).unwrap();
    assert!(live.ok, "{}", live.problem);
    assert_eq!(live.archived_through, mark.through_seq);
    assert_eq!(live.archive_file, files[3].name());

    // Read as one, the log is whole from the first record and verifies end to end.
    let all = export(&f);
    let head = store.last_audit().unwrap().unwrap().seq;
    assert_eq!(all.len() as u64, head);
    let mut check = ChainCheck::from_start();
    all.iter().for_each(|r| check.next(r).unwrap());
    let archived: Vec<_> = all
        .iter()
        .filter(|r| AuditAction::AuditArchived.is(&r.action))
        .collect();
    assert_eq!(archived.len(), 4, "one audit.archived record per file");

    // A pre-open report of an archived day verifies against the export.
    let day1 = date(START + DAY);
    let reply = f
        .controller
        .reports
        .pre_open(
            &carol(),
            pb::PreOpenReportRequest {
                role: "smars".into(),
                date: day1.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let verdict = lockstep_evidence::report::verify::verify(&reply.json, Some(&all), Some(f.key.public_hex()));
    assert!(verdict.holds(), "{:?}", verdict.findings);
    assert_eq!(verdict.doc.unwrap().report.date, day1);

    // `audit --since` a day that was archived starts in the archive.
    let since = queries::list_audit(
        store,
        &archive_dir,
        &pb::ListAuditRequest {
            since_unix_ms: START + 2 * DAY,
            limit: 0,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(since.records[0].at_unix_ms >= START + 2 * DAY);
    assert!(since.records[0].seq <= mark.through_seq, "day 2 is archived");
    let before = all.iter().find(|r| r.seq == since.records[0].seq - 1).unwrap();
    assert!(before.at_unix_ms < START + 2 * DAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_verifies_from_its_last_checkpoint_and_archives_on() {
    let d = tempfile::tempdir().unwrap();
    {
        let f = open(d.path(), START);
        for day in 0..4 {
            f.clock.0.store(START + day * DAY, Ordering::SeqCst);
            f.archivist.round().await.unwrap();
            a_day(&f, day).await;
        }
    }
    let f = open(d.path(), START + 4 * DAY);
    let store = f.controller.ledger.store();
    // The periodic check after a start begins at the newest checkpoint:
    // at most a segment back, not the first record.
    let start = lockstep_controller::archive::verification_start(store).unwrap();
    let head = store.last_audit().unwrap().unwrap().seq;
    assert!(start.head().next_seq > head - 60, "{:?}", start.head());
    let at = audit_reads::at_or_after(store, start.head().next_seq).unwrap().unwrap();
    assert!(AuditAction::AuditCheckpoint.is(&at.action));

    let round = f.archivist.round().await.unwrap();
    assert!(round.closed.is_some());
    // Day 0 was archived before the restart (on day 3); day 1 now.
    assert_eq!(round.archived.len(), 1, "{round:?}");
    assert!(
        !round.archived[0].starts_with("audit-00000000000000000001-"),
        "{round:?}"
    );
    let verdict = lockstep_evidence::archive::verify_dir(&f.controller.config.audit.archive_dir, None, true).unwrap();
    assert_eq!(verdict.head.unwrap(), store.archive_mark().unwrap().unwrap().head());
    assert!(queries::verify_audit(store).unwrap().ok);
}
