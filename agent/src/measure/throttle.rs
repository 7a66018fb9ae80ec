//! A byte-rate limit for scan reads during market hours: a token bucket
//! shared by the scan's worker threads. Each read of a chunk takes its
//! bytes from the bucket first and sleeps until the bucket has them, so over
//! any stretch of the scan the bytes read stay within rate × time + one
//! burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest one sleep lasts before a cancel is checked.
const CANCEL_SLICE: Duration = Duration::from_millis(100);

/// The time source and the sleep of a throttle: real in the agent, a
/// virtual clock in tests (so they count bytes against time, never wait).
pub trait Pace: Send + Sync + std::fmt::Debug {
    /// Time since an arbitrary start.
    fn now(&self) -> Duration;
    fn sleep(&self, d: Duration);
}

/// The machine's monotonic clock.
#[derive(Debug)]
pub struct RealPace(std::time::Instant);

impl Default for RealPace {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Pace for RealPace {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be read now (negative: owed by a read larger than the burst).
    tokens: f64,
    at: Duration,
}

/// Limits reads to `bytes_per_sec`, in bursts of at most `burst` bytes.
#[derive(Debug, Clone)]
pub struct Throttle {
    bytes_per_sec: u64,
    burst: u64,
    pace: Arc<dyn Pace>,
    bucket: Arc<Mutex<Bucket>>,
    /// Nanoseconds spent waiting, over every caller.
    waited_ns: Arc<AtomicU64>,
    /// Set when the scan it paces is abandoned (the agent is stopping).
    cancelled: Arc<std::sync::atomic::AtomicBool>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64, burst: u64, pace: Arc<dyn Pace>) -> Self {
        let now = pace.now();
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            burst: burst.max(1),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: burst as f64,
                at: now,
            })),
            pace,
            waited_ns: Arc::new(AtomicU64::new(0)),
            cancelled: Arc::default(),
        }
    }

    /// Abandons the scan: no more waiting, and its workers stop taking files.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Time spent waiting for the rate, summed over every caller.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `bytes` may be read. Returns how long it waited.
    pub fn take(&self, bytes: u64) -> Duration {
        if self.is_cancelled() {
            return Duration::ZERO;
        }
        let wait = {
            let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.pace.now();
            let earned = now.saturating_sub(b.at).as_secs_f64() * self.bytes_per_sec as f64;
            b.tokens = (b.tokens + earned).min(self.burst as f64) - bytes as f64;
            b.at = now;
            // Taken now, paid for by waiting: later callers queue behind it.
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / self.bytes_per_sec as f64)
            }
        };
        if !wait.is_zero() {
            let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            self.waited_ns.fetch_add(ns, Ordering::Relaxed);
            // In slices, so a cancel is heard within one.
            let mut left = wait;
            while !left.is_zero() && !self.is_cancelled() {
                let slice = left.min(CANCEL_SLICE);
                self.pace.sleep(slice);
                left -= slice;
            }
        }
        wait
    }
}

#[cfg(test)]
pub mod virtual_pace {
    //! A clock that moves only when someone sleeps on it.
    use super::*;

    #[derive(Debug, Default)]
    pub struct VirtualPace(Mutex<Duration>);

    impl Pace for VirtualPace {
        fn now(&self) -> Duration {
            *self.0.lock().unwrap()
        }
        fn sleep(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::virtual_pace::VirtualPace;
    use super::*;

    #[test]
    fn reads_stay_within_the_rate_and_one_burst() {
        let pace = Arc::new(VirtualPace::default());
        let t = Throttle::new(10 << 20, 1 << 20, pace.clone());
        let mut read = 0u64;
        for _ in 0..200 {
            t.take(256 << 10);
            read += 256 << 10;
            let allowed = pace.now().as_secs_f64() * (10 << 20) as f64 + (1 << 20) as f64;
            assert!(read as f64 <= allowed + 1.0, "{read} bytes by {:?}", pace.now());
        }
        // 50 MiB at 10 MiB/s, less the first burst: 4.9 s of virtual time.
        let took = pace.now().as_secs_f64();
        assert!((4.85..=4.95).contains(&took), "{took}");
    }

    #[test]
    fn a_cancelled_throttle_no_longer_waits() {
        let pace = Arc::new(VirtualPace::default());
        let t = Throttle::new(1 << 20, 1 << 20, pace.clone());
        t.take(1 << 20);
        t.clone().cancel();
        assert_eq!(t.take(64 << 20), Duration::ZERO);
        assert_eq!(pace.now(), Duration::ZERO);
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_burst() {
        let pace = Arc::new(VirtualPace::default());
        let t = Throttle::new(1 << 20, 1 << 20, pace.clone());
        pace.sleep(Duration::from_secs(60));
        assert_eq!(t.take(1 << 20), Duration::ZERO);
        let waited = t.take(1 << 20);
        assert!((0.99..=1.01).contains(&waited.as_secs_f64()), "{waited:?}");
    }
}
