//! The controller on an old log: the audit log grown to each size asked
//! (a fleet's years: a recorded `gate check` and a heartbeat count every
//! minute, a complete gate state each day), then what a restart, the
//! chain's verification, a pre-open report, a gate check and the audit
//! tail cost at that size. The controller library on real sled,
//! in-process; the log is written straight into the store, sealed as the
//! ledger seals it, between restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_controller::audit::operator::Operator;
use lockstep_controller::config::ControllerConfig;
use lockstep_controller::controller::Controller;
use lockstep_controller::store::sled::SledStore;
use lockstep_controller::store::{Store, audit_reads};
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::{AuditEvent, ChainCheck, ChainHead, seal};
use lockstep_evidence::facts::{GateChecked, HostFact, StateRef, to_facts};
use lockstep_evidence::gate_state;
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb;

/// One size of the log and what it cost.
#[derive(Debug, Clone)]
pub struct AgeRow {
    pub records: u64,
    pub store_bytes: u64,
    /// Opening the store and the controller (view loaded, chain head read).
    pub restart: Duration,
    /// The whole chain checked, a page at a time (the first periodic check after a start; `audit verify`).
    pub verify: Duration,
    /// Peak RSS above rest while verifying, MiB.
    pub verify_peak_mib: f64,
    /// A pre-open report of the log's last day.
    pub report: Duration,
    pub report_peak_mib: f64,
    /// A recorded `gate check` of an unchanged role (its state already written).
    pub gate_check: Duration,
    /// The slowest of the gate checks run back to back while `audit verify` ran, and how many.
    pub during_verify: Duration,
    pub checks_during_verify: u64,
    /// `lockstep audit --limit 50`.
    pub audit_tail: Duration,
    /// RSS after the restart, MiB.
    pub rest_mib: f64,
}

pub(crate) const RECORD_EVERY_MS: i64 = 30_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

fn config(dir: &Path, hosts: usize) -> anyhow::Result<ControllerConfig> {
    let names: Vec<String> = (0..hosts).map(|i| format!("\"smars-{i:05}\"")).collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[[role]]\nname = \"smars\"\nhosts = [{}]\n",
        dir.display(),
        names.join(", ")
    );
    Ok(ControllerConfig::parse(&text, Path::new("controller.toml"))?)
}

/// Appends records up to `total`, record n sealed at `start_ms` + n × 30 s.
/// The host with records of its own in a grown log (one in a hundred).
pub(crate) const BUSY_HOST: &str = "smars-00000";

pub(crate) fn grow(store: &dyn Store, total: u64, start_ms: i64, hosts: usize) -> anyhow::Result<()> {
    let last = store.last_audit()?;
    let mut head = ChainHead::after(last.as_ref());
    let fleet: BTreeMap<String, HostFact> = (0..hosts)
        .map(|i| {
            let host = format!("smars-{i:05}");
            let fact = HostFact {
                host: host.clone(),
                gate: "OPEN".into(),
                agent_version: "0.1.0".into(),
                digest: "ab".repeat(32),
                ..HostFact::default()
            };
            (host, fact)
        })
        .collect();
    let mut state: Option<StateRef> = None;
    let mut day = i64::MIN;
    let mut pending = 0;
    while head.next_seq <= total {
        let at = start_ms + i64::try_from(head.next_seq)? * RECORD_EVERY_MS;
        let mut events = Vec::new();
        if at.div_euclid(DAY_MS) != day || state.is_none() {
            day = at.div_euclid(DAY_MS);
            let complete = gate_state::next("smars", None, &fleet, at).ok_or_else(|| anyhow::anyhow!("no state"))?;
            state = Some(StateRef {
                seq: head.next_seq,
                digest: complete.digest.clone(),
            });
            events.push(AuditEvent {
                role: "smars".into(),
                facts: to_facts(&complete),
                ..AuditEvent::new("carol (viewer)", AuditAction::GateState, "gate state of smars")
            });
        } else if head.next_seq % 2 == 0 {
            let summary = format!("smars: {hosts}/{hosts} OPEN on release 1");
            events.push(AuditEvent {
                role: "smars".into(),
                facts: to_facts(&GateChecked {
                    summary: summary.clone(),
                    mode: "release".into(),
                    state: state.clone(),
                    ..GateChecked::default()
                }),
                ..AuditEvent::new("carol (viewer)", AuditAction::GateChecked, format!("{summary}; exit 0"))
            });
        } else if head.next_seq % 100 == 1 {
            // One busy host's own records, for its board page's history.
            events.push(AuditEvent {
                host: BUSY_HOST.into(),
                role: "smars".into(),
                ..AuditEvent::new("controller", AuditAction::CertRenewed, format!("{BUSY_HOST} renewed"))
            });
        } else {
            events.push(AuditEvent::new(
                "controller",
                AuditAction::AttestationHeartbeats,
                format!("{hosts} unchanged heartbeats in the last minute"),
            ));
        }
        let (records, next) = seal(&head, events, at);
        for r in &records {
            store.put_audit(r)?;
        }
        head = next;
        pending += records.len();
        if pending >= 10_000 {
            store.flush()?;
            pending = 0;
        }
    }
    store.flush()?;
    Ok(())
}

