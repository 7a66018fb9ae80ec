//! The agent's TOML configuration: a raw file struct as written, and a
//! validated [`AgentConfig`] the rest of the agent is given explicitly.
//!
//! ```toml
//! host = "smars-01"
//! role = "smars"
//! state_dir = "/var/lib/lockstep-agent"
//! watch = ["/opt/smars/**", "/etc/smars/smars.conf"]
//! scan_interval = "10s"
//! # root = "/host"   # measure a host filesystem mounted here, as if at /
//! watch_changes = true           # inotify: see changes as they happen
//! quiet_period = "50ms"          # let a burst of writes settle first
//! small_change_quiet_period = "15ms"   # ... or one replaced file, once closed
//! full_rescan_interval = "1h"    # re-hash everything, whatever changed
//! metrics_listen = "127.0.0.1:9721"   # Prometheus /metrics; "off" disables
//!
//! [resources]
//! cpus = "0-1"                   # default: the CPUs the kernel does not isolate
//!
//! [market_hours]                 # optional: budgeted full scans while trading
//! time_zone = "America/New_York"
//! windows = ["Mon-Fri 09:30-16:00"]
//! scan_max_bytes_per_sec = "32MiB"
//! scan_threads = 1
//!
//! [controller]
//! address = "lockstep.example:7443"
//! ca = "/etc/lockstep/ca.pem"
//! cert = "/var/lib/lockstep-agent/agent.pem"
//! key = "/var/lib/lockstep-agent/agent.key"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use lockstep_daemon::config::ConfigError;
use lockstep_daemon::config::duration;
use lockstep_link::tls::{TlsPaths, default_server_name};
use lockstep_proto::identity::validate_id;
use serde::Deserialize;

use crate::measure::configkeys::{ConfigFile, ConfigFormat};
use crate::measure::market_hours::{self, MarketHours};
use crate::measure::placement::CpuList;
use crate::measure::process::ProcessRule;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    role: String,
    state_dir: PathBuf,
    watch: Vec<String>,
    #[serde(default)]
    scan_interval: Option<String>,
    #[serde(default)]
    root: Option<PathBuf>,
    #[serde(default)]
    watch_changes: Option<bool>,
    #[serde(default)]
    quiet_period: Option<String>,
    #[serde(default)]
    small_change_quiet_period: Option<String>,
    #[serde(default)]
    full_rescan_interval: Option<String>,
    #[serde(default)]
    metrics_listen: Option<String>,
    controller: RawController,
    #[serde(default)]
    gate: RawGate,
    #[serde(default, rename = "process")]
    processes: Vec<RawProcess>,
    #[serde(default, rename = "config")]
    configs: Vec<RawConfigFile>,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    market_hours: Option<RawMarketHours>,
    #[serde(default)]
    identity: RawIdentity,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    tpm: Option<String>,
    quote_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpus: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMarketHours {
    time_zone: String,
    windows: Vec<String>,
    scan_max_bytes_per_sec: Option<String>,
    scan_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    name: String,
    exe: Option<String>,
    comm: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigFile {
    path: PathBuf,
    format: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGate {
    state_file: Option<PathBuf>,
    #[serde(default)]
    on_open: Vec<String>,
    #[serde(default)]
    on_close: Vec<String>,
    hook_timeout: Option<String>,
    outage: Option<String>,
    hold_hours_utc: Option<String>,
}

/// `address = "ctl:7443"` or `address = ["ctl-1:7443", "ctl-2:7443"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAddresses {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    address: RawAddresses,
    #[serde(default)]
    server_name: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    renew_fraction: Option<f64>,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host: String,
    pub role: String,
    pub state_dir: PathBuf,
    pub watch: Vec<String>,
    pub scan_interval: Duration,
    /// Measure the host's files under this directory as if it were `/`
    /// (an agent in a container with the host's root mounted at /host).
    pub root: Option<PathBuf>,
    /// See changes as they happen (inotify) rather than only at each scan.
    pub watch_changes: bool,
    /// How long writes must pause before a change is scanned and reported.
    pub quiet_period: Duration,
    /// The shorter pause for a small change (a few paths, all closed).
    pub small_change_quiet_period: Duration,
    /// How often every file is hashed again, whatever its fingerprint says.
    pub full_rescan_interval: Duration,
    /// Where `lockstep-agent run` serves `/metrics`; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub controller: ControllerConfig,
    pub gate: GateConfig,
    pub processes: Vec<ProcessRule>,
    pub configs: Vec<ConfigFile>,
    /// `[resources] cpus`: where every agent thread runs (`None`: the
    /// housekeeping CPUs, see [`crate::measure::placement`]).
    pub cpus: Option<CpuList>,
    /// Trading windows and the full-scan budget inside them.
    pub market_hours: Option<MarketHours>,
    /// `[identity] tpm`: the host's identity is bound to this TPM (`None`:
    /// file keys only, the default).
    pub tpm: Option<TpmSettings>,
}

/// `[identity]`: the TPM the agent's identity lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSettings {
    /// The TSS TCTI to reach it: `device:/dev/tpmrm0`, `tabrmd`, or
    /// `swtpm:host=127.0.0.1,port=2321` (a software TPM, for tests).
    pub tcti: String,
    /// A fresh quote at least this often (also at start, after a
    /// reconnect and after each full rescan).
    pub quote_interval: Duration,
}

