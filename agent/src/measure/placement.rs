//! Where the agent may run on a trading host: only on housekeeping CPUs.
//!
//! Latency-critical processes own the CPUs the kernel isolates
//! (`isolcpus=`, `nohz_full=`); an agent hashing there, even briefly, shows
//! up in their p99. So by default the agent's set is the online CPUs minus
//! the isolated and tickless ones, every thread is pinned to it (a thread
//! inherits its creator's mask, and each thread pins itself too), and scan
//! workers run at the lowest CPU priority of their own thread.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use rustix::thread::{CpuSet, sched_setaffinity};

/// Nice value of scan worker threads: hashing is background work. The gate
/// and hooks run on the agent's other threads, at the unit's priority.
pub const SCAN_NICE: i32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("{text:?} is not a CPU list like \"0-3,8\": {problem}")]
    BadList { text: String, problem: String },
    #[error("cannot read {path}: {cause}")]
    Sysfs { path: String, cause: std::io::Error },
    #[error("cannot pin this thread to CPUs {cpus}: {cause}")]
    Pin { cpus: CpuList, cause: std::io::Error },
}

/// A set of CPU numbers, written as the kernel writes them ("0-3,8").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(BTreeSet<usize>);

impl CpuList {
    pub fn parse(text: &str) -> Result<Self, PlacementError> {
        let bad = |problem: &str| PlacementError::BadList {
            text: text.to_string(),
            problem: problem.to_string(),
        };
        let mut cpus = BTreeSet::new();
        for part in text.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let lo: usize = lo
                .trim()
                .parse()
                .map_err(|_| bad("each item is a number or a range a-b"))?;
            let hi: usize = hi
                .trim()
                .parse()
                .map_err(|_| bad("each item is a number or a range a-b"))?;
            if lo > hi {
                return Err(bad("a range must go upwards"));
            }
            if hi >= CpuSet::MAX_CPU {
                return Err(bad(&format!("CPU numbers stop at {}", CpuSet::MAX_CPU - 1)));
            }
            cpus.extend(lo..=hi);
        }
        Ok(Self(cpus))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, cpu: usize) -> bool {
        self.0.contains(&cpu)
    }

    fn minus(&self, other: &Self) -> Self {
        Self(self.0.difference(&other.0).copied().collect())
    }

    fn to_cpuset(&self) -> CpuSet {
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu);
        }
        set
    }
}

impl fmt::Display for CpuList {
    /// As the kernel prints it: ranges joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            parts.push(if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
        write!(f, "{}", parts.join(","))
    }
}

/// The CPUs not reserved for latency-critical work: online, minus the
/// kernel's isolated and `nohz_full` sets, read under `sysfs` (normally
/// `/sys`). Every online CPU when nothing is left.
pub fn housekeeping_cpus(sysfs: &Path) -> Result<CpuList, PlacementError> {
    let read = |name: &str, required: bool| -> Result<CpuList, PlacementError> {
        let path = sysfs.join("devices/system/cpu").join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => CpuList::parse(&text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(CpuList::default()),
            Err(cause) => Err(PlacementError::Sysfs {
                path: path.display().to_string(),
                cause,
            }),
        }
    };
    let online = read("online", true)?;
    let left = online
        .minus(&read("isolated", false)?)
        .minus(&read("nohz_full", false)?);
    Ok(if left.is_empty() { online } else { left })
}

/// Pins the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &CpuList) -> Result<(), PlacementError> {
    sched_setaffinity(None, &cpus.to_cpuset()).map_err(|e| PlacementError::Pin {
        cpus: cpus.clone(),
        cause: e.into(),
    })
}

/// Lowers the calling thread's CPU priority to `nice` (per thread on Linux:
/// the agent's other threads keep theirs). A failure only costs priority.
pub fn lower_current_thread_priority(nice: i32) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::debug!(error = %e, nice, "cannot lower this thread's priority");
    }
}

/// Where the agent runs, decided once from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub cpus: CpuList,
    /// Scan worker threads outside market hours: one per CPU of the set, at most 8.
    pub scan_threads: usize,
}

impl Placement {
    /// `cpus` from the config, or the housekeeping CPUs of this machine.
    pub fn new(cpus: Option<CpuList>, sysfs: &Path) -> Result<Self, PlacementError> {
        let cpus = match cpus {
            Some(c) => c,
            None => housekeeping_cpus(sysfs)?,
        };
        let scan_threads = cpus.len().clamp(1, 8);
        Ok(Self { cpus, scan_threads })
    }

    /// Pins the calling thread to the set; a failure is logged (the agent
    /// still measures, on whatever CPUs it was given).
    pub fn apply_to_current_thread(&self) {
        if let Err(e) = pin_current_thread(&self.cpus) {
            tracing::warn!(error = %e, "agent thread not pinned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print_as_the_kernel_writes_them() {
        let l = CpuList::parse("0-3,8,10-11\n").unwrap();
        assert_eq!(l.len(), 7);
        assert_eq!(l.to_string(), "0-3,8,10-11");
        assert_eq!(CpuList::parse("").unwrap(), CpuList::default());
        for bad in ["a", "3-1", "1-", "99999"] {
            let e = CpuList::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    fn fake_sysfs(online: &str, isolated: Option<&str>, nohz: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let cpu = d.path().join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("online"), online).unwrap();
        if let Some(i) = isolated {
            std::fs::write(cpu.join("isolated"), i).unwrap();
        }
        if let Some(n) = nohz {
            std::fs::write(cpu.join("nohz_full"), n).unwrap();
        }
        d
    }

    #[test]
    fn isolated_and_tickless_cpus_are_left_out_by_default() {
        let d = fake_sysfs("0-7\n", Some("2-3\n"), Some("3-5\n"));
        let p = Placement::new(None, d.path()).unwrap();
        assert_eq!(p.cpus.to_string(), "0-1,6-7");
        assert_eq!(p.scan_threads, 4, "scan workers are sized to the set, not the machine");
    }

    #[test]
    fn no_isolation_means_every_online_cpu() {
        let d = fake_sysfs("0-3\n", Some("\n"), None);
        assert_eq!(Placement::new(None, d.path()).unwrap().cpus.to_string(), "0-3");
        let d = fake_sysfs("0-1\n", Some("0-1\n"), None);
        assert_eq!(
            Placement::new(None, d.path()).unwrap().cpus.to_string(),
            "0-1",
            "all isolated: the agent still runs somewhere"
        );
    }

    #[test]
    fn a_configured_set_wins_over_the_machine() {
        let d = fake_sysfs("0-7\n", Some("2-3\n"), None);
        let p = Placement::new(Some(CpuList::parse("1").unwrap()), d.path()).unwrap();
        assert_eq!((p.cpus.to_string(), p.scan_threads), ("1".to_string(), 1));
    }

    #[test]
    fn a_missing_sysfs_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = housekeeping_cpus(d.path()).unwrap_err().to_string();
        assert!(e.contains("devices/system/cpu/online"), "{e}");
    }

    #[test]
    fn this_thread_is_pinned_where_it_is_told() {
        let online = housekeeping_cpus(Path::new("/sys")).unwrap();
        let first = CpuList::parse(&online.0.iter().next().unwrap().to_string()).unwrap();
        std::thread::spawn(move || {
            pin_current_thread(&first).unwrap();
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
            assert_eq!(line.split_whitespace().nth(1).unwrap(), first.to_string());
        })
        .join()
        .unwrap();
    }
}