pub(crate) fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Peak RSS since the last reset, MiB, and resets it (Linux: clear_refs 5).
pub(crate) fn peak_mib_and_reset() -> f64 {
    let peak = status_kib("VmHWM:") / 1024.0;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak
}

/// How each size is measured: in a fresh process (`lockstep-bench
/// --age-child`, so memory is the controller's alone, not the grower's), or
/// in this one (the smoke test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    InChild,
    InProcess,
}

/// Grows one log through `sizes` (ascending) for a role of `hosts` hosts.
pub async fn age(sizes: &[u64], hosts: usize, how: Measure) -> anyhow::Result<Vec<AgeRow>> {
    let dir = tempfile::tempdir()?;
    // The largest log ends about now; smaller ones are its beginning.
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let start_ms = lockstep_proto::now_unix_ms() - i64::try_from(largest)? * RECORD_EVERY_MS;
    let mut rows = Vec::new();
    for &size in sizes {
        {
            let store = SledStore::open(&dir.path().join("store"))?;
            let total = size.max(store.last_audit()?.map_or(0, |r| r.seq));
            grow(&store, total, start_ms, hosts)?;
        }
        rows.push(match how {
            Measure::InProcess => measure(dir.path(), hosts).await?,
            Measure::InChild => {
                let out = std::process::Command::new(std::env::current_exe()?)
                    .arg("--age-child")
                    .arg(dir.path())
                    .arg("--age-hosts")
                    .arg(hosts.to_string())
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "the measuring child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let line = String::from_utf8_lossy(&out.stdout);
                let v: Vec<f64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
                let [
                    records,
                    bytes,
                    restart,
                    verify,
                    verify_peak,
                    report,
                    report_peak,
                    gate_check,
                    during_verify,
                    checks_during_verify,
                    tail,
                    rest,
                ] = v[..]
                else {
                    anyhow::bail!("the measuring child said {line:?}");
                };
                let d = Duration::from_secs_f64;
                AgeRow {
                    records: records as u64,
                    store_bytes: bytes as u64,
                    restart: d(restart),
                    verify: d(verify),
                    verify_peak_mib: verify_peak,
                    report: d(report),
                    report_peak_mib: report_peak,
                    gate_check: d(gate_check),
                    during_verify: d(during_verify),
                    checks_during_verify: checks_during_verify as u64,
                    audit_tail: d(tail),
                    rest_mib: rest,
                }
            }
        });
    }
    Ok(rows)
}

