//! The controller's TOML configuration: a raw file struct, then a validated
//! [`ControllerConfig`] handed down explicitly.
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! data_dir = "/var/lib/lockstep-controller"
//! freshness_ttl = "30s"
//! max_clock_skew = "30s"
//!
//! [tls]
//! ca = "/etc/lockstep/ca.pem"
//! cert = "/etc/lockstep/controller.pem"
//! key = "/etc/lockstep/controller.key"
//!
//! [[role]]
//! name = "smars"
//! mode = "release"          # or "consensus"
//! hosts = ["smars-01", "smars-02"]
//! per_host = ["/etc/smars/host.conf"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
pub use lockstep_daemon::config::ConfigError;
use lockstep_daemon::config::duration;
use lockstep_link::tls::TlsPaths;
use lockstep_proto::envelope::Limits;
use lockstep_proto::identity::validate_id;
use serde::Deserialize;

/// How to reach the webhook.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: http::Uri,
    /// Extra CA for an internal HTTPS endpoint (system roots otherwise).
    pub ca: Option<std::path::PathBuf>,
    pub queue: usize,
    pub max_attempts: u32,
    pub timeout: Duration,
}

/// `[alerts]` in the controller config.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub webhook: Option<WebhookSettings>,
    pub grouping: Grouping,
    /// How often the controller re-verifies its whole audit chain.
    pub audit_verify_interval: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhook: None,
            grouping: Grouping {
                wait_ms: 2_000,
                max_wait_ms: 30_000,
            },
            audit_verify_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    data_dir: PathBuf,
    #[serde(default)]
    freshness_ttl: Option<String>,
    #[serde(default)]
    max_clock_skew: Option<String>,
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, rename = "role")]
    roles: Vec<RawRole>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    enrollment: RawEnrollment,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    siem: RawSiem,
    #[serde(default)]
    board: RawBoard,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    tpm: RawTpm,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTpm {
    quote_max_age: Option<String>,
    #[serde(default)]
    ek_ca: Vec<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    segment: Option<String>,
    segment_records: Option<u64>,
    keep_online: Option<String>,
    archive_dir: Option<PathBuf>,
}

/// `[audit]`: the log cut into segments, each closed by a signed
/// checkpoint, and the segments older than `keep_online` moved from the
/// store to files in `archive_dir`.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// A segment closes at each multiple of this since the Unix epoch (a
    /// day: UTC midnight), or sooner once it holds `segment_records`.
    pub segment: Duration,
    pub segment_records: u64,
    /// A closed segment stays in the store this long after its last record.
    pub keep_online: Duration,
    pub archive_dir: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBoard {
    listen: Option<String>,
    url: Option<String>,
    session_ttl: Option<String>,
    login_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSiem {
    syslog_address: Option<String>,
    syslog_ca: Option<PathBuf>,
    syslog_server_name: Option<String>,
    tls_min: Option<String>,
    sd_id: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    min_free_mib: Option<u64>,
    cache_mib: Option<u64>,
    stall_timeout: Option<String>,
    backend: Option<String>,
    etcd: Option<RawEtcd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    prefix: Option<String>,
    request_timeout: Option<String>,
    leader_ttl: Option<String>,
    name: Option<String>,
    advertise: Option<String>,
    max_txn_ops: Option<usize>,
    quota_mib: Option<u64>,
}

/// `[store.etcd]`: the replicated backend. Several controllers share one
/// prefix; one leads (an etcd lease) and the others stand by.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    /// `host:port` of each etcd member (clients talk TLS to them).
    pub endpoints: Vec<String>,
    /// Client certificate, key and the CA that signed etcd's certificates.
    pub tls: TlsPaths,
    /// Every key lockstep writes starts with it (one fleet per prefix).
    pub prefix: String,
    /// A call etcd has not answered by then fails (quorum lost, member down).
    pub request_timeout: Duration,
    /// The leader's lease: a leader that cannot renew it within this time
    /// steps down, and a standby takes over after it ends.
    pub leader_ttl: Duration,
    /// This controller's name in `lockstep cluster status` and the leader key.
    pub name: String,
    /// Where agents and consoles reach this controller (told to the others).
    pub advertise: String,
    /// etcd's `--max-txn-ops`: a commit larger than this is written in
    /// several fenced transactions.
    pub max_txn_ops: usize,
    /// etcd's `--quota-backend-bytes` (etcd does not tell its clients): an
    /// incident opens at 70 % of it, well before etcd refuses every write.
    pub quota_bytes: u64,
}

/// Which store the controller keeps its ledger in.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded default: `data_dir/store`, one controller.
    Sled,
    Etcd(Box<EtcdSettings>),
}

