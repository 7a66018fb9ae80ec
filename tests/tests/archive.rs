//! Archiving the audit log survives `kill -9` at its two dangerous points,
//! with real controller processes on sled and on a 3-member etcd cluster:
//! between the archive file's fsync and the store's delete, and between
//! the delete and its `audit.archived` record. The controller restarted on
//! the same store finishes the work: no record is lost, none is in neither
//! place, the archive verifies offline and links to the live log.
//! Segments are seconds long here (`[audit] segment = "2s"`) so that a
//! test sees several close and go.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::{AuditRecord, ChainCheck};
use lockstep_link::failover::FailoverChannel;
use lockstep_proto::pb;
use lockstep_proto::pb::console_service_client::ConsoleServiceClient;
use lockstep_tests::fleet::ha::{HaFleet, HaSpec};
use lockstep_tests::fleet::process::{ProcFleet, ProcSpec};

type Console = ConsoleServiceClient<FailoverChannel>;

const AUDIT: &str = "[audit]\nsegment = \"2s\"\nkeep_online = \"1s\"\n";

/// Every record the controller answers for, archived or not, in order.
async fn export(console: &Console) -> Vec<AuditRecord> {
    let mut console = console.clone();
    let mut req = pb::ListAuditRequest::default();
    let mut out = Vec::new();
    loop {
        let list = console.list_audit(req.clone()).await.unwrap().into_inner();
        out.extend(list.records.iter().map(AuditRecord::from_pb));
        if !list.more {
            return out;
        }
        req.after_seq = list.next_after_seq;
    }
}

