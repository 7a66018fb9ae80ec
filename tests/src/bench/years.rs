//! Years of a fleet's audit log with the archive at work: the log grown a
//! day at a time (a recorded `gate check` and a heartbeat count a minute,
//! a complete gate state a day, as in [`super::age`]), after each day the
//! controller's own archiving round with its clock at the day's end (the
//! day's segment closed with a signed checkpoint, segments past
//! `keep_online` = 14 days written to the archive and dropped from the
//! store), and at each size asked: what the store holds and weighs (and the
//! most it weighed on any day so far), then a restart, the periodic
//! verification, `audit verify`, pre-open reports of the last day and of
//! the first (archived) day, a gate check and the audit tail, each timed, in
//! a fresh process. On sled or on a 3-member etcd cluster (Debian's
//! etcd-server, 1 GiB quota: half of etcd's default; its history compacted
//! after each simulated day, as hourly periodic compaction would have).

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_controller::archive::Archivist;
use lockstep_controller::audit::operator::Operator;
use lockstep_controller::config::{Backend, ControllerConfig};
use lockstep_controller::controller::Controller;
use lockstep_controller::ledger::Ledger;
use lockstep_controller::queries;
use lockstep_controller::store::etcd::Etcd;
use lockstep_controller::store::etcd::store::{EtcdStore, Fence};
use lockstep_controller::store::sled::SledStore;
use lockstep_controller::store::{Store, audit_reads};
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb;

use super::age::{DAY_MS, RECORD_EVERY_MS, grow, peak_mib_and_reset, status_kib};

/// One size of the log, with the archive at work.
#[derive(Debug, Clone, Default)]
pub struct YearsRow {
    /// Records sealed since the start (the log's head).
    pub records: u64,
    pub days: u64,
    /// Records the store holds (the online window).
    pub store_records: u64,
    pub store_bytes: u64,
    /// The largest the store was after any day so far.
    pub max_store_bytes: u64,
    pub archive_bytes: u64,
    /// The slowest daily archiving round so far (closing a segment, archiving one).
    pub slowest_round: Duration,
    /// Opening the store and the controller (a restart; what a new leader does after winning).
    pub restart: Duration,
    /// The periodic check's first round after a start (from the last checkpoint).
    pub periodic_verify: Duration,
    pub periodic_peak_mib: f64,
    /// `audit verify`: the store's whole log, from the archive's end.
    pub audit_verify: Duration,
    pub audit_verify_peak_mib: f64,
    /// Pre-open report of the log's last day.
    pub report: Duration,
    /// Pre-open report of the first day (from the archive once archived).
    pub report_archived: Duration,
    /// The last day's report as the console receives it (JSON and page).
    pub report_bytes: u64,
    pub report_peak_mib: f64,
    pub gate_check: Duration,
    /// The slowest of the gate checks run back to back while `audit verify` ran, and how many.
    pub during_verify: Duration,
    pub checks_during_verify: u64,
    pub audit_tail: Duration,
    /// The board's host page reads for a host with records of its own
    /// (its gate, its diff against the release, its last 20 records).
    pub host_page: Duration,
    pub rest_mib: f64,
    /// RSS once every read above has run: what the reads left behind.
    pub after_mib: f64,
}

fn config_text(dir: &Path, hosts: usize, store_toml: &str) -> String {
    let names: Vec<String> = (0..hosts).map(|i| format!("\"smars-{i:05}\"")).collect();
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[audit]\nsegment = \"1d\"\nkeep_online = \"14d\"\n{store_toml}[[role]]\nname = \"smars\"\nhosts = [{}]\n",
        dir.display(),
        names.join(", ")
    )
}

fn open_store(config: &ControllerConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.backend {
        Backend::Sled => Arc::new(SledStore::open_with_cache(
            &config.data_dir.join("store"),
            config.store.sled_cache_bytes,
        )?),
        Backend::Etcd(settings) => Arc::new(EtcdStore::new(Arc::new(Etcd::connect(settings)?), Fence::NoLeader)),
    })
}

