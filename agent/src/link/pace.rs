//! How soon the agent tries the controller again after a failure, for its
//! reports and its directive stream alike. A redirect ("not here": a
//! standby naming the leader, a controller that stood down) is followed at
//! once, a few in a row; a refusal a standby held while it waited for a
//! leader is followed at once too (the standby paced it). Otherwise: quick
//! retries for the first seconds of an outage (a failover takes a few),
//! then a full backoff so a fleet does not storm a controller coming back.

use std::time::Duration;

use lockstep_daemon::backoff::Backoff;
use tokio::time::Instant;

/// For this long into an outage, retries are at most [`FAST_RETRY_MAX`] apart.
pub const FAST_RETRY_FOR: Duration = Duration::from_secs(10);
pub const FAST_RETRY_MAX: Duration = Duration::from_secs(1);
/// Redirects followed at once in a row before the next attempt waits (a
/// standby naming a leader that has just died sends the agent round).
const IMMEDIATE_REDIRECTS: u32 = 3;
/// A refusal that took this long was held by a standby waiting for a leader.
const HELD: Duration = Duration::from_millis(500);

pub struct Pace {
    backoff: Backoff,
    down_since: Option<Instant>,
    redirects_in_a_row: u32,
}

impl Pace {
    /// Backing off from 250 ms, doubling to `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(250), max),
            down_since: None,
            redirects_in_a_row: 0,
        }
    }

    /// The link works again.
    pub fn succeeded(&mut self) {
        self.backoff.reset();
        self.down_since = None;
        self.redirects_in_a_row = 0;
    }

    /// Whether the link was down before this failure (one warning per outage).
    pub fn was_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// How long to wait after `failure`.
    pub fn failed(&mut self, failure: Failure) -> Duration {
        let down_since = *self.down_since.get_or_insert_with(Instant::now);
        let mut pause = self.backoff.next_delay();
        if down_since.elapsed() < FAST_RETRY_FOR {
            pause = pause.min(FAST_RETRY_MAX);
        }
        match failure {
            Failure::Plain => {
                self.redirects_in_a_row = 0;
                pause
            }
            Failure::Redirect { held: true } => Duration::ZERO,
            Failure::Redirect { held: false } if self.redirects_in_a_row < IMMEDIATE_REDIRECTS => {
                self.redirects_in_a_row += 1;
                Duration::ZERO
            }
            Failure::Redirect { held: false } => {
                self.redirects_in_a_row = 0;
                pause
            }
        }
    }
}

/// What a failed call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable, or an error that is not a redirect.
    Plain,
    /// "Not here" ([`lockstep_link::failover::refused_here`]); `held`: the
    /// answer took long enough that a standby held it for a leader.
    Redirect { held: bool },
}

impl Failure {
    /// The failure of a call sent at `sent` and answered `status`.
    pub fn of(status: &tonic::Status, sent: Instant) -> Self {
        if lockstep_link::failover::refused_here(status.metadata().as_ref()) {
            Self::Redirect {
                held: sent.elapsed() >= HELD,
            }
        } else {
            Self::Plain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> tonic::Status {
        let mut s = tonic::Status::unavailable("a standby");
        s.metadata_mut()
            .insert(lockstep_link::failover::NOT_LEADER_HEADER, "standby".parse().unwrap());
        s
    }

    #[tokio::test(start_paused = true)]
    async fn redirects_go_at_once_a_few_in_a_row_and_held_ones_always() {
        let mut p = Pace::new(Duration::from_secs(30));
        let now = Instant::now();
        for _ in 0..IMMEDIATE_REDIRECTS {
            assert_eq!(p.failed(Failure::of(&redirect(), now)), Duration::ZERO);
        }
        assert!(
            p.failed(Failure::of(&redirect(), now)) > Duration::ZERO,
            "then it waits"
        );
        let sent = Instant::now();
        tokio::time::advance(HELD).await;
        assert_eq!(
            p.failed(Failure::of(&redirect(), sent)),
            Duration::ZERO,
            "a held refusal paced it already"
        );
        let plain = tonic::Status::unavailable("connection refused");
        let pause = p.failed(Failure::of(&plain, Instant::now()));
        assert!(pause > Duration::ZERO && pause <= FAST_RETRY_MAX, "{pause:?}");
        assert!(p.was_down());
        p.succeeded();
        assert!(!p.was_down());
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_first_seconds_of_an_outage_it_backs_off_fully() {
        let mut p = Pace::new(Duration::from_secs(30));
        p.failed(Failure::Plain);
        tokio::time::advance(FAST_RETRY_FOR).await;
        let longest = (0..10).map(|_| p.failed(Failure::Plain)).max().unwrap();
        assert!(longest > FAST_RETRY_MAX, "{longest:?}");
    }
}