/// `[store]`: how the controller protects its store from a full or failing disk.
#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    /// Below this much free space on the store's filesystem nothing is
    /// written (and nothing acknowledged): a disk that fills up stops the
    /// controller cleanly instead of failing half-way through a write.
    pub min_free_bytes: u64,
    /// A write that has not finished by then is a failed store: nothing
    /// more is written until the controller restarts.
    pub stall_timeout: Duration,
    /// sled's page cache (sled only). Long reads (`audit verify`, a
    /// report) fill it and the process keeps it: its size is the memory a
    /// read can leave behind. The operating system's file cache still
    /// holds the rest of the store.
    pub sled_cache_bytes: u64,
}

/// sled's page cache when `[store] cache_mib` is not set: enough for the
/// hot trees (hosts, releases, the open segment's tail); sled's own default
/// is 1 GiB, which a long read of the audit log fills and never returns.
pub const DEFAULT_SLED_CACHE_MIB: u64 = 64;

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            min_free_bytes: 256 << 20,
            stall_timeout: Duration::from_secs(15),
            sled_cache_bytes: DEFAULT_SLED_CACHE_MIB << 20,
        }
    }
}

fn etcd_settings(
    raw: RawEtcd,
    listen: SocketAddr,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<EtcdSettings, ConfigError> {
    if raw.endpoints.is_empty() {
        return Err(invalid(
            "store.etcd.endpoints",
            "give at least one etcd member as \"host:port\"".into(),
        ));
    }
    for e in &raw.endpoints {
        if e.contains("://") {
            return Err(invalid(
                "store.etcd.endpoints",
                format!("{e:?}: give host:port without a scheme (lockstep talks to etcd over mutual TLS only)"),
            ));
        }
        lockstep_link::tls::default_server_name(e)
            .map_err(|err| invalid("store.etcd.endpoints", format!("{e:?}: {err}; give host:port")))?;
    }
    let prefix = raw.prefix.unwrap_or_else(|| "/lockstep/".to_string());
    if !prefix.ends_with('/') {
        return Err(invalid("store.etcd.prefix", format!("{prefix:?} must end with '/'")));
    }
    let request_timeout = duration(raw.request_timeout.as_deref(), Duration::from_secs(2))
        .map_err(|e| invalid("store.etcd.request_timeout", e))?;
    let leader_ttl =
        duration(raw.leader_ttl.as_deref(), Duration::from_secs(3)).map_err(|e| invalid("store.etcd.leader_ttl", e))?;
    if leader_ttl < Duration::from_secs(2) || leader_ttl.subsec_nanos() != 0 {
        return Err(invalid(
            "store.etcd.leader_ttl",
            "give whole seconds, at least 2s (etcd leases count seconds)".into(),
        ));
    }
    let name = match raw.name {
        Some(n) if !n.is_empty() => n,
        _ => {
            std::fs::read_to_string("/etc/hostname").map_or_else(|_| "controller".to_string(), |h| h.trim().to_string())
        }
    };
    let max_txn_ops = raw.max_txn_ops.unwrap_or(128);
    if max_txn_ops < 16 {
        return Err(invalid(
            "store.etcd.max_txn_ops",
            "must be at least 16 (etcd's default is 128)".into(),
        ));
    }
    let quota_mib = raw.quota_mib.unwrap_or(2048);
    if quota_mib < 16 {
        return Err(invalid(
            "store.etcd.quota_mib",
            "must be at least 16: give etcd's --quota-backend-bytes in MiB (its default is 2048)".into(),
        ));
    }
    Ok(EtcdSettings {
        endpoints: raw.endpoints,
        tls: TlsPaths {
            ca: raw.ca,
            cert: raw.cert,
            key: raw.key,
        },
        prefix,
        request_timeout,
        leader_ttl,
        name,
        advertise: raw.advertise.unwrap_or_else(|| listen.to_string()),
        max_txn_ops,
        quota_bytes: quota_mib << 20,
    })
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnrollment {
    ca_key: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    cert_validity: Option<String>,
    token_ttl: Option<String>,
}

/// `[enrollment]`: the controller signs agent certificates with the fleet
/// CA's key, for hosts that present a join token.
#[derive(Debug, Clone)]
pub struct EnrollmentConfig {
    /// Without it, enrollment and renewal are refused (certificates are
    /// issued by hand with `lockstep pki`).
    pub ca_key: Option<PathBuf>,
    pub ca_cert: PathBuf,
    pub cert_validity: Duration,
    /// Default lifetime of a join token.
    pub token_ttl: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<String>,
    webhook_ca: Option<PathBuf>,
    group_wait: Option<String>,
    group_wait_max: Option<String>,
    queue: Option<usize>,
    max_attempts: Option<u32>,
    timeout: Option<String>,
    audit_verify_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<usize>,
    max_entries: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: String,
    #[serde(default)]
    mode: Option<String>,
    hosts: Vec<String>,
    #[serde(default)]
    per_host: Vec<String>,
    #[serde(default)]
    retired_flags: Vec<String>,
    #[serde(default)]
    require_tpm: bool,
}

/// How a role's expected version set is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleMode {
    /// The role's active (newest approved) release.
    Release,
    /// The set held by a strict majority of the role's inventory.
    Consensus,
}

impl RoleMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Consensus => "consensus",
        }
    }
}