/// The `--age-child DIR` side: measures once and prints the row's numbers
/// (seconds, MiB) on one line.
pub async fn child(dir: &Path, hosts: usize) -> anyhow::Result<()> {
    let r = measure(dir, hosts).await?;
    println!(
        "{} {} {} {} {} {} {} {} {} {} {} {}",
        r.records,
        r.store_bytes,
        r.restart.as_secs_f64(),
        r.verify.as_secs_f64(),
        r.verify_peak_mib,
        r.report.as_secs_f64(),
        r.report_peak_mib,
        r.gate_check.as_secs_f64(),
        r.during_verify.as_secs_f64(),
        r.checks_during_verify,
        r.audit_tail.as_secs_f64(),
        r.rest_mib
    );
    Ok(())
}

/// A restart on the log in `dir`, then each answer timed.
async fn measure(dir: &Path, hosts: usize) -> anyhow::Result<AgeRow> {
    let config = config(dir, hosts)?;
    let carol = Operator {
        name: "carol".into(),
        role: OperatorRole::Viewer,
    };
    let last_at = {
        let store = SledStore::open(&dir.join("store"))?;
        store.last_audit()?.map_or(0, |r| r.at_unix_ms)
    };
    // A restart: the store and the controller opened again, its clock
    // where the log ends.
    let clock = lockstep_daemon::clock::TokioClock::starting_at(last_at + 1_000).shared();
    let started = Instant::now();
    let store = Arc::new(SledStore::open(&dir.join("store"))?);
    let c = Controller::with_clock(config, store.clone(), clock)?;
    let restart = started.elapsed();
    let rest_mib = status_kib("VmRSS:") / 1024.0;
    let store_bytes = store.size()?.bytes;
    let day = jiff::Timestamp::from_millisecond(last_at)?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();

    peak_mib_and_reset();
    let started = Instant::now();
    let mut check = ChainCheck::from_start();
    if let Err(b) = audit_reads::verify(store.as_ref(), &mut check)? {
        anyhow::bail!("the grown chain is broken: {b}");
    }
    let verify = started.elapsed();
    let verify_peak_mib = peak_mib_and_reset() - rest_mib;

    let started = Instant::now();
    c.reports
        .pre_open(
            &carol,
            pb::PreOpenReportRequest {
                role: "smars".into(),
                date: day,
                ..Default::default()
            },
        )
        .await?;
    let report = started.elapsed();
    let report_peak_mib = peak_mib_and_reset() - rest_mib;

    // The first check after a start writes the role's state; the next is the unchanged one.
    c.queries.gate_check_recorded(&carol, "smars", &[]).await?;
    let started = Instant::now();
    c.queries.gate_check_recorded(&carol, "smars", &[]).await?;
    let gate_check = started.elapsed();
    let (during_verify, checks_during_verify) = gate_checks_during_verify(&c, store.clone()).await?;

    let started = Instant::now();
    c.queries.list_audit(&pb::ListAuditRequest {
        limit: 50,
        ..Default::default()
    })?;
    let audit_tail = started.elapsed();
    Ok(AgeRow {
        records: check.checked(),
        store_bytes,
        restart,
        verify,
        verify_peak_mib,
        report,
        report_peak_mib,
        gate_check,
        during_verify,
        checks_during_verify,
        audit_tail,
        rest_mib,
    })
}

/// Recorded gate checks back to back while `audit verify` reads the whole
/// store on a blocking thread, as the console's call does: the slowest of
/// them, and how many ran.
pub(crate) async fn gate_checks_during_verify(
    c: &Controller,
    store: Arc<dyn Store>,
) -> anyhow::Result<(Duration, u64)> {
    let carol = Operator {
        name: "carol".into(),
        role: OperatorRole::Viewer,
    };
    let verifying = tokio::task::spawn_blocking(move || lockstep_controller::queries::verify_audit(store.as_ref()));
    let (mut worst, mut checks) = (Duration::ZERO, 0);
    while !verifying.is_finished() || checks == 0 {
        let started = Instant::now();
        c.queries.gate_check_recorded(&carol, "smars", &[]).await?;
        worst = worst.max(started.elapsed());
        checks += 1;
    }
    let verified = verifying.await?.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(verified.ok, "audit verify: {}", verified.problem);
    Ok((worst, checks))
}
