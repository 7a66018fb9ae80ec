//! The host's side of the gate. The controller's word arrives as a gate with
//! a lease; the gate keeper turns it into a local deadline, writes the state
//! file atomically (the file `lockstep-agent gate check` reads), runs the
//! `on_open`/`on_close` hooks on transitions, and closes the gate itself when
//! the lease runs out with no renewal: an unreachable controller closes the
//! gate, it never keeps it open (unless a policy says "hold" during trading
//! hours, and then it alarms).

use std::path::{Path, PathBuf};
use std::time::Duration;

// Lease deadlines are on tokio's clock: a test that pauses time moves them too.
use tokio::time::Instant;

use lockstep_daemon::clock::SharedClock;
use lockstep_proto::pb::{Gate, GateState};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{GateConfig, OutagePolicy};
use crate::gate::hooks::HookRun;
use crate::state;

/// The state file: what `gate check` and people read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateFile {
    pub host: String,
    /// "OPEN" or "CLOSED".
    pub state: String,
    pub release: u64,
    pub reasons: Vec<String>,
    /// OPEN only until this instant (this host's clock).
    pub lease_expires_unix_ms: i64,
    pub updated_at_unix_ms: i64,
    /// Set while a "hold" policy keeps the gate open through an outage.
    #[serde(default)]
    pub held_since_unix_ms: i64,
    /// The highest controller epoch this host has taken a gate from: kept
    /// across restarts so a deposed leader cannot win the host back.
    #[serde(default)]
    pub epoch: u64,
}

impl GateFile {
    /// Open right now: state OPEN and the lease not yet run out.
    pub fn is_open_at(&self, now_unix_ms: i64) -> bool {
        self.state == "OPEN" && now_unix_ms < self.lease_expires_unix_ms
    }

    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub struct GateKeeper {
    host: String,
    config: GateConfig,
    file: GateFile,
    /// When the current OPEN lease runs out (monotonic clock).
    deadline: Option<Instant>,
    last_word_unix_ms: i64,
    hooks: mpsc::UnboundedSender<HookRun>,
    /// The host's wall clock (leases in the state file, hold hours).
    clock: SharedClock,
    /// Highest controller epoch seen (see [`GateFile::epoch`]).
    epoch: u64,
    /// The last gate applied: its epoch and the controller's decision time.
    last_decided: (u64, i64),
}

impl GateKeeper {
    /// Starts CLOSED unless the state file holds an OPEN lease that has not
    /// run out (an agent restart must not flap the trading unit).
    pub fn new(host: &str, config: GateConfig, hooks: mpsc::UnboundedSender<HookRun>) -> Self {
        Self::with_clock(host, config, hooks, lockstep_daemon::clock::system())
    }

    /// Like [`GateKeeper::new`] on `clock` (a test's, which it moves).
    pub fn with_clock(
        host: &str,
        config: GateConfig,
        hooks: mpsc::UnboundedSender<HookRun>,
        clock: SharedClock,
    ) -> Self {
        let now = clock.now_unix_ms();
        let previous = GateFile::read(&config.state_file)
            .ok()
            .flatten()
            .filter(|f| f.host == host);
        let previous_epoch = previous.as_ref().map_or(0, |f| f.epoch);
        let (file, deadline) = match previous {
            Some(f) if f.is_open_at(now) => {
                let left = Duration::from_millis(u64::try_from(f.lease_expires_unix_ms - now).unwrap_or(0));
                (f, Some(Instant::now() + left))
            }
            _ => (
                closed_file(
                    host,
                    vec!["agent starting: no gate from the controller yet".into()],
                    now,
                ),
                None,
            ),
        };
        let epoch = previous_epoch;
        let keeper = Self {
            host: host.to_string(),
            config,
            file,
            deadline,
            last_word_unix_ms: now,
            hooks,
            clock,
            epoch,
            last_decided: (0, 0),
        };
        keeper.write();
        keeper
    }