/// One role: the hosts it must have and how they are compared.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    pub name: String,
    pub mode: RoleMode,
    /// The inventory: every host this role must have, reported or not.
    pub hosts: Vec<String>,
    pub per_host_patterns: Vec<String>,
    /// Paths attested but left out of comparison (hostname-specific files).
    /// Decided here, never by the host, so a host cannot exempt its own binaries.
    pub per_host: GlobSet,
    /// Config keys (`power_peg`, `router.power_peg`) and command-line flags
    /// (`--power-peg`) that must not be set anywhere on a host of this role.
    pub retired_flags: Vec<String>,
    /// Every host of the role must have a TPM-bound identity (enrolled
    /// with `[identity] tpm`): one without is CLOSED.
    pub require_tpm: bool,
}

impl RoleConfig {
    /// Per-host files, and the keys of per-host config files (`<file>#key`).
    pub fn is_per_host(&self, path: &[u8]) -> bool {
        if self.per_host.is_empty() {
            return false;
        }
        let file = path.iter().rposition(|b| *b == b'#').map_or(path, |i| &path[..i]);
        self.per_host.is_match(lockstep_proto::paths::from_bytes(path))
            || self.per_host.is_match(lockstep_proto::paths::from_bytes(file))
    }

    /// Left out of the version-set comparison (rule 5): per-host paths, and
    /// what runs (judged by rule 6 against the expected files instead).
    pub fn is_excluded_from_comparison(&self, path: &[u8]) -> bool {
        path.starts_with(b"proc:") || self.is_per_host(path)
    }
}

/// `[siem]`: the collector sealed audit records are forwarded to, as
/// RFC 5424 syslog over TLS (RFC 5425).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiemSettings {
    /// host:port of the collector (6514 is syslog over TLS).
    pub address: String,
    pub server_name: String,
    /// CA that signed the collector's certificate (default: the fleet CA).
    pub ca: PathBuf,
    /// Also TLS 1.2 (ECDHE with AES-GCM or ChaCha20-Poly1305 only) when the
    /// collector offers no 1.3, as Debian's stock rsyslog-gnutls does.
    pub allow_tls12: bool,
    /// The RFC 5424 structured-data id: `name@` a private enterprise number.
    pub sd_id: String,
}

/// The enterprise number RFC 5612 reserves for documentation: examples
/// use it, a SIEM feed may not.
const DOCUMENTATION_PEN: &str = "@32473";

/// `[board]`: the fleet board, a web page served over HTTPS with the
/// controller's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardSettings {
    pub listen: SocketAddr,
    /// The address operators open (login links start with it).
    pub url: String,
    /// How long a board session lasts.
    pub session_ttl: Duration,
    /// How long a login link from `lockstep board login` can be opened.
    pub login_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub freshness_ttl: Duration,
    pub max_clock_skew: Duration,
    pub tls: TlsPaths,
    pub limits: Limits,
    /// Where `/metrics` is served (plain HTTP); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    pub alerts: AlertSettings,
    pub enrollment: EnrollmentConfig,
    pub store: StoreSettings,
    pub backend: Backend,
    /// Where sealed audit records are forwarded (`[siem]`); `None`: nowhere.
    pub siem: Option<SiemSettings>,
    /// The fleet board (`[board]`); `None`: not served.
    pub board: Option<BoardSettings>,
    pub audit: AuditSettings,
    /// `[tpm] quote_max_age`: a TPM-bound host whose last verified quote is
    /// older is CLOSED (its TPM stopped answering, or its agent did).
    pub tpm_quote_max_age: Duration,
    /// `[tpm] ek_ca`: TPM vendor CA certificates (PEM). When set, a TPM
    /// enrolls only with an EK certificate one of them signed; unset, the
    /// EK is pinned at first enrollment.
    pub tpm_ek_ca: Vec<PathBuf>,
    pub roles: BTreeMap<String, RoleConfig>,
    /// host → role, from the inventories.
    pub inventory: HashMap<String, String>,
}