fn load(dir: &Path) -> anyhow::Result<ControllerConfig> {
    Ok(ControllerConfig::load(&dir.join("controller.toml"))?)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Grows one log through `sizes` (ascending), archiving as it goes, for a
/// role of `hosts`; on etcd when `etcd`. Each size measured in a child
/// process (`--years-child DIR`) when `in_child`.
pub async fn years(sizes: &[u64], hosts: usize, etcd: bool, in_child: bool) -> anyhow::Result<Vec<YearsRow>> {
    let dir = tempfile::tempdir()?;
    let cluster = if etcd {
        let cluster = crate::etcd_cluster::EtcdCluster::start(dir.path())?;
        cluster.wait_healthy(Duration::from_secs(30))?;
        Some(cluster)
    } else {
        None
    };
    let store_toml = match &cluster {
        // A sled setting to compare, e.g. "[store]\ncache_mib = 1024".
        None => std::env::var("LOCKSTEP_BENCH_STORE_TOML").unwrap_or_default(),
        // etcd's max_txn_ops left at the controllers' default (128): with
        // 1024 the grown days went to etcd as 1.2 MB raft entries, and
        // etcd 3.4 keeps at least 5,000 entries in memory.
        Some(c) => {
            let client = c.client_identity("bench")?;
            format!(
                "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = {:?}\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nquota_mib = 1024\n",
                c.endpoints(),
                client.ca.display(),
                client.cert.display(),
                client.key.display()
            )
        }
    };
    let data = dir.path().join("controller");
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("controller.toml"), config_text(&data, hosts, &store_toml))?;
    let config = Arc::new(load(&data)?);
    let key_path = lockstep_controller::report::ReportIssuer::key_path(&config);
    let key = Arc::new(lockstep_controller::report::open_or_create_key(&key_path)?);
    // Day 0 starts at a UTC midnight, far enough back for the largest size.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let now = lockstep_proto::now_unix_ms();
    let start_ms = (now - i64::try_from(largest)? * RECORD_EVERY_MS - 30 * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
    let per_day = u64::try_from(DAY_MS / RECORD_EVERY_MS)?;

    let mut rows = Vec::new();
    let (mut max_store, mut slowest, mut days) = (0u64, Duration::ZERO, 0u64);
    for &size in sizes {
        // Opened for the growing only: the measuring child opens it again (sled's lock).
        let store = open_store(&config)?;
        loop {
            let head = store.last_audit().context("the log's head")?.map_or(0, |r| r.seq);
            if head >= size {
                break;
            }
            let s = store.clone();
            tokio::task::spawn_blocking(move || grow(s.as_ref(), head + per_day, start_ms, hosts))
                .await?
                .with_context(|| format!("growing day {days}"))?;
            days += 1;
            // The day's end on the controller's clock, and its archiving round.
            let last_at = store
                .last_audit()
                .context("the day's last record")?
                .map_or(start_ms, |r| r.at_unix_ms);
            let clock = lockstep_daemon::clock::TokioClock::starting_at(last_at + 60_000).shared();
            let ledger = Arc::new(
                Ledger::open(config.clone(), store.clone(), clock, Box::new(|_| {}))
                    .with_context(|| format!("opening the ledger after day {days}"))?,
            );
            let archivist = Archivist::new(config.clone(), ledger, key.clone());
            let started = Instant::now();
            archivist
                .round()
                .await
                .map_err(|e| anyhow::anyhow!("archiving round after day {days}: {e}"))?;
            slowest = slowest.max(started.elapsed());
            max_store = max_store.max(store.size().context("the store's size")?.bytes);
            // A simulated day is far longer than etcd's periodic compaction
            // (docs/ha.md: hourly); it runs here as it would have by then.
            if let Some(c) = &cluster {
                c.compact_now()
                    .with_context(|| format!("compacting etcd after day {days}"))?;
            }
        }
        drop(store);
        let mut row = if in_child {
            let out = std::process::Command::new(std::env::current_exe()?)
                .arg("--years-child")
                .arg(&data)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "the measuring child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Measured>(&out.stdout)?.into_row()
        } else {
            measure(&data).await?.into_row()
        };
        row.days = days;
        row.max_store_bytes = max_store.max(row.store_bytes);
        row.archive_bytes = dir_bytes(&config.audit.archive_dir);
        row.slowest_round = slowest;
        rows.push(row);
    }
    drop(cluster);
    Ok(rows)
}

/// What the child measures, as it prints it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    records: u64,
    store_records: u64,
    store_bytes: u64,
    restart_s: f64,
    periodic_verify_s: f64,
    periodic_peak_mib: f64,
    audit_verify_s: f64,
    audit_verify_peak_mib: f64,
    report_s: f64,
    report_archived_s: f64,
    report_bytes: u64,
    report_peak_mib: f64,
    gate_check_s: f64,
    during_verify_s: f64,
    checks_during_verify: u64,
    audit_tail_s: f64,
    host_page_s: f64,
    rest_mib: f64,
    after_mib: f64,
}

