//! The child processes a test starts: lockstep's binaries found next to
//! the test executable, each killed when its handle is dropped (a failing
//! test leaves nothing running), paused and resumed on demand.

use std::path::PathBuf;
use std::process::{Child, Command};

/// A lockstep binary (`lockstep-controller`, `lockstep-agent`) next to the
/// running executable (tests run from target/*/deps, binaries sit above).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no {name} binary next to {}: build it first (cargo build [--release] --workspace)",
        exe.display()
    )
}

/// A child process killed (SIGKILL) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGSTOP (`true`) or SIGCONT (`false`) a process the fleet started.
pub fn pause_process(process: &Killed, pause: bool) -> anyhow::Result<()> {
    let pid = process.0.id();
    let signal = if pause { "-STOP" } else { "-CONT" };
    let status = Command::new("kill").arg(signal).arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    if pause {
        // kill(2) returns once the signal is sent, not once every thread
        // has stopped: a call the test sends next must meet a frozen process.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "process {pid} still running 5 s after SIGSTOP"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    Ok(())
}

/// Every thread of `pid` in state T (stopped), by /proc.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // "tid (comm) S ...": the state follows the last ')'.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}