    pub fn file(&self) -> &GateFile {
        &self.file
    }

    /// When [`GateKeeper::expire`] must run if no new gate arrives first.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The controller's decision, just received.
    ///
    /// Refused (false) when it comes from an epoch below the highest seen:
    /// that controller has been deposed, and the caller should move on.
    pub fn apply(&mut self, gate: &Gate) -> bool {
        // Epoch 0 is a single controller on sled (unfenced, never deposed):
        // taken, so a fleet moved back from etcd to sled keeps its gates.
        if gate.epoch != 0 && gate.epoch < self.epoch {
            warn!(
                host = %self.host,
                gate_epoch = gate.epoch,
                highest_epoch = self.epoch,
                "refused a gate from a deposed controller (its epoch is below one already seen)"
            );
            return false;
        }
        self.epoch = self.epoch.max(gate.epoch);
        self.last_decided = self.last_decided.max((gate.epoch, gate.decided_at_unix_ms));
        let now = self.clock.now_unix_ms();
        self.last_word_unix_ms = now;
        let reasons: Vec<String> = gate.reasons.iter().map(|r| r.text.clone()).collect();
        let next = if gate.state() == GateState::Open {
            // The lease is relative: controller-clock expiry minus the
            // controller-clock decision time, counted from now on our clock.
            let left_ms = (gate.lease_expires_unix_ms - gate.decided_at_unix_ms).max(0);
            self.deadline = Some(Instant::now() + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)));
            GateFile {
                host: self.host.clone(),
                state: "OPEN".into(),
                release: gate.release,
                reasons,
                lease_expires_unix_ms: now + left_ms,
                updated_at_unix_ms: now,
                held_since_unix_ms: 0,
                epoch: self.epoch,
            }
        } else {
            self.deadline = None;
            GateFile {
                release: gate.release,
                ..closed_file(&self.host, reasons, now)
            }
        };
        self.transition(next);
        true
    }

    /// A gate from the controller's reply to an attestation. Only a closing
    /// one is taken, and only when newer than the last gate applied: OPEN
    /// leases come on the directive stream, and a reply that was in flight
    /// across a halt or a resume must not undo it. This is what brings a
    /// halt to a host whose directive stream is not back on a new leader
    /// yet, the moment its first report is answered there.
    pub fn apply_closing(&mut self, gate: &Gate) -> bool {
        let closing = gate.state() != GateState::Open;
        let newer = (gate.epoch, gate.decided_at_unix_ms) > self.last_decided;
        let reasons: Vec<&str> = gate.reasons.iter().map(|r| r.text.as_str()).collect();
        let already = self.file.state == "CLOSED" && self.file.reasons == reasons;
        if !closing || !newer || already {
            return false;
        }
        self.apply(gate)
    }

    /// The lease ran out with no renewal.
    pub fn expire(&mut self) {
        let now = self.clock.now_unix_ms();
        let silent_s = (now - self.last_word_unix_ms) / 1000;
        if self.file.state == "OPEN" && self.may_hold(now) {
            let held_since = if self.file.held_since_unix_ms > 0 {
                self.file.held_since_unix_ms
            } else {
                now
            };
            error!(
                host = %self.host,
                silent_s,
                "ALARM: gate lease expired with the controller unreachable; held OPEN by the outage policy during trading hours"
            );
            // Re-check (and re-alarm) every minute.
            self.deadline = Some(Instant::now() + Duration::from_secs(60));
            let next = GateFile {
                lease_expires_unix_ms: now + 60_000,
                updated_at_unix_ms: now,
                held_since_unix_ms: held_since,
                reasons: vec![format!(
                    "held open by outage policy: no word from the controller for {silent_s}s (ALARM)"
                )],
                ..self.file.clone()
            };
            self.transition(next);
            return;
        }
        self.deadline = None;
        let reason = format!("lease expired: no word from the controller for {silent_s}s (unreachable?)");
        warn!(host = %self.host, silent_s, "gate lease expired; closing the gate");
        self.transition(closed_file(&self.host, vec![reason], now));
    }

    fn may_hold(&self, now_unix_ms: i64) -> bool {
        match &self.config.outage {
            OutagePolicy::Close => false,
            OutagePolicy::Hold { from_min, to_min } => {
                let minute = (now_unix_ms / 60_000).rem_euclid(24 * 60);
                let minute = i32::try_from(minute).unwrap_or(0);
                if from_min <= to_min {
                    (*from_min..*to_min).contains(&minute)
                } else {
                    minute >= *from_min || minute < *to_min
                }
            }
        }
    }

    fn transition(&mut self, mut next: GateFile) {
        let was = self.file.state.clone();
        next.epoch = self.epoch;
        self.file = next;
        self.write();
        if was != self.file.state {
            info!(host = %self.host, from = %was, to = %self.file.state, reasons = ?self.file.reasons, "gate changed");
            let argv = if self.file.state == "OPEN" {
                &self.config.on_open
            } else {
                &self.config.on_close
            };
            if !argv.is_empty() {
                let _ = self.hooks.send(HookRun {
                    argv: argv.clone(),
                    state: self.file.state.clone(),
                    host: self.file.host.clone(),
                    release: self.file.release,
                    reasons: self.file.reasons.clone(),
                });
            }
        }
    }

    /// Atomic, not fsynced: the file lives under /run (tmpfs), and a copy
    /// lost to a crash fails closed (no file, or an older and shorter lease).
    fn write(&self) {
        let path: &PathBuf = &self.config.state_file;
        let written = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| e.to_string())
            .and_then(|bytes| state::write_atomic_mode(path, &bytes, 0o644, false).map_err(|e| e.to_string()));
        if let Err(e) = written {
            // The file is what `gate check` reads: failing to write it must
            // not leave an old OPEN behind. Its lease bounds that anyway.
            error!(host = %self.host, path = %path.display(), error = %e, "cannot write the gate state file");
        }
    }
}

