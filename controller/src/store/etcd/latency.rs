//! How long etcd takes to answer this controller, by call ("writing a
//! commit", "renewing the leader lease", …), and how many calls failed,
//! for `/metrics` on the leader and the standbys alike. A slow etcd is the
//! first sign of a failover to come (a lease renewal that takes longer
//! than two thirds of `leader_ttl` deposes the leader).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// What was asked (a fixed phrase per call site).
    call: String,
}

fn histogram() -> Histogram {
    // 100 µs to ~3.3 s: past any request_timeout worth having.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

pub struct Latency {
    registry: Registry,
    seconds: Family<CallLabels, Histogram, fn() -> Histogram>,
    failures: Family<CallLabels, Counter>,
}

impl Default for Latency {
    fn default() -> Self {
        let mut registry = Registry::default();
        let seconds =
            Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        registry.register(
            "lockstep_etcd_request_seconds",
            "Time etcd took to answer this controller, by call (a call that timed out counts its timeout)",
            seconds.clone(),
        );
        let failures = Family::<CallLabels, Counter>::default();
        registry.register(
            "lockstep_etcd_request_failures",
            "etcd calls that failed or went unanswered, by call",
            failures.clone(),
        );
        Self {
            registry,
            seconds,
            failures,
        }
    }
}

impl Latency {
    pub fn observe(&self, call: &str, took: Duration, ok: bool) {
        let labels = CallLabels { call: call.to_string() };
        self.seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if !ok {
            self.failures.get_or_create(&labels).inc();
        }
    }

    /// The metrics as OpenMetrics text, without the closing `# EOF` (they
    /// go into a page that has its own).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the etcd latency metrics");
        }
        out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_call_with_its_count_and_failures_without_eof() {
        let l = Latency::default();
        l.observe("writing a commit", Duration::from_millis(3), true);
        l.observe("writing a commit", Duration::from_millis(5), false);
        l.observe("reading", Duration::from_micros(400), true);
        let text = l.render();
        assert!(
            text.contains("lockstep_etcd_request_seconds_count{call=\"writing a commit\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_etcd_request_seconds_count{call=\"reading\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lockstep_etcd_request_failures_total{call=\"writing a commit\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
