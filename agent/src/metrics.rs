//! The agent's small Prometheus surface: how long scans take, how much they
//! measure, and when the controller last accepted a report.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// "accepted", "refused" (the controller said no) or "failed" (no answer).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FullScanLabels {
    /// "open" (no budget) or "budgeted" (in market hours).
    pub budget: &'static str,
    /// "periodic", "first" (nothing hashed yet) or "requested" (an operator).
    pub cause: &'static str,
}

pub struct AgentMetrics {
    registry: Registry,
    pub full_scans: Family<FullScanLabels, Counter>,
    pub full_scans_deferred: Counter,
    pub scan_throttled_seconds: Counter<f64, AtomicU64>,
    pub scan_seconds: Histogram,
    pub files_measured: Gauge,
    pub bytes_hashed: Counter,
    pub reports: Family<ReportLabels, Counter>,
    pub last_report: Gauge<f64, AtomicU64>,
    pub cert_expiry: Gauge<f64, AtomicU64>,
    pub quote_seconds: Histogram,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 1 ms to ~65 s.
        let scan_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "lockstep_agent_scan_seconds",
            "Time to measure the host (files, config keys, processes)",
            scan_seconds.clone(),
        );
        let files_measured = Gauge::default();
        registry.register(
            "lockstep_agent_files_measured",
            "Entries in the last measurement",
            files_measured.clone(),
        );
        let bytes_hashed = Counter::default();
        registry.register(
            "lockstep_agent_hashed_bytes",
            "Bytes read and hashed (unchanged files are not re-hashed)",
            bytes_hashed.clone(),
        );
        let reports = Family::<ReportLabels, Counter>::default();
        registry.register("lockstep_agent_reports", "Reports sent, by result", reports.clone());
        let last_report = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lockstep_agent_last_successful_report_timestamp_seconds",
            "Unix time the controller last accepted a report (0: never)",
            last_report.clone(),
        );
        let cert_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lockstep_agent_cert_expiry_timestamp_seconds",
            "Unix time the agent's TLS certificate expires (renewed before)",
            cert_expiry.clone(),
        );
        let full_scans = Family::<FullScanLabels, Counter>::default();
        registry.register(
            "lockstep_agent_full_scans",
            "Full scans (every file hashed), by market-hours budget and cause",
            full_scans.clone(),
        );
        let full_scans_deferred = Counter::default();
        registry.register(
            "lockstep_agent_full_scans_deferred",
            "Periodic full rescans that came due in market hours and wait for the window to end",
            full_scans_deferred.clone(),
        );
        let scan_throttled_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "lockstep_agent_scan_throttled_seconds",
            "Time scan workers waited on the market-hours byte rate",
            scan_throttled_seconds.clone(),
        );
        let quote_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "lockstep_agent_tpm_quote_seconds",
            "Time the TPM took to quote (opening it, the EK, loading the AK, the quote, reading the PCRs)",
            quote_seconds.clone(),
        );
        Self {
            quote_seconds,
            registry,
            full_scans,
            full_scans_deferred,
            scan_throttled_seconds,
            cert_expiry,
            scan_seconds,
            files_measured,
            bytes_hashed,
            reports,
            last_report,
        }
    }

    pub fn report(&self, result: &'static str) {
        self.reports.get_or_create(&ReportLabels { result }).inc();
        if result == "accepted" {
            #[allow(clippy::cast_precision_loss)] // ms since 1970 fit an f64's 53 bits
            self.last_report.set(lockstep_proto::now_unix_ms() as f64 / 1000.0);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