/// What `lockstep-agent gate check` answers: exit code (0 open, 1 closed or
/// expired, 3 no state yet) and a line for people, judged at `clock`'s time.
/// Polls until open or `wait` has passed.
pub fn check(path: &Path, wait: Duration, clock: &SharedClock) -> (u8, String) {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let (code, line) = match GateFile::read(path) {
            Ok(Some(f)) if f.is_open_at(clock.now_unix_ms()) => {
                let held = if f.held_since_unix_ms > 0 {
                    " (HELD through a controller outage)"
                } else {
                    ""
                };
                (0, format!("gate OPEN on {} (release {}){held}", f.host, f.release))
            }
            // The agent has not written it closed yet (it is about to, or
            // it stopped): said in the words its own closing uses.
            Ok(Some(f)) if f.state == "OPEN" => (
                1,
                format!(
                    "gate CLOSED on {}: lease expired (the OPEN lease was not renewed in time)",
                    f.host
                ),
            ),
            Ok(Some(f)) => (1, format!("gate CLOSED on {}: {}", f.host, f.reasons.join("; "))),
            Ok(None) => (
                3,
                format!("no gate state at {} yet: is lockstep-agent running?", path.display()),
            ),
            Err(e) => (3, format!("cannot read gate state {}: {e}", path.display())),
        };
        if code == 0 || std::time::Instant::now() >= deadline {
            return (code, line);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn closed_file(host: &str, reasons: Vec<String>, now: i64) -> GateFile {
    GateFile {
        host: host.to_string(),
        state: "CLOSED".into(),
        release: 0,
        reasons,
        lease_expires_unix_ms: 0,
        updated_at_unix_ms: now,
        held_since_unix_ms: 0,
        epoch: 0,
    }
}

#[cfg(test)]
#[path = "gatekeeper_tests.rs"]
mod tests;
