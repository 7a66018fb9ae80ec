//! What the agent does to a latency-critical process on another core: a
//! probe thread pinned to the "trading" CPU sleeps 200 µs at a time and
//! records how late it wakes (cyclictest's measure, in-process), while the
//! agent, placed on the housekeeping CPUs, idles, scans or sees a deploy.
//! Phases are interleaved in rounds so a noisy machine hits them alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lockstep_agent::measure::placement::{CpuList, Placement, pin_current_thread};
use lockstep_agent::measure::scan::{Budget, Scanner};
use lockstep_agent::measure::throttle::{RealPace, Throttle};

/// Wake-up latency percentiles of one phase, µs.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(mut us: Vec<f64>) -> Self {
        us.sort_by(f64::total_cmp);
        let at = |q: f64| us.get(((us.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0);
        Self {
            samples: us.len(),
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: us.last().copied().unwrap_or(0.0),
        }
    }

    fn merge(all: &[Vec<f64>]) -> Self {
        Self::of(all.iter().flatten().copied().collect())
    }
}

/// Runs the probe on `cpu` for `for_how_long`; wake-up lateness in µs.
/// cyclictest (Debian's `rt-tests`: SCHED_FIFO, absolute 200 µs timer) when
/// installed, else a plain sleeping thread of our own (coarser: timer
/// slack and no real-time priority).
fn probe(cpu: &CpuList, for_how_long: Duration) -> anyhow::Result<Vec<f64>> {
    if let Some(late) = cyclictest(cpu, for_how_long)? {
        return Ok(late);
    }
    let cpu = cpu.clone();
    let handle = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        pin_current_thread(&cpu)?;
        let interval = Duration::from_micros(200);
        let end = Instant::now() + for_how_long;
        let mut late = Vec::with_capacity((for_how_long.as_micros() / 200) as usize);
        while Instant::now() < end {
            let start = Instant::now();
            std::thread::sleep(interval);
            late.push((start.elapsed().saturating_sub(interval)).as_secs_f64() * 1e6);
        }
        Ok(late)
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
}

/// Whether the probe is cyclictest (else the built-in sleeping thread).
pub fn probe_name() -> &'static str {
    if std::process::Command::new("cyclictest").arg("--help").output().is_ok() {
        "cyclictest -i 200 -p 95 -m"
    } else {
        "a sleeping thread (install rt-tests for cyclictest)"
    }
}

/// One cyclictest run on `cpu`: its histogram, as one value per sample.
fn cyclictest(cpu: &CpuList, for_how_long: Duration) -> anyhow::Result<Option<Vec<f64>>> {
    let out = match std::process::Command::new("cyclictest")
        .args(["-t1", "-i200", "-p95", "-m", "-q", "-h4000"])
        .arg(format!("-a{cpu}"))
        .arg(format!("-D{}", for_how_long.as_secs().max(1)))
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(
        out.status.success(),
        "cyclictest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut late = Vec::new();
    let mut max = 0.0f64;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# Max Latencies:") {
            max = rest.trim().parse().unwrap_or(0.0);
        }
        if let Some(rest) = line.strip_prefix("# Histogram Overflows:") {
            let n: usize = rest.trim().parse().unwrap_or(0);
            late.extend(std::iter::repeat_n(f64::NAN, n)); // filled with the max below
        }
        let mut cols = line.split_whitespace();
        if let (Some(us), Some(count), None) = (cols.next(), cols.next(), cols.next()) {
            if let (Ok(us), Ok(count)) = (us.parse::<f64>(), count.parse::<usize>()) {
                late.extend(std::iter::repeat_n(us, count));
            }
        }
    }
    for v in &mut late {
        if v.is_nan() {
            *v = max;
        }
    }
    Ok(Some(late))
}

/// What runs beside the probe in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    None,
    /// The agent idle: a stat-only rescan every second (10× the default rate).
    Idle,
    /// Full scans in a loop, the workers on every CPU (no placement: before).
    ScanUnplaced,
    /// Full scans in a loop at the defaults: housekeeping CPUs, nice 19.
    ScanPlaced,
    /// Full scans in a loop within the market-hours budget (defaults).
    ScanBudgeted,
    /// A 500-file deploy written (by the deploy tool) with no agent.
    DeployAlone,
    /// The same deploy, each one scanned by the agent.
    Deploy,
}

