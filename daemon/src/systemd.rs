//! systemd integration both daemons share: `Type=notify` readiness and the
//! `WatchdogSec=` keep-alive. Without systemd (no NOTIFY_SOCKET) every call
//! is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is ready (READY=1) with a status line.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is stopping (STOPPING=1).
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// The interval to ping the watchdog at (half of WatchdogSec=), if enabled.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Pings the watchdog at `interval` until `stop`. Runs on the async
/// runtime, so a wedged runtime stops the pings and systemd restarts the
/// service.
pub async fn keep_watchdog_fed(interval: Duration, stop: impl std::future::Future<Output = ()>) {
    let mut tick = tokio::time::interval(interval);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            }
            () = &mut stop => return,
        }
    }
}