async fn verified(console: &Console) -> pb::VerifyAuditReply {
    let mut console = console.clone();
    console
        .verify_audit(pb::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Gate checks (each an audit record) until `done` holds or `within` passes.
async fn checks_until<F, Fut>(console: &Console, what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    let mut console = console.clone();
    loop {
        let _ = console.gate_check(pb::GateCheckRequest { role: "smars".into() }).await;
        if done().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn archive_dir(fleet: &ProcFleet) -> std::path::PathBuf {
    fleet.data_dir.join("audit-archive")
}

async fn killed_mid_archive_loses_nothing(etcd: bool, pause: &str) {
    let mut fleet = ProcFleet::start(ProcSpec {
        extra_toml: AUDIT.into(),
        etcd,
        ..ProcSpec::smars(vec!["smars-01".into()])
    })
    .await
    .unwrap();
    // Restart under the hook: the first archiving stops at `pause`.
    fleet.kill_controller().unwrap();
    fleet
        .start_controller_with(&[("LOCKSTEP_TEST_ARCHIVE_PAUSE", pause)])
        .await
        .unwrap();
    if etcd {
        fleet.wait_leading(Duration::from_secs(30)).await.unwrap();
    }
    let dir = archive_dir(&fleet);
    let console = fleet.console(&fleet.alice).unwrap();
    let file_written = || {
        let dir = dir.clone();
        async move { !lockstep_evidence::archive::list(&dir).unwrap().is_empty() }
    };
    if pause == "after-fsync" {
        checks_until(
            &console,
            "the first segment file written",
            Duration::from_secs(60),
            file_written,
        )
        .await;
    } else {
        dropped(&console).await;
    }
    // Every record acknowledged before the kill.
    let before = export(&console).await;
    let last_before = before.last().unwrap().seq;
    fleet.kill_controller().unwrap();

    let files = lockstep_evidence::archive::list(&dir).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let first_file = files[0].name();

    fleet.start_controller().await.unwrap();
    if etcd {
        fleet.wait_leading(Duration::from_secs(30)).await.unwrap();
    }
    // The restarted controller finishes the interrupted segment and goes on.
    let console = fleet.console(&fleet.alice).unwrap();
    finished(&console, &first_file, 2).await;
    nothing_lost(&console, &before, last_before, &first_file).await;

    // The archive verifies offline, and the live log follows it.
    let (code, text) = fleet
        .lockstep(
            &fleet.alice,
            &["audit", "verify", "--archive", &dir.display().to_string()],
        )
        .unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("intact") && text.contains("follows the archive's last"),
        "{text}"
    );
    let live = verified(&console).await;
    assert!(live.ok && live.archived_through > 0, "{live:?}");
}

/// Gate checks until the store has dropped a first segment.
async fn dropped(console: &Console) {
    checks_until(
        console,
        "the first segment dropped from the store",
        Duration::from_secs(60),
        || async move { verified(console).await.archived_through > 0 },
    )
    .await;
}

/// Gate checks until `file` is recorded as archived, among `at_least` files.
async fn finished(console: &Console, file: &str, at_least: usize) {
    checks_until(
        console,
        "the interrupted segment recorded as archived",
        Duration::from_secs(60),
        || async move {
            let records = export(console).await;
            let archived: Vec<_> = records
                .iter()
                .filter(|r| AuditAction::AuditArchived.is(&r.action))
                .collect();
            archived.iter().any(|r| r.detail.contains(file)) && archived.len() >= at_least
        },
    )
    .await;
}

/// The log read as one is whole from the first record, holds every record
/// acknowledged before the kill unchanged, and verifies; the interrupted
/// file is recorded once (the work was finished, not doubled).
async fn nothing_lost(console: &Console, before: &[AuditRecord], last_before: u64, first_file: &str) {
    let all = export(console).await;
    assert!(all.len() as u64 >= last_before);
    assert_eq!(all.last().unwrap().seq, all.len() as u64);
    let mut check = ChainCheck::from_start();
    for r in &all {
        check.next(r).unwrap_or_else(|b| panic!("{b}"));
    }
    for (old, now) in before.iter().zip(&all) {
        assert_eq!(old, now, "record {} changed across the kill", old.seq);
    }
    let recorded = all
        .iter()
        .filter(|r| AuditAction::AuditArchived.is(&r.action) && r.detail.contains(first_file))
        .count();
    assert_eq!(recorded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_killed_between_the_archive_fsync_and_the_delete_loses_nothing() {
    killed_mid_archive_loses_nothing(false, "after-fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_killed_between_the_delete_and_its_audit_record_loses_nothing() {
    killed_mid_archive_loses_nothing(false, "after-delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_between_the_archive_fsync_and_the_delete_loses_nothing() {
    killed_mid_archive_loses_nothing(true, "after-fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_between_the_delete_and_its_audit_record_loses_nothing() {
    killed_mid_archive_loses_nothing(true, "after-delete").await;
}

/// On etcd with a shared archive directory: the leader killed between its
/// delete and the audit record is replaced, and the new leader finishes
/// the record (and goes on archiving) from the mark in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_archive_is_replaced_and_the_new_leader_finishes_it() {
    let archive = tempfile::tempdir().unwrap();
    let mut fleet = HaFleet::start(HaSpec {
        audit_toml: format!("{AUDIT}archive_dir = \"{}\"\n", archive.path().display()),
        env: vec![("LOCKSTEP_TEST_ARCHIVE_PAUSE".into(), "after-delete".into())],
        ..HaSpec::three(vec!["smars-01".into()], Duration::from_secs(30), 2)
    })
    .await
    .unwrap();
    let (leader, _) = fleet.wait_leader(None, Duration::from_secs(60)).await.unwrap();
    let console = fleet.console(&fleet.alice).await.unwrap();
    dropped(&console).await;
    let before = export(&console).await;
    let last_before = before.last().unwrap().seq;
    let files = lockstep_evidence::archive::list(archive.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let first_file = files[0].name();

    fleet.kill_controller(leader);
    fleet.wait_leader(Some(leader), Duration::from_secs(60)).await.unwrap();
    let console = fleet.console(&fleet.alice).await.unwrap();
    finished(&console, &first_file, 1).await;
    nothing_lost(&console, &before, last_before, &first_file).await;
    let verdict = lockstep_evidence::archive::verify_dir(archive.path(), None, true).unwrap();
    assert!(verdict.segments >= 1);
    assert!(verified(&console).await.ok);
}

/// The per-host index on etcd, as on sled: a host's records newest first,
/// and what was archived leaves the index with its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_indexes_a_hosts_records_and_drops_them_with_their_segment() {
    use lockstep_controller::store::etcd::Etcd;
    use lockstep_controller::store::etcd::store::{EtcdStore, Fence};
    use lockstep_controller::store::{ArchiveMark, Store};
    use lockstep_evidence::chain::{AuditEvent, ChainHead, seal};

    let dir = tempfile::tempdir().unwrap();
    let cluster = lockstep_tests::etcd_cluster::EtcdCluster::start(dir.path()).unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    let client = cluster.client_identity("ctl-0").unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[store.etcd]\nendpoints = {:?}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[[role]]\nname = \"smars\"\nhosts = [\"smars-01\"]\n",
        dir.path().display(),
        cluster.endpoints(),
        client.ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let config =
        lockstep_controller::config::ControllerConfig::parse(&text, std::path::Path::new("controller.toml")).unwrap();
    let lockstep_controller::config::Backend::Etcd(settings) = config.backend else {
        panic!("configured on etcd")
    };
    tokio::task::spawn_blocking(move || {
        let etcd = Arc::new(Etcd::connect(&settings).unwrap());
        let store = EtcdStore::new(etcd, Fence::NoLeader);
        let events = (0..10)
            .map(|i| AuditEvent {
                host: ["smars-01", "smars-011", "smars-02"][i % 3].into(),
                ..AuditEvent::new("controller", AuditAction::GateChanged, "")
            })
            .collect();
        let (records, _) = seal(&ChainHead::after(None), events, 1);
        records.iter().for_each(|r| store.put_audit(r).unwrap());
        store.flush().unwrap();
        assert_eq!(
            store.host_audit_seqs("smars-01", u64::MAX, 10).unwrap(),
            vec![10, 7, 4, 1]
        );
        assert_eq!(store.host_audit_seqs("smars-01", 7, 10).unwrap(), vec![4, 1]);
        assert_eq!(store.host_audit_seqs("smars-011", u64::MAX, 1).unwrap(), vec![8]);
        store
            .drop_archived(&ArchiveMark {
                through_seq: 4,
                through_hash: records[3].hash.clone(),
                through_at_unix_ms: 1,
                file: "f".into(),
                file_sha256: String::new(),
                recorded: false,
            })
            .unwrap();
        assert_eq!(store.host_audit_seqs("smars-01", u64::MAX, 10).unwrap(), vec![10, 7]);
        assert_eq!(store.audit_page(0, 100).unwrap()[0].seq, 5);
        assert_eq!(store.archive_mark().unwrap().unwrap().through_seq, 4);
    })
    .await
    .unwrap();
}
