//! The `on_open` / `on_close` hooks: commands run on gate transitions, one at
//! a time and in order, each bounded in time. A hook receives the gate in its
//! environment: LOCKSTEP_GATE (OPEN|CLOSED), LOCKSTEP_HOST, LOCKSTEP_RELEASE,
//! LOCKSTEP_REASONS (one per line).

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

/// One hook to run, and the gate it runs for (what its environment says).
pub struct HookRun {
    pub argv: Vec<String>,
    /// "OPEN" or "CLOSED".
    pub state: String,
    pub host: String,
    pub release: u64,
    pub reasons: Vec<String>,
}

/// Runs hooks as they come until the sender side is dropped.
pub async fn run_hooks(mut rx: mpsc::UnboundedReceiver<HookRun>, timeout: Duration) {
    while let Some(run) = rx.recv().await {
        let Some((program, args)) = run.argv.split_first() else {
            continue;
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env("LOCKSTEP_GATE", &run.state)
            .env("LOCKSTEP_HOST", &run.host)
            .env("LOCKSTEP_RELEASE", run.release.to_string())
            .env("LOCKSTEP_REASONS", run.reasons.join("\n"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let result = match cmd.spawn() {
            Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!("exited with {status}")),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => {
                    let _ = child.kill().await;
                    Err(format!("killed after {}s", timeout.as_secs()))
                }
            },
            Err(e) => Err(format!("cannot start: {e}")),
        };
        match result {
            Ok(()) => info!(hook = %program, gate = %run.state, "gate hook ran"),
            Err(e) => warn!(hook = %program, gate = %run.state, error = %e, "gate hook failed"),
        }
    }
}