impl Measured {
    fn into_row(self) -> YearsRow {
        let d = Duration::from_secs_f64;
        YearsRow {
            records: self.records,
            store_records: self.store_records,
            store_bytes: self.store_bytes,
            restart: d(self.restart_s),
            periodic_verify: d(self.periodic_verify_s),
            periodic_peak_mib: self.periodic_peak_mib,
            audit_verify: d(self.audit_verify_s),
            audit_verify_peak_mib: self.audit_verify_peak_mib,
            report: d(self.report_s),
            report_archived: d(self.report_archived_s),
            report_bytes: self.report_bytes,
            report_peak_mib: self.report_peak_mib,
            gate_check: d(self.gate_check_s),
            during_verify: d(self.during_verify_s),
            checks_during_verify: self.checks_during_verify,
            audit_tail: d(self.audit_tail_s),
            host_page: d(self.host_page_s),
            rest_mib: self.rest_mib,
            after_mib: self.after_mib,
            ..YearsRow::default()
        }
    }
}

/// The `--years-child DIR` side: measures once and prints JSON.
pub async fn child(dir: &Path) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&measure(dir).await?)?);
    Ok(())
}

fn day_of(at: i64) -> anyhow::Result<String> {
    Ok(jiff::Timestamp::from_millisecond(at)?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string())
}