/// A role or host a call named that the controller's config does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInConfig {
    #[error("no role {name:?} in the controller config; roles: {}", known.join(", "))]
    UnknownRole { name: String, known: Vec<String> },
    #[error("host {host} is not in any role's inventory")]
    UnknownHost { host: String },
}

/// Timing of incident notifications (`[alerts]`).
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    /// Quiet time after the last change before notifying, so related
    /// failures arriving together go out as one.
    pub wait_ms: i64,
    /// A storm that never pauses is still reported after this long.
    pub max_wait_ms: i64,
}

impl ControllerConfig {
    /// The largest gRPC message a controller takes or sends: the largest
    /// payload, and room for the envelope around it.
    pub fn max_message_bytes(&self) -> usize {
        self.limits.max_payload_bytes + 64 * 1024
    }

    /// The role named `name`, or an error listing the roles there are.
    pub fn role(&self, name: &str) -> Result<&RoleConfig, NotInConfig> {
        self.roles.get(name).ok_or_else(|| NotInConfig::UnknownRole {
            name: name.to_string(),
            known: self.roles.keys().cloned().collect(),
        })
    }

    /// The role whose inventory holds `host`.
    pub fn host_role(&self, host: &str) -> Result<&RoleConfig, NotInConfig> {
        let role = self
            .inventory
            .get(host)
            .ok_or_else(|| NotInConfig::UnknownHost { host: host.to_string() })?;
        self.role(role)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        let listen = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{:?} is not an address like \"0.0.0.0:7443\"", raw.listen),
            )
        })?;
        let freshness_ttl =
            duration(raw.freshness_ttl.as_deref(), Duration::from_secs(30)).map_err(|e| invalid("freshness_ttl", e))?;
        let max_clock_skew = duration(raw.max_clock_skew.as_deref(), Duration::from_secs(30))
            .map_err(|e| invalid("max_clock_skew", e))?;
        let tpm_quote_max_age = duration(raw.tpm.quote_max_age.as_deref(), Duration::from_secs(180))
            .map_err(|e| invalid("tpm.quote_max_age", e))?;
        let defaults = Limits::default();
        let limits = Limits {
            max_payload_bytes: raw.limits.max_message_bytes.unwrap_or(defaults.max_payload_bytes),
            max_entries: raw.limits.max_entries.unwrap_or(defaults.max_entries),
        };
        let metrics_listen = match raw.metrics.listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT))),
            Some("") | Some("off") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{a:?} is not an address like \"127.0.0.1:9720\" (or \"off\")"),
                )
            })?),
        };
        let alerts = alert_settings(raw.alerts).map_err(|(k, e)| invalid(&format!("alerts.{k}"), e))?;
        let cert_validity = duration(
            raw.enrollment.cert_validity.as_deref(),
            Duration::from_secs(30 * 24 * 3600),
        )
        .map_err(|e| invalid("enrollment.cert_validity", e))?;
        if cert_validity < Duration::from_secs(5) {
            return Err(invalid("enrollment.cert_validity", "must be at least 5s".into()));
        }
        let enrollment = EnrollmentConfig {
            ca_key: raw.enrollment.ca_key,
            ca_cert: raw.enrollment.ca_cert.unwrap_or_else(|| raw.tls.ca.clone()),
            cert_validity,
            token_ttl: duration(raw.enrollment.token_ttl.as_deref(), Duration::from_secs(3600))
                .map_err(|e| invalid("enrollment.token_ttl", e))?,
        };
        let store_defaults = StoreSettings::default();
        let store = StoreSettings {
            min_free_bytes: raw
                .store
                .min_free_mib
                .map_or(store_defaults.min_free_bytes, |m| m.saturating_mul(1 << 20)),
            stall_timeout: duration(raw.store.stall_timeout.as_deref(), store_defaults.stall_timeout)
                .map_err(|e| invalid("store.stall_timeout", e))?,
            sled_cache_bytes: match raw.store.cache_mib {
                None => store_defaults.sled_cache_bytes,
                Some(m) if (8..=65_536).contains(&m) => m << 20,
                Some(m) => {
                    return Err(invalid(
                        "store.cache_mib",
                        format!("{m}: give a size in MiB from 8 to 65536"),
                    ));
                }
            },
        };
        if store.stall_timeout < Duration::from_secs(1) {
            return Err(invalid("store.stall_timeout", "must be at least 1s".into()));
        }
        let backend = match (raw.store.backend.as_deref(), raw.store.etcd) {
            (None | Some("sled"), None) => Backend::Sled,
            (Some("sled"), Some(_)) => {
                return Err(invalid(
                    "store.etcd",
                    "is set but store.backend is \"sled\"; remove one".into(),
                ));
            }
            (None | Some("etcd"), Some(e)) => Backend::Etcd(Box::new(etcd_settings(e, listen, &invalid)?)),
            (Some("etcd"), None) => {
                return Err(invalid(
                    "store.backend",
                    "\"etcd\" needs a [store.etcd] table with endpoints, ca, cert and key".into(),
                ));
            }
            (Some(other), _) => {
                return Err(invalid(
                    "store.backend",
                    format!("{other:?} is not a backend; give \"sled\" or \"etcd\""),
                ));
            }
        };
        let siem = match raw.siem.syslog_address {
            None => None,
            Some(address) => {
                let server_name = match raw.siem.syslog_server_name {
                    Some(n) => n,
                    None => lockstep_link::tls::default_server_name(&address).map_err(|e| {
                        invalid(
                            "siem.syslog_address",
                            format!("{e}; give host:port, like \"siem.example:6514\""),
                        )
                    })?,
                };
                let allow_tls12 = match raw.siem.tls_min.as_deref() {
                    None | Some("1.2") => true,
                    Some("1.3") => false,
                    Some(other) => {
                        return Err(invalid(
                            "siem.tls_min",
                            format!("{other:?}: give \"1.2\" (the default) or \"1.3\""),
                        ));
                    }
                };
                // No default: an SD-ID names an enterprise number, and the
                // only one that belongs to nobody is the documentation one.
                let Some(sd_id) = raw.siem.sd_id else {
                    return Err(invalid(
                        "siem.sd_id",
                        "not set: give NAME@NUMBER with your firm's private enterprise number (IANA assigns one, free), like sd_id = \"lockstep@12345\"; the collector's parser keys on it (RFC 5424 7.2.2)".to_string(),
                    ));
                };
                if sd_id.ends_with(DOCUMENTATION_PEN) {
                    return Err(invalid(
                        "siem.sd_id",
                        format!(
                            "{sd_id:?}: 32473 is the enterprise number RFC 5612 reserves for documentation; give your firm's own"
                        ),
                    ));
                }
                let valid_sd_id = sd_id.split_once('@').is_some_and(|(name, pen)| {
                    !name.is_empty()
                        && name.len() + pen.len() < 32
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"' | b'@'))
                        && !pen.is_empty()
                        && pen.bytes().all(|b| b.is_ascii_digit() || b == b'.')
                });
                if !valid_sd_id {
                    return Err(invalid(
                        "siem.sd_id",
                        format!(
                            "{sd_id:?}: give NAME@NUMBER with your firm's private enterprise number, like \"lockstep@12345\" (RFC 5424 7.2.2)"
                        ),
                    ));
                }
                Some(SiemSettings {
                    address,
                    server_name,
                    ca: raw.siem.syslog_ca.unwrap_or_else(|| raw.tls.ca.clone()),
                    allow_tls12,
                    sd_id,
                })
            }
        };
        let board = match raw.board.listen {
            None => None,
            Some(at) => {
                let listen: SocketAddr = at
                    .parse()
                    .map_err(|e| invalid("board.listen", format!("{e}; give ip:port, like \"0.0.0.0:7444\"")))?;
                if listen.ip().is_unspecified() && raw.board.url.is_none() {
                    return Err(invalid(
                        "board.url",
                        format!(
                            "must be set when board.listen is {listen}: give the name operators open and the controller's certificate carries, like \"https://ctl-1.example:{}\"",
                            listen.port()
                        ),
                    ));
                }
                let url = raw.board.url.unwrap_or_else(|| format!("https://{listen}"));
                if !url.starts_with("https://") {
                    return Err(invalid(
                        "board.url",
                        "must start with https:// (the board is served over TLS only)".into(),
                    ));
                }
                let session_ttl = duration(raw.board.session_ttl.as_deref(), Duration::from_secs(12 * 3600))
                    .map_err(|e| invalid("board.session_ttl", e))?;
                let login_ttl = duration(raw.board.login_ttl.as_deref(), Duration::from_secs(120))
                    .map_err(|e| invalid("board.login_ttl", e))?;
                for (key, ttl) in [("board.session_ttl", session_ttl), ("board.login_ttl", login_ttl)] {
                    if ttl.is_zero() {
                        return Err(invalid(key, "must be more than 0s".into()));
                    }
                }
                if login_ttl > Duration::from_secs(3600) {
                    return Err(invalid(
                        "board.login_ttl",
                        "at most 1h: a login link is a credential in a terminal's scrollback".into(),
                    ));
                }
                Some(BoardSettings {
                    listen,
                    url: url.trim_end_matches('/').to_string(),
                    session_ttl,
                    login_ttl,
                })
            }
        };
        let audit = audit_settings(raw.audit, &raw.data_dir).map_err(|(k, e)| invalid(&format!("audit.{k}"), e))?;
        let mut roles = BTreeMap::new();
        let mut inventory = HashMap::new();
        for (i, r) in raw.roles.into_iter().enumerate() {
            let key = |k: &str| format!("role[{i}].{k}");
            validate_id(&r.name).map_err(|e| invalid(&key("name"), e.to_string()))?;
            let mode = match r.mode.as_deref() {
                None | Some("release") => RoleMode::Release,
                Some("consensus") => RoleMode::Consensus,
                Some(other) => {
                    return Err(invalid(
                        &key("mode"),
                        format!("{other:?}: use \"release\" or \"consensus\""),
                    ));
                }
            };
            if r.hosts.is_empty() {
                return Err(invalid(&key("hosts"), format!("role {} lists no hosts", r.name)));
            }
            for h in &r.hosts {
                validate_id(h).map_err(|e| invalid(&key("hosts"), e.to_string()))?;
                if let Some(prev) = inventory.insert(h.clone(), r.name.clone()) {
                    return Err(invalid(
                        &key("hosts"),
                        format!("host {h} is already in role {prev}; a host has one role"),
                    ));
                }
            }
            let mut set = GlobSetBuilder::new();
            for p in &r.per_host {
                let glob = globset::GlobBuilder::new(p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| invalid(&key("per_host"), format!("{p:?}: {e}")))?;
                set.add(glob);
            }
            let per_host = set.build().map_err(|e| invalid(&key("per_host"), e.to_string()))?;
            if roles.contains_key(&r.name) {
                return Err(invalid(&key("name"), format!("role {} is defined twice", r.name)));
            }
            roles.insert(
                r.name.clone(),
                RoleConfig {
                    name: r.name,
                    mode,
                    hosts: r.hosts,
                    per_host_patterns: r.per_host,
                    per_host,
                    retired_flags: r.retired_flags,
                    require_tpm: r.require_tpm,
                },
            );
        }
        Ok(Self {
            listen,
            data_dir: raw.data_dir,
            freshness_ttl,
            max_clock_skew,
            tls: TlsPaths {
                ca: raw.tls.ca,
                cert: raw.tls.cert,
                key: raw.tls.key,
            },
            limits,
            metrics_listen,
            alerts,
            enrollment,
            store,
            backend,
            siem,
            board,
            audit,
            tpm_quote_max_age,
            tpm_ek_ca: raw.tpm.ek_ca,
            roles,
            inventory,
        })
    }
}