impl Load {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "no agent",
            Self::Idle => "agent idle",
            Self::ScanUnplaced => "full scan, every CPU (before)",
            Self::ScanPlaced => "full scan at the defaults",
            Self::ScanBudgeted => "full scan, market-hours budget",
            Self::DeployAlone => "500-file deploys, no agent",
            Self::Deploy => "500-file deploys, agent scanning",
        }
    }
}

pub struct ProbeReport {
    pub probe_cpu: String,
    pub agent_cpus: String,
    pub tree_bytes: u64,
    pub phases: Vec<(Load, Latency, u64)>,
}

/// Runs each load beside the probe for `phase` per round, `rounds` times.
pub fn run(tree: &Path, tree_bytes: u64, phase: Duration, rounds: usize) -> anyhow::Result<ProbeReport> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    anyhow::ensure!(cpus >= 2, "the probe needs a CPU of its own: this machine has {cpus}");
    let probe_cpu = CpuList::parse(&(cpus - 1).to_string())?;
    // The agent's default on a host whose last CPU is isolated.
    let housekeeping = CpuList::parse(&format!("0-{}", cpus - 2))?;
    let placed = Placement::new(Some(housekeeping.clone()), Path::new("/sys"))?;
    let watch = vec![tree.display().to_string()];
    let deploy_dir = tree.join("deploy");
    std::fs::create_dir_all(&deploy_dir)?;
    let loads = [
        Load::None,
        Load::Idle,
        Load::ScanUnplaced,
        Load::ScanPlaced,
        Load::ScanBudgeted,
        Load::DeployAlone,
        Load::Deploy,
    ];
    let mut samples: Vec<Vec<Vec<f64>>> = vec![Vec::new(); loads.len()];
    let mut bytes = vec![0u64; loads.len()];
    for _ in 0..rounds {
        for (i, load) in loads.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
            let worker = {
                let (stop, watch, placed, deploy_dir) =
                    (stop.clone(), watch.clone(), placed.clone(), deploy_dir.clone());
                let load = *load;
                std::thread::spawn(move || agent_load(load, &watch, &placed, &deploy_dir, &stop, ready_tx))
            };
            // The probe starts once the load has done its setup.
            let _ = ready.recv();
            let late = probe(&probe_cpu, phase)?;
            stop.store(true, Ordering::Relaxed);
            bytes[i] += worker.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
            samples[i].push(late);
        }
    }
    Ok(ProbeReport {
        probe_cpu: probe_cpu.to_string(),
        agent_cpus: housekeeping.to_string(),
        tree_bytes,
        phases: loads
            .iter()
            .zip(samples.iter().zip(bytes))
            .map(|(l, (s, b))| (*l, Latency::merge(s), b))
            .collect(),
    })
}

