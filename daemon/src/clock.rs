//! The one wall clock the controller (its commits, gate decisions, tokens,
//! halts) and the agent's gatekeeper (leases) read, injectable so tests
//! can move time instead of waiting for it. [`TokioClock`] follows tokio's
//! clock: under `tokio::time::pause()` wall time moves only when the test
//! advances it, together with every tokio timer.

use std::sync::Arc;

/// Milliseconds since the Unix epoch, now.
pub trait Clock: Send + Sync + 'static {
    fn now_unix_ms(&self) -> i64;
}

/// The clock a component reads, shared by everything it hands it to.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        system_now_unix_ms()
    }
}

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

fn system_now_unix_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Wall time anchored to tokio's clock: `start_unix_ms` when made, plus the
/// tokio time elapsed since.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_unix_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the system's time now. Call it inside a runtime.
    pub fn now() -> Self {
        Self::starting_at(system_now_unix_ms())
    }

    pub fn starting_at(start_unix_ms: i64) -> Self {
        Self {
            start_unix_ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn shared(self) -> SharedClock {
        Arc::new(self)
    }
}

impl Clock for TokioClock {
    fn now_unix_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_unix_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_paused_time() {
        let clock = TokioClock::starting_at(1_000);
        assert_eq!(clock.now_unix_ms(), 1_000);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now_unix_ms(), 31_000);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now_unix_ms(), 31_250);
    }
}