/// What the agent does with the controller's gate on this host.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Written atomically on every change; read by `lockstep-agent gate check`.
    pub state_file: PathBuf,
    /// Command (argv) run when the gate opens.
    pub on_open: Vec<String>,
    /// Command (argv) run when the gate closes, e.g. stopping the trading unit.
    pub on_close: Vec<String>,
    pub hook_timeout: Duration,
    pub outage: OutagePolicy,
}

/// What an expired lease means when the controller cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutagePolicy {
    /// Close the gate (the default, and the only choice outside trading hours).
    Close,
    /// Keep an OPEN gate open and alarm, but only between these minutes of
    /// the UTC day (the trading session); never before the open.
    Hold { from_min: i32, to_min: i32 },
}

pub const DEFAULT_STATE_FILE: &str = "/run/lockstep/gate.json";

/// "13:30-20:00" → minutes of the day.
fn parse_hours(text: &str) -> Result<(i32, i32), String> {
    let bad = || format!("{text:?} is not a UTC range like \"13:30-20:00\"");
    let minute = |hm: &str| -> Option<i32> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
        ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    Ok((minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?))
}

impl ControllerConfig {
    /// Each controller to try, with the name its certificate must carry.
    pub fn targets(&self) -> Vec<lockstep_link::tls::Target> {
        self.addresses
            .iter()
            .map(|a| lockstep_link::tls::Target {
                address: a.clone(),
                server_name: if self.server_name_given {
                    self.server_name.clone()
                } else {
                    default_server_name(a).unwrap_or_else(|_| self.server_name.clone())
                },
            })
            .collect()
    }