async fn measure(dir: &Path) -> anyhow::Result<Measured> {
    let config = load(dir)?;
    let carol = Operator {
        name: "carol".into(),
        role: OperatorRole::Viewer,
    };
    let started = Instant::now();
    let store = open_store(&config)?;
    let last = store.last_audit()?.ok_or_else(|| anyhow::anyhow!("an empty log"))?;
    let clock = lockstep_daemon::clock::TokioClock::starting_at(last.at_unix_ms + 1_000).shared();
    let c = Controller::with_clock(config.clone(), store.clone(), clock)?;
    let restart = started.elapsed();
    let rest_mib = status_kib("VmRSS:") / 1024.0;
    let store_bytes = store.size()?.bytes;

    // Each read's peak is measured above the RSS just before it, so what
    // one read leaves behind (sled's cache, the allocator's free lists) is
    // not counted again in the next; `after_mib` shows what is left.
    let blocking = |work: Box<dyn FnOnce() -> anyhow::Result<u64> + Send>| async move {
        let before = status_kib("VmRSS:") / 1024.0;
        peak_mib_and_reset();
        let started = Instant::now();
        let n = tokio::task::spawn_blocking(work).await??;
        Ok::<_, anyhow::Error>((started.elapsed(), peak_mib_and_reset() - before, n))
    };
    let s = store.clone();
    let (periodic_verify, periodic_peak_mib, _) = blocking(Box::new(move || {
        let mut check = lockstep_controller::archive::verification_start(s.as_ref())?;
        if let Err(b) = audit_reads::verify(s.as_ref(), &mut check)? {
            anyhow::bail!("the grown chain is broken: {b}");
        }
        Ok(check.checked())
    }))
    .await?;
    let s = store.clone();
    let (audit_verify, audit_verify_peak_mib, store_records) = blocking(Box::new(move || {
        let reply = queries::verify_audit(s.as_ref()).map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(reply.ok, "audit verify: {}", reply.problem);
        Ok(reply.records)
    }))
    .await?;

    let report = |date: String| {
        let c = &c;
        let carol = &carol;
        async move {
            let before = status_kib("VmRSS:") / 1024.0;
            peak_mib_and_reset();
            let started = Instant::now();
            let reply = c
                .reports
                .pre_open(
                    carol,
                    pb::PreOpenReportRequest {
                        role: "smars".into(),
                        date,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let bytes = (reply.json.len() + reply.html.len()) as u64;
            Ok::<_, anyhow::Error>((started.elapsed(), peak_mib_and_reset() - before, bytes))
        }
    };
    // The day of the last gate check (the log may end with the archiving round's records).
    let last_check = audit_reads::tail(store.as_ref(), last.seq, 64)?
        .into_iter()
        .rev()
        .find(|r| lockstep_evidence::action::AuditAction::GateChecked.is(&r.action))
        .map_or(last.at_unix_ms, |r| r.at_unix_ms);
    let (report_last, last_peak, report_bytes) = report(day_of(last_check)?).await?;
    let first_at = audit_reads::at_or_after(
        &lockstep_controller::archive::log::Log::open(store.as_ref(), &config.audit.archive_dir)?,
        0,
    )?
    .map_or(last.at_unix_ms, |r| r.at_unix_ms);
    // Day 0 (it starts at a midnight): in the archive once 15 days old.
    let (report_archived, archived_peak, _) = report(day_of(first_at)?).await?;
    let report_peak_mib = last_peak.max(archived_peak);

    c.queries.gate_check_recorded(&carol, "smars", &[]).await?;
    let started = Instant::now();
    c.queries.gate_check_recorded(&carol, "smars", &[]).await?;
    let gate_check = started.elapsed();
    let (during_verify, checks_during_verify) = super::age::gate_checks_during_verify(&c, store.clone()).await?;
    let started = Instant::now();
    c.queries.list_audit(&pb::ListAuditRequest {
        limit: 50,
        ..Default::default()
    })?;
    let audit_tail = started.elapsed();
    // The board's host page: what it reads (its rendering is a few rows).
    let started = Instant::now();
    // (The grown log's hosts have no version set: the page shows that.)
    let _ = c.queries.diff(&pb::DiffRequest {
        host: super::age::BUSY_HOST.into(),
        against: Some(pb::diff_request::Against::Release(0)),
    });
    let head = store.last_audit()?.map_or(0, |r| r.seq);
    let history = audit_reads::host_tail(store.as_ref(), super::age::BUSY_HOST, head, 20)?;
    anyhow::ensure!(
        history.len() == 20,
        "the busy host has {} records online",
        history.len()
    );
    let host_page = started.elapsed();
    let after_mib = status_kib("VmRSS:") / 1024.0;
    Ok(Measured {
        records: last.seq,
        store_records,
        store_bytes,
        restart_s: restart.as_secs_f64(),
        periodic_verify_s: periodic_verify.as_secs_f64(),
        periodic_peak_mib,
        audit_verify_s: audit_verify.as_secs_f64(),
        audit_verify_peak_mib,
        report_s: report_last.as_secs_f64(),
        report_archived_s: report_archived.as_secs_f64(),
        report_bytes,
        report_peak_mib,
        gate_check_s: gate_check.as_secs_f64(),
        during_verify_s: during_verify.as_secs_f64(),
        checks_during_verify,
        audit_tail_s: audit_tail.as_secs_f64(),
        host_page_s: host_page.as_secs_f64(),
        rest_mib,
        after_mib,
    })
}
