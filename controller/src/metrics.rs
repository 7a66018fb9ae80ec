//! The controller's Prometheus metrics. Counters and histograms move as
//! things happen; the per-host and per-state gauges are computed when
//! Prometheus scrapes, from the same state `lockstep gate check` reads.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestationLabels {
    /// "accepted" or "rejected".
    pub result: &'static str,
    /// Why it was rejected ("" when accepted): signature, replay, …
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    role: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// "sent", "retried", "failed" (gave up) or "dropped" (queue full).
    pub outcome: &'static str,
}

/// What a scrape reads from the controller's state.
pub struct Snapshot {
    /// (role, state word, number of hosts).
    pub gates: Vec<(String, &'static str, i64)>,
    /// (host, role, seconds since its last accepted attestation); hosts
    /// that never reported are left out.
    pub ages: Vec<(String, String, f64)>,
    pub open_incidents: i64,
}

pub struct Metrics {
    registry: Registry,
    pub attestations: Family<AttestationLabels, Counter>,
    /// Signature and rule checks of one attestation.
    pub verify_seconds: Histogram,
    /// Durable write (including fsync) of one change and its audit records.
    pub store_seconds: Histogram,
    /// Agents with an open directive stream.
    pub connected_agents: Gauge,
    /// Directive streams ever opened (a reconnect opens a new one).
    pub streams_opened: Counter,
    pub alerts: Family<AlertLabels, Counter>,
    hosts: Family<GateLabels, Gauge>,
    age: Family<HostLabels, Gauge<f64, AtomicU64>>,
    incidents_open: Gauge,
    /// 1 while connected to the SIEM collector.
    pub siem_connected: Gauge,
    /// The last audit seq written to the collector.
    pub siem_forwarded: Gauge,
    /// Audit records not yet written to the collector.
    pub siem_lag: Gauge,
    /// The store's size on disk (sled) or etcd's database size.
    pub store_bytes: Gauge,
    /// etcd's quota (`store.etcd.quota_mib`); 0 on sled.
    pub store_quota_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let attestations = Family::<AttestationLabels, Counter>::default();
        registry.register(
            "lockstep_attestations",
            "Attestations received, by result and rejection reason",
            attestations.clone(),
        );
        // 50 µs to ~1.6 s.
        let verify_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "lockstep_verify_seconds",
            "Time to verify one attestation (signature and checks)",
            verify_seconds.clone(),
        );
        let store_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "lockstep_store_seconds",
            "Time from asking to store a change (with its audit records) to it being durable; concurrent changes share one flush",
            store_seconds.clone(),
        );
        let connected_agents = Gauge::default();
        registry.register(
            "lockstep_connected_agents",
            "Agents with an open directive stream",
            connected_agents.clone(),
        );
        let streams_opened = Counter::default();
        registry.register(
            "lockstep_directive_streams_opened",
            "Directive streams opened by agents (each reconnect opens one)",
            streams_opened.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        registry.register(
            "lockstep_alert_deliveries",
            "Webhook deliveries by outcome (sent, retried, failed, dropped)",
            alerts.clone(),
        );
        let hosts = Family::<GateLabels, Gauge>::default();
        registry.register("lockstep_hosts", "Hosts by role and gate state", hosts.clone());
        let age = Family::<HostLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "lockstep_last_attestation_age_seconds",
            "Seconds since each host's last accepted attestation",
            age.clone(),
        );
        let incidents_open = Gauge::default();
        registry.register(
            "lockstep_incidents_open",
            "Incidents not yet resolved and acknowledged",
            incidents_open.clone(),
        );
        let siem_connected = Gauge::default();
        registry.register(
            "lockstep_siem_connected",
            "1 while the audit log is being forwarded to the SIEM collector ([siem]), else 0",
            siem_connected.clone(),
        );
        let siem_forwarded = Gauge::default();
        registry.register(
            "lockstep_siem_forwarded_seq",
            "The last audit record sequence number written to the SIEM collector",
            siem_forwarded.clone(),
        );
        let siem_lag = Gauge::default();
        registry.register(
            "lockstep_siem_lag_records",
            "Audit records not yet written to the SIEM collector",
            siem_lag.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "lockstep_store_bytes",
            "The store's size: sled's files, or etcd's database (what its quota is measured against)",
            store_bytes.clone(),
        );
        let store_quota_bytes = Gauge::default();
        registry.register(
            "lockstep_store_quota_bytes",
            "etcd's quota (store.etcd.quota_mib): past it etcd refuses every write; 0 on sled",
            store_quota_bytes.clone(),
        );
        Self {
            registry,
            attestations,
            verify_seconds,
            store_seconds,
            connected_agents,
            streams_opened,
            alerts,
            hosts,
            age,
            incidents_open,
            siem_connected,
            siem_forwarded,
            siem_lag,
            store_bytes,
            store_quota_bytes,
        }
    }

    pub fn attestation(&self, reason: Option<&'static str>) {
        let labels = match reason {
            None => AttestationLabels {
                result: "accepted",
                reason: "",
            },
            Some(reason) => AttestationLabels {
                result: "rejected",
                reason,
            },
        };
        self.attestations.get_or_create(&labels).inc();
    }

    pub fn alert(&self, outcome: &'static str) {
        self.alerts.get_or_create(&AlertLabels { outcome }).inc();
    }

    /// The Prometheus text exposition (OpenMetrics) of everything, with
    /// the scrape-time gauges set from `snapshot`.
    pub fn render(&self, snapshot: Snapshot) -> String {
        // Cleared first so a host removed from the inventory disappears.
        self.hosts.clear();
        for (role, state, n) in snapshot.gates {
            self.hosts.get_or_create(&GateLabels { role, state }).set(n);
        }
        self.age.clear();
        for (host, role, seconds) in snapshot.ages {
            self.age.get_or_create(&HostLabels { host, role }).set(seconds);
        }
        self.incidents_open.set(snapshot.open_incidents);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