/// Runs `load` until `stop`; bytes hashed.
fn agent_load(
    load: Load,
    watch: &[String],
    placed: &Placement,
    deploy: &Path,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    let scanner = match load {
        Load::None => {
            let _ = ready.send(());
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Ok(0);
        }
        Load::ScanUnplaced => Scanner::new(watch, None)?,
        _ => {
            pin_current_thread(&placed.cpus)?;
            Scanner::new(watch, None)?.with_placement(placed)
        }
    };
    let budget = Budget {
        threads: 1,
        throttle: Throttle::new(
            lockstep_agent::measure::market_hours::DEFAULT_MAX_BYTES_PER_SEC,
            1 << 20,
            Arc::new(RealPace::default()),
        ),
    };
    let mut round = 0u32;
    // The agent's first scan of the tree (outside the phase's work).
    if matches!(load, Load::Idle | Load::Deploy) {
        scanner.scan_with_stats(true)?;
    }
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        let stats = match load {
            Load::ScanBudgeted => scanner.scan_within(true, Some(&budget))?.1,
            Load::Idle => {
                let next = Instant::now() + Duration::from_secs(1);
                while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                scanner.scan_with_stats(false)?.1
            }
            Load::Deploy | Load::DeployAlone => {
                round += 1;
                for f in 0..500 {
                    std::fs::write(deploy.join(format!("f{f}")), format!("build {round} file {f}"))?;
                }
                if load == Load::DeployAlone {
                    // The deploy tool's pace when the agent scans each one.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                scanner.scan_with_stats(false)?.1
            }
            _ => scanner.scan_with_stats(true)?.1,
        };
        bytes += stats.bytes_hashed;
        // A budgeted scan stops between files once the phase is over.
        if load == Load::ScanBudgeted && stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(bytes)
}

/// Resident share of `file` after a full scan of `tree` (not cached
/// before), with the page-cache restore on and off: (on, off), and the
/// bytes of the tree left cached in each case.
pub fn page_cache(tree: &Path, working_set: &Path) -> anyhow::Result<[(f64, u64); 2]> {
    let mut out = [(0.0, 0); 2];
    for (i, restore) in [true, false].into_iter().enumerate() {
        drop_cache(tree)?;
        std::fs::read(working_set)?;
        let scanner = Scanner::new(&[tree.display().to_string()], None)?.restore_page_cache(restore);
        scanner.scan_with_stats(true)?;
        let size = std::fs::metadata(working_set)?.len() as f64;
        out[i] = (resident(working_set)? as f64 / size, resident_tree(tree)?);
    }
    Ok(out)
}

fn walkdir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn drop_cache(tree: &Path) -> anyhow::Result<()> {
    for f in walkdir_files(tree) {
        let file = std::fs::File::open(&f)?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    Ok(())
}

fn resident_tree(tree: &Path) -> anyhow::Result<u64> {
    walkdir_files(tree).iter().map(|f| resident(f)).sum()
}

/// Resident bytes of `path` (util-linux `fincore`).
pub fn resident(path: &Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "fincore {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Halt → the agent's gate file CLOSED, with the agent process at `nice`
/// on CPU 0 while a busy loop at nice 0 holds that CPU: does the unit's
/// lower priority delay a gate closing? One latency per halt.
pub async fn gate_close_under_load(nice: i32, halts: usize) -> anyhow::Result<Vec<Duration>> {
    use crate::fleet::process::{ProcFleet, ProcSpec};
    use lockstep_proto::pb;
    let host = "real-1".to_string();
    let fleet = ProcFleet::start(ProcSpec::smars(vec![host.clone()])).await?;
    fleet.enroll(std::slice::from_ref(&host), 1).await?;
    fleet.write_tree(&host, "build 1")?;
    let nice_arg = nice.to_string();
    let _agent = fleet.start_agent_under(&host, &["nice", "-n", &nice_arg, "taskset", "-c", "0"])?;
    fleet
        .wait_hosts("the agent reporting", |h| {
            h.iter().any(|s| s.host == "real-1" && s.last_seq > 0)
        })
        .await?;
    fleet.release_from_host(&host).await?;
    fleet.wait_local(&host, 0).await?;
    let gate_file = fleet.dir.path().join("hosts/real-1/gate.json");
    let state = || -> String {
        std::fs::read(&gate_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["state"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    // The hog: one spinning thread per CPU, all on CPU 0 with the agent.
    let stop = Arc::new(AtomicBool::new(false));
    let zero = CpuList::parse("0")?;
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let (stop, zero) = (stop.clone(), zero.clone());
            std::thread::spawn(move || {
                let _ = pin_current_thread(&zero);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let scope = || pb::HaltScope {
        scope: Some(pb::halt_scope::Scope::Host("real-1".into())),
    };
    let mut console = fleet.console(&fleet.alice)?;
    let mut took = Vec::with_capacity(halts);
    for _ in 0..halts {
        let start = Instant::now();
        console
            .halt(pb::HaltRequest {
                scope: Some(scope()),
                reason: "bench".into(),
                drill: false,
            })
            .await?;
        while state() != "CLOSED" {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "the gate never closed");
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        took.push(start.elapsed());
        console
            .resume(pb::ResumeRequest {
                scope: Some(scope()),
                reason: "bench".into(),
            })
            .await?;
        let reopen = Instant::now();
        while state() != "OPEN" {
            anyhow::ensure!(reopen.elapsed() < Duration::from_secs(10), "the gate never reopened");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    Ok(took)
}

/// Peak RSS (KiB) of a process doing only the agent's full scan of `tree`
/// (this bench binary, re-run as `--rss-child TREE`).
pub fn scan_peak_rss_kib(tree: &Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--rss-child")
        .arg(tree)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "scan child: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// The `--rss-child` side: one full scan as the agent does it, then the
/// process's peak RSS (VmHWM, KiB) on standard output.
pub fn rss_child(tree: &Path) -> anyhow::Result<()> {
    let scanner = Scanner::new(&[tree.display().to_string()], None)?;
    let (entries, _) = scanner.scan_with_stats(true)?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    println!("{hwm}");
    drop(entries);
    Ok(())
}

/// Peak RSS (KiB) of `lockstep-agent measure` over `tree`, by GNU time's
/// `%M` (`None` without /usr/bin/time). More than a scan: `measure` also
/// builds the whole manifest JSON in memory.
pub fn peak_rss_kib(tree: &Path) -> anyhow::Result<Option<u64>> {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        return Ok(None);
    }
    let out = std::process::Command::new(time)
        .args(["-f", "%M"])
        .arg(crate::child::binary("lockstep-agent")?)
        .args(["measure", "--output", "/dev/null", "--watch"])
        .arg(tree)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "measure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(stderr.lines().last().and_then(|l| l.trim().parse().ok()))
}

/// `count` files of 64 bytes in directories of 1,000.
pub fn small_files(root: &Path, count: usize) -> std::io::Result<()> {
    for i in 0..count {
        let dir = root.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{i}")), format!("{i:064}"))?;
    }
    Ok(())
}

/// The memory cgroup this process is in, to make a child group under it
/// (v2: `memory.max`; v1: `memory.limit_in_bytes`).
fn own_memory_cgroup() -> anyhow::Result<(PathBuf, &'static str)> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Ok((Path::new("/sys/fs/cgroup/memory").join(path), "memory.limit_in_bytes"));
        }
    }
    let v2 = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow::anyhow!("no memory cgroup in /proc/self/cgroup"))?;
    Ok((
        Path::new("/sys/fs/cgroup").join(v2.trim_start_matches('/')),
        "memory.max",
    ))
}

/// Share of `working_set` still resident after a full scan of `tree`, both
/// first read by a child process in a memory cgroup limited to `limit`
/// bytes: the scan's page cache competes with the working set as it would
/// on a host whose memory is full. (restore on, restore off).
pub fn page_cache_under_pressure(tree: &Path, working_set: &Path, limit: u64) -> anyhow::Result<[f64; 2]> {
    use std::io::Write;
    let (parent, limit_file) = own_memory_cgroup()?;
    let group = parent.join(format!("lockstep-bench-{}", std::process::id()));
    std::fs::create_dir(&group).map_err(|e| anyhow::anyhow!("cannot make cgroup {}: {e}", group.display()))?;
    let result = (|| -> anyhow::Result<[f64; 2]> {
        std::fs::write(group.join(limit_file), limit.to_string())?;
        let mut out = [0.0; 2];
        for (i, restore) in [true, false].into_iter().enumerate() {
            drop_cache(tree)?;
            drop_cache(working_set.parent().unwrap_or(working_set))?;
            let mut child = std::process::Command::new(std::env::current_exe()?)
                .arg("--page-cache-child")
                .arg(working_set)
                .arg(tree)
                .arg(if restore { "restore" } else { "keep" })
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            std::fs::write(group.join("cgroup.procs"), child.id().to_string())?;
            // In its group now: let it read.
            child.stdin.take().map(|mut s| s.write_all(b"go\n")).transpose()?;
            let output = child.wait_with_output()?;
            anyhow::ensure!(output.status.success(), "page-cache child failed");
            out[i] = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        }
        Ok(out)
    })();
    let _ = std::fs::remove_dir(&group);
    result
}

/// The `--page-cache-child` side: waits for its go, reads `working_set`,
/// scans `tree` once, prints the resident share of `working_set`.
pub fn page_cache_child(working_set: &Path, tree: &Path, restore: bool) -> anyhow::Result<()> {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    std::fs::read(working_set)?;
    let scanner = Scanner::new(&[tree.display().to_string()], None)?.restore_page_cache(restore);
    scanner.scan_with_stats(true)?;
    let size = std::fs::metadata(working_set)?.len() as f64;
    println!("{}", resident(working_set)? as f64 / size);
    Ok(())
}