    /// Talks to `addr` only (`lockstep-agent enroll --controller`).
    pub fn only(&mut self, addr: String) -> Result<(), lockstep_link::tls::TlsError> {
        self.server_name = default_server_name(&addr)?;
        self.server_name_given = false;
        self.addresses = vec![addr.clone()];
        self.address = addr;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The first of `addresses` (what is shown when one is named).
    pub address: String,
    /// Every controller the agent may talk to, tried in turn (`controller.address`).
    pub addresses: Vec<String>,
    /// The name the controller's certificate must carry: `controller.server_name`,
    /// or the first address's host.
    pub server_name: String,
    /// `controller.server_name` was set: it holds for every address.
    pub server_name_given: bool,
    pub tls: TlsPaths,
    pub connect_timeout: Duration,
    /// The certificate is renewed once this fraction of its lifetime has passed.
    pub renew_fraction: f64,
}

pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(10);

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` only names the file in errors.
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
        validate_id(&raw.host).map_err(|e| invalid("host", e.to_string()))?;
        validate_id(&raw.role).map_err(|e| invalid("role", e.to_string()))?;
        if raw.watch.is_empty() {
            return Err(invalid("watch", "list at least one path or glob to measure".into()));
        }
        for pattern in &raw.watch {
            crate::measure::scan::WatchPattern::new(pattern).map_err(|e| invalid("watch", e.to_string()))?;
        }
        let scan_interval =
            duration(raw.scan_interval.as_deref(), DEFAULT_SCAN_INTERVAL).map_err(|e| invalid("scan_interval", e))?;
        if scan_interval < Duration::from_millis(100) {
            return Err(invalid("scan_interval", "must be at least 100ms".into()));
        }
        let addresses = match raw.controller.address {
            RawAddresses::One(a) => vec![a],
            RawAddresses::Many(list) => list,
        };
        if addresses.is_empty() {
            return Err(invalid(
                "controller.address",
                "give at least one address, like \"lockstep.example:7443\"".into(),
            ));
        }
        for a in &addresses {
            default_server_name(a).map_err(|e| invalid("controller.address", e.to_string()))?;
        }
        // Configured: every controller's certificate carries it. Otherwise each address's host.
        let server_name_given = raw.controller.server_name.is_some();
        let server_name = match raw.controller.server_name {
            Some(n) => n,
            None => default_server_name(&addresses[0]).map_err(|e| invalid("controller.address", e.to_string()))?,
        };
        let connect_timeout = duration(raw.controller.connect_timeout.as_deref(), Duration::from_secs(5))
            .map_err(|e| invalid("controller.connect_timeout", e))?;
        let renew_fraction = raw.controller.renew_fraction.unwrap_or(2.0 / 3.0);
        if !(0.1..=0.95).contains(&renew_fraction) {
            return Err(invalid(
                "controller.renew_fraction",
                format!(
                    "{renew_fraction} is outside 0.1..0.95 (the share of a certificate's lifetime to wait before renewing)"
                ),
            ));
        }
        let outage = match (raw.gate.outage.as_deref(), raw.gate.hold_hours_utc.as_deref()) {
            (None | Some("close"), None) => OutagePolicy::Close,
            (None | Some("close"), Some(_)) => {
                return Err(invalid(
                    "gate.hold_hours_utc",
                    "only means something with outage = \"hold\"".into(),
                ));
            }
            (Some("hold"), Some(hours)) => {
                let (from_min, to_min) = parse_hours(hours).map_err(|e| invalid("gate.hold_hours_utc", e))?;
                OutagePolicy::Hold { from_min, to_min }
            }
            (Some("hold"), None) => {
                return Err(invalid(
                    "gate.hold_hours_utc",
                    "outage = \"hold\" needs the trading session, e.g. hold_hours_utc = \"13:30-20:00\"".into(),
                ));
            }
            (Some(other), _) => {
                return Err(invalid("gate.outage", format!("{other:?}: use \"close\" or \"hold\"")));
            }
        };
        let hook_timeout = duration(raw.gate.hook_timeout.as_deref(), Duration::from_secs(30))
            .map_err(|e| invalid("gate.hook_timeout", e))?;
        let quiet_period =
            duration(raw.quiet_period.as_deref(), Duration::from_millis(50)).map_err(|e| invalid("quiet_period", e))?;
        let small_change_quiet_period = duration(
            raw.small_change_quiet_period.as_deref(),
            Duration::from_millis(15).min(quiet_period),
        )
        .map_err(|e| invalid("small_change_quiet_period", e))?;
        if small_change_quiet_period > quiet_period {
            return Err(invalid(
                "small_change_quiet_period",
                format!(
                    "{} is longer than quiet_period ({}); a small change must not wait longer than a burst",
                    humantime::format_duration(small_change_quiet_period),
                    humantime::format_duration(quiet_period)
                ),
            ));
        }
        let full_rescan_interval = duration(raw.full_rescan_interval.as_deref(), Duration::from_secs(3600))
            .map_err(|e| invalid("full_rescan_interval", e))?;
        let metrics_listen = match raw.metrics_listen.as_deref() {
            None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9721))),
            Some("" | "off") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "metrics_listen",
                    format!("{a:?} is not an address like \"127.0.0.1:9721\" (or \"off\")"),
                )
            })?),
        };
        let mut processes = Vec::new();
        for (i, p) in raw.processes.into_iter().enumerate() {
            validate_id(&p.name).map_err(|e| invalid("process.name", format!("process[{i}]: {e}")))?;
            if p.exe.is_none() && p.comm.is_none() {
                return Err(invalid(
                    "process",
                    format!("process[{i}] ({}): give exe = \"/path\" or comm = \"name\"", p.name),
                ));
            }
            processes.push(ProcessRule {
                name: p.name,
                exe: p.exe,
                comm: p.comm,
            });
        }
        let mut configs = Vec::new();
        for (i, c) in raw.configs.into_iter().enumerate() {
            let format = match c.format.as_str() {
                "ini" => ConfigFormat::Ini,
                "toml" => ConfigFormat::Toml,
                "json" => ConfigFormat::Json,
                "yaml" => ConfigFormat::Yaml,
                "key=value" | "keyvalue" => ConfigFormat::KeyValue,
                other => {
                    return Err(invalid(
                        "config.format",
                        format!("config[{i}]: {other:?}: use ini, toml, json, yaml or key=value"),
                    ));
                }
            };
            if !c.path.is_absolute() {
                return Err(invalid(
                    "config.path",
                    format!("config[{i}]: {} must be absolute", c.path.display()),
                ));
            }
            configs.push(ConfigFile { path: c.path, format });
        }
        let cpus = match raw.resources.cpus.as_deref() {
            None => None,
            Some(text) => {
                let cpus = CpuList::parse(text).map_err(|e| invalid("resources.cpus", e.to_string()))?;
                if cpus.is_empty() {
                    return Err(invalid(
                        "resources.cpus",
                        "is empty; leave it out to use the CPUs the kernel does not isolate".into(),
                    ));
                }
                Some(cpus)
            }
        };
        let market_hours = match raw.market_hours {
            None => None,
            Some(m) => {
                let rate = match m.scan_max_bytes_per_sec.as_deref() {
                    None => market_hours::DEFAULT_MAX_BYTES_PER_SEC,
                    Some(text) => market_hours::parse_byte_rate(text)
                        .map_err(|e| invalid("market_hours.scan_max_bytes_per_sec", e))?,
                };
                Some(
                    MarketHours::new(&m.time_zone, &m.windows, rate, m.scan_threads.unwrap_or(1))
                        .map_err(|e| invalid("market_hours", e))?,
                )
            }
        };
        let tpm = match raw.identity.tpm {
            None => {
                if raw.identity.quote_interval.is_some() {
                    return Err(invalid("identity.quote_interval", "set only with identity.tpm".into()));
                }
                None
            }
            Some(tpm) => {
                let tcti = match tpm.split_once(':') {
                    Some(("device" | "swtpm" | "tabrmd", _)) => tpm,
                    None if tpm == "tabrmd" => tpm,
                    _ => {
                        return Err(invalid(
                            "identity.tpm",
                            format!(
                                "{tpm:?} is not a TPM: write \"device:/dev/tpmrm0\", \"tabrmd\" or \"swtpm:host=127.0.0.1,port=2321\""
                            ),
                        ));
                    }
                };
                let quote_interval = duration(raw.identity.quote_interval.as_deref(), Duration::from_secs(60))
                    .map_err(|e| invalid("identity.quote_interval", e))?;
                if quote_interval < Duration::from_secs(1) {
                    return Err(invalid("identity.quote_interval", "must be at least 1s".into()));
                }
                Some(TpmSettings { tcti, quote_interval })
            }
        };
        let gate = GateConfig {
            state_file: raw.gate.state_file.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE)),
            on_open: raw.gate.on_open,
            on_close: raw.gate.on_close,
            hook_timeout,
            outage,
        };
        Ok(Self {
            host: raw.host,
            role: raw.role,
            state_dir: raw.state_dir,
            watch: raw.watch,
            scan_interval,
            root: raw.root,
            watch_changes: raw.watch_changes.unwrap_or(true),
            quiet_period,
            small_change_quiet_period,
            full_rescan_interval,
            metrics_listen,
            gate,
            processes,
            configs,
            cpus,
            market_hours,
            tpm,
            controller: ControllerConfig {
                address: addresses[0].clone(),
                addresses,
                server_name,
                server_name_given,
                tls: TlsPaths {
                    ca: raw.controller.ca,
                    cert: raw.controller.cert,
                    key: raw.controller.key,
                },
                connect_timeout,
                renew_fraction,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../tests/fixtures/agent_good.toml");

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.host, "smars-01");
        assert_eq!(c.scan_interval, Duration::from_secs(2));
        assert_eq!(c.controller.server_name, "127.0.0.1");
        assert_eq!(c.controller.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.gate.state_file, PathBuf::from(DEFAULT_STATE_FILE));
        assert_eq!(c.gate.outage, OutagePolicy::Close);
        assert_eq!(c.quiet_period, Duration::from_millis(50));
        assert_eq!(c.small_change_quiet_period, Duration::from_millis(15));
        // A quiet period under the small-change default caps it.
        let quick = parse(&format!("quiet_period = \"5ms\"\n{GOOD}")).unwrap();
        assert_eq!(quick.small_change_quiet_period, Duration::from_millis(5));
        let held = parse(&format!(
            "{GOOD}\n[gate]\noutage = \"hold\"\nhold_hours_utc = \"13:30-20:00\"\n"
        ))
        .unwrap();
        assert_eq!(
            held.gate.outage,
            OutagePolicy::Hold {
                from_min: 810,
                to_min: 1200
            }
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (GOOD.replace("host = \"smars-01\"", "host = \"SMARS 01\""), "host:"),
            (
                GOOD.replace("scan_interval = \"2s\"", "scan_interval = \"soon\""),
                "scan_interval:",
            ),
            (GOOD.replace("watch = [\"/opt/smars/**\"]", "watch = []"), "watch:"),
            (
                GOOD.replace("watch = [\"/opt/smars/**\"]", "watch = [\"relative/*\"]"),
                "watch:",
            ),
            (GOOD.replace("127.0.0.1:7443", "nohost"), "controller.address:"),
            (format!("{GOOD}\nsurprise = 1\n"), "unknown field `surprise`"),
            (
                format!("small_change_quiet_period = \"80ms\"\n{GOOD}"),
                "small_change_quiet_period: 80ms is longer than quiet_period (50ms)",
            ),
            (
                format!("{GOOD}\n[gate]\noutage = \"hold\"\n"),
                "gate.hold_hours_utc: outage = \"hold\" needs",
            ),
            (
                format!("{GOOD}\n[gate]\noutage = \"hold\"\nhold_hours_utc = \"9:30-25:00\"\n"),
                "not a UTC range",
            ),
            (format!("{GOOD}\n[gate]\noutage = \"pray\"\n"), "gate.outage: \"pray\""),
            (
                format!("{GOOD}\n[[process]]\nname = \"smars\"\n"),
                "give exe = \"/path\" or comm",
            ),
            (
                format!("{GOOD}\n[[config]]\npath = \"/etc/x\"\nformat = \"xml\"\n"),
                "use ini, toml, json, yaml or key=value",
            ),
            (
                format!("{GOOD}\n[identity]\ntpm = \"/dev/tpm0\"\n"),
                "identity.tpm: \"/dev/tpm0\" is not a TPM: write \"device:/dev/tpmrm0\"",
            ),
            (
                format!("{GOOD}\n[identity]\nquote_interval = \"1m\"\n"),
                "identity.quote_interval: set only with identity.tpm",
            ),
            (
                format!("{GOOD}\n[identity]\ntpm = \"tabrmd\"\nquote_interval = \"10ms\"\n"),
                "identity.quote_interval: must be at least 1s",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("agent.toml"), "{err}");
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
    }

    #[test]
    fn a_tpm_is_optional_and_named_by_its_tcti() {
        assert_eq!(parse(GOOD).unwrap().tpm, None);
        let c = parse(&format!("{GOOD}\n[identity]\ntpm = \"device:/dev/tpmrm0\"\n")).unwrap();
        assert_eq!(
            c.tpm,
            Some(super::TpmSettings {
                tcti: "device:/dev/tpmrm0".into(),
                quote_interval: std::time::Duration::from_secs(60),
            })
        );
    }

    #[test]
    fn toml_syntax_error_gives_line_and_column() {
        let err = parse("host = \n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}

#[cfg(test)]
mod packaged {
    #[test]
    fn packaged_default_config_is_valid() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/agent.toml"));
        super::AgentConfig::load(path).unwrap();
    }
}