/// The controller's default `/metrics` port (the agent's is one above).
pub const DEFAULT_METRICS_PORT: u16 = 9720;

fn alert_settings(raw: RawAlerts) -> Result<AlertSettings, (&'static str, String)> {
    let defaults = AlertSettings::default();
    let ms = |k: &'static str, t: Option<&str>, d: i64| -> Result<i64, (&'static str, String)> {
        let d = duration(t, Duration::from_millis(u64::try_from(d).unwrap_or(0))).map_err(|e| (k, e))?;
        Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let grouping = Grouping {
        wait_ms: ms("group_wait", raw.group_wait.as_deref(), defaults.grouping.wait_ms)?,
        max_wait_ms: ms(
            "group_wait_max",
            raw.group_wait_max.as_deref(),
            defaults.grouping.max_wait_ms,
        )?,
    };
    let webhook = match raw.webhook {
        None => None,
        Some(url) => {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| ("webhook", format!("{url:?} is not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(("webhook", format!("{url:?}: use an http:// or https:// URL")));
            }
            let max_attempts = raw.max_attempts.unwrap_or(8);
            if max_attempts == 0 {
                return Err(("max_attempts", "must be at least 1".into()));
            }
            Some(WebhookSettings {
                url: uri,
                ca: raw.webhook_ca,
                queue: raw.queue.unwrap_or(1000).max(1),
                max_attempts,
                timeout: duration(raw.timeout.as_deref(), Duration::from_secs(5)).map_err(|e| ("timeout", e))?,
            })
        }
    };
    let audit_verify_interval = duration(raw.audit_verify_interval.as_deref(), defaults.audit_verify_interval)
        .map_err(|e| ("audit_verify_interval", e))?;
    if audit_verify_interval.is_zero() {
        return Err(("audit_verify_interval", "must be more than 0s".into()));
    }
    Ok(AlertSettings {
        webhook,
        grouping,
        audit_verify_interval,
    })
}

fn audit_settings(raw: RawAudit, data_dir: &Path) -> Result<AuditSettings, (&'static str, String)> {
    let segment = duration(raw.segment.as_deref(), Duration::from_secs(24 * 3600)).map_err(|e| ("segment", e))?;
    if segment < Duration::from_secs(1) {
        return Err(("segment", "must be at least 1s (a day, \"1d\", is the usual)".into()));
    }
    let keep_online =
        duration(raw.keep_online.as_deref(), Duration::from_secs(14 * 24 * 3600)).map_err(|e| ("keep_online", e))?;
    let segment_records = raw.segment_records.unwrap_or(100_000);
    if !(2..=1_000_000).contains(&segment_records) {
        return Err((
            "segment_records",
            format!("{segment_records}: give 2 to 1000000 (an archived segment is read whole)"),
        ));
    }
    Ok(AuditSettings {
        segment,
        segment_records,
        keep_online,
        archive_dir: raw.archive_dir.unwrap_or_else(|| data_dir.join("audit-archive")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../tests/fixtures/controller_good.toml");

    fn parse(text: &str) -> Result<ControllerConfig, ConfigError> {
        ControllerConfig::parse(text, Path::new("controller.toml"))
    }

    #[test]
    fn good_config_loads() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.freshness_ttl, Duration::from_secs(30));
        assert_eq!(c.tpm_quote_max_age, Duration::from_secs(180));
        assert!(c.roles.values().all(|r| !r.require_tpm));
        let strict = parse(&GOOD.replacen("name = \"risk\"", "name = \"risk\"\nrequire_tpm = true", 1)).unwrap();
        assert!(strict.roles["risk"].require_tpm);
        let smars = &c.roles["smars"];
        assert_eq!(smars.mode, RoleMode::Release);
        assert_eq!(smars.hosts.len(), 8);
        assert!(smars.is_per_host(b"/etc/smars/host.conf"));
        assert!(!smars.is_per_host(b"/opt/smars/bin/smars"));
        assert_eq!(c.inventory["smars-08"], "smars");
        assert_eq!(c.roles["risk"].mode, RoleMode::Consensus);
        assert_eq!(c.store.sled_cache_bytes, 64 << 20);
        let c = parse(&format!("{GOOD}\n[store]\ncache_mib = 256\n")).unwrap();
        assert_eq!(c.store.sled_cache_bytes, 256 << 20);
    }

    #[test]
    fn bad_configs_name_the_key_and_fix() {
        let cases = [
            (
                GOOD.replace("mode = \"consensus\"", "mode = \"vote\""),
                "role[1].mode: \"vote\": use \"release\" or \"consensus\"",
            ),
            (
                GOOD.replace("\"risk-01\"", "\"smars-01\""),
                "host smars-01 is already in role smars",
            ),
            (GOOD.replace("0.0.0.0:7443", "everywhere"), "listen:"),
            (
                format!("{GOOD}\n[siem]\nsyslog_address = \"siem.example\"\n"),
                "siem.syslog_address: ",
            ),
            (format!("{GOOD}\n[board]\nlisten = \"everywhere\"\n"), "board.listen: "),
            (
                format!(
                    "{GOOD}\n[siem]\nsyslog_address = \"siem.example:6514\"\nsd_id = \"lockstep@12345\"\ntls_min = \"1.0\"\n"
                ),
                "siem.tls_min: \"1.0\": give \"1.2\"",
            ),
            (
                format!("{GOOD}\n[siem]\nsyslog_address = \"siem.example:6514\"\n"),
                "siem.sd_id: not set: give NAME@NUMBER with your firm's private enterprise number",
            ),
            (
                format!("{GOOD}\n[siem]\nsyslog_address = \"siem.example:6514\"\nsd_id = \"lockstep@32473\"\n"),
                "siem.sd_id: \"lockstep@32473\": 32473 is the enterprise number RFC 5612 reserves for documentation",
            ),
            (
                format!("{GOOD}\n[siem]\nsyslog_address = \"siem.example:6514\"\nsd_id = \"lockstep\"\n"),
                "siem.sd_id: \"lockstep\": give NAME@NUMBER",
            ),
            (
                format!("{GOOD}\n[store]\ncache_mib = 4\n"),
                "store.cache_mib: 4: give a size in MiB from 8 to 65536",
            ),
            (
                format!("{GOOD}\n[audit]\nsegment_records = 1\n"),
                "audit.segment_records: 1: give 2 to 1000000",
            ),
            (
                format!("{GOOD}\n[board]\nlisten = \"0.0.0.0:7444\"\nurl = \"http://ctl:7444\"\n"),
                "board.url: must start with https://",
            ),
            (
                format!("{GOOD}\n[board]\nlisten = \"0.0.0.0:7444\"\nurl = \"https://ctl:7444\"\nlogin_ttl = \"1d\"\n"),
                "board.login_ttl: at most 1h",
            ),
            (
                format!("{GOOD}\n[board]\nlisten = \"0.0.0.0:7444\"\n"),
                "board.url: must be set when board.listen is 0.0.0.0:7444",
            ),
            (
                format!("{GOOD}\n[board]\nlisten = \"127.0.0.1:7444\"\nsession_ttl = \"0s\"\n"),
                "board.session_ttl: must be more than 0s",
            ),
            (
                GOOD.replace("freshness_ttl = \"30s\"", "freshness_ttl = \"a while\""),
                "freshness_ttl:",
            ),
            (
                format!("{GOOD}\n[tpm]\nquote_max_age = \"soon\"\n"),
                "tpm.quote_max_age:",
            ),
            (GOOD.replace("name = \"risk\"", "name = \"Risk!\""), "role[1].name:"),
            (
                format!("{GOOD}\n[limits]\nmax_frobs = 1\n"),
                "unknown field `max_frobs`",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("controller.toml"), "{err}");
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
    }
}

#[cfg(test)]
mod etcd_settings_tests {
    use super::*;

    const GOOD: &str = include_str!("../../tests/fixtures/controller_good.toml");
    const ETCD: &str = "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"etcd-1:2379\", \"etcd-2:2379\", \"etcd-3:2379\"]\nca = \"/etc/lockstep/etcd-ca.pem\"\ncert = \"/etc/lockstep/etcd-client.pem\"\nkey = \"/etc/lockstep/etcd-client.key\"\nname = \"ctl-1\"\n";

    fn with(store: &str) -> Result<ControllerConfig, ConfigError> {
        // [store] goes before the [[role]] tables.
        let (head, roles) = GOOD.split_once("[[role]]").unwrap();
        ControllerConfig::parse(&format!("{head}{store}[[role]]{roles}"), Path::new("controller.toml"))
    }

    #[test]
    fn etcd_backend_loads_with_defaults_that_fail_over_under_5s() {
        let c = with(ETCD).unwrap();
        let Backend::Etcd(e) = c.backend else {
            panic!("etcd expected")
        };
        assert_eq!(e.endpoints.len(), 3);
        assert_eq!(e.prefix, "/lockstep/");
        assert_eq!(e.leader_ttl, Duration::from_secs(3));
        assert_eq!(e.name, "ctl-1");
        assert_eq!(e.advertise, c.listen.to_string());
        assert!(matches!(with("").unwrap().backend, Backend::Sled));
    }

    #[test]
    fn bad_etcd_settings_name_the_key_and_fix() {
        let cases = [
            (
                ETCD.replace("\"etcd-1:2379\", ", "")
                    .replace(", \"etcd-3:2379\"", "")
                    .replace("\"etcd-2:2379\"", ""),
                "store.etcd.endpoints: give at least one etcd member",
            ),
            (ETCD.replace("etcd-1:2379", "https://etcd-1:2379"), "without a scheme"),
            (
                format!("{ETCD}prefix = \"/lockstep\"\n"),
                "store.etcd.prefix: \"/lockstep\" must end with '/'",
            ),
            (
                format!("{ETCD}leader_ttl = \"1500ms\"\n"),
                "store.etcd.leader_ttl: give whole seconds, at least 2s",
            ),
            (
                format!("{ETCD}max_txn_ops = 4\n"),
                "store.etcd.max_txn_ops: must be at least 16",
            ),
            (
                format!("{ETCD}quota_mib = 8\n"),
                "store.etcd.quota_mib: must be at least 16",
            ),
            (
                ETCD.replace("\"etcd\"\n[store.etcd]", "\"zookeeper\"\n[store.etcd]"),
                "store.backend",
            ),
        ];
        for (store, needle) in cases {
            let err = with(&store).unwrap_err().to_string();
            assert!(err.contains("controller.toml"), "{err}");
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
    }
}

#[cfg(test)]
mod packaged {
    #[test]
    fn packaged_default_config_is_valid() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/controller.toml"));
        let c = super::ControllerConfig::load(path).unwrap();
        assert_eq!(c.roles["smars"].hosts.len(), 8);
    }
}
