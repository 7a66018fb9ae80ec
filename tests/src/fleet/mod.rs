//! Starting and driving a loopback fleet.

pub mod ha;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use lockstep_agent::config::AgentConfig;
use lockstep_agent::lifecycle::Agent;
use lockstep_agent::measure::scan::Scanner;
use lockstep_console::{self as console, Cli};
use lockstep_controller::config::ControllerConfig;
use lockstep_controller::controller::Controller;
use lockstep_controller::store::sled::SledStore;
use lockstep_link::failover::FailoverChannel;
use lockstep_link::tls::{self, TlsPaths};
use lockstep_pki::{self as pki, Subject};
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{GateCheckReply, GateState};
use tempfile::TempDir;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub role: String,
    pub hosts: usize,
    /// "release" or "consensus".
    pub mode: String,
    pub freshness_ttl: Duration,
    pub scan_interval: Duration,
    pub watch: Vec<String>,
    pub per_host: Vec<String>,
    /// Inventory hosts whose agent is never started (no agent installed).
    pub without_agent: Vec<String>,
    /// Agent `[[process]]` rules: (name, exe path as the host sees it).
    pub processes: Vec<(String, String)>,
    /// Agent `[[config]]` files: (path, format).
    pub configs: Vec<(String, String)>,
    /// The role's retired flags.
    pub retired_flags: Vec<String>,
    /// Agents watch with inotify (each agent takes an inotify instance; the
    /// kernel's default limit is 128 per user, so large fleets turn it off).
    pub watch_changes: bool,
    /// How long writes must pause before the agent scans (agent `quiet_period`).
    pub quiet_period: Duration,
    /// The pause for a small, finished change (agent `small_change_quiet_period`).
    pub small_change_quiet_period: Duration,
    /// Give each host `on_open`/`on_close` hooks that log to `hooks.log`.
    pub hooks: bool,
    /// TOML appended to the controller's config (`[alerts]`, ...).
    pub controller_extra: String,
    /// Top-level agent config lines (before its tables).
    pub agent_extra: String,
    /// Agent config tables appended at the end (`[market_hours]`, ...).
    pub agent_tables: String,
    /// Lifetime of the agent certificates the controller issues.
    pub cert_validity: Duration,
    /// Agents renew once this share of their certificate's lifetime has passed.
    pub renew_fraction: f64,
    /// Serve the web board (`[board]`) on a loopback port of its own.
    pub board: bool,
    /// The board's `login_ttl` (default: the controller's).
    pub board_login_ttl: Option<Duration>,
    /// Agents list a second controller address (`controller.address = [A, B]`),
    /// where [`Fleet::move_to_standby`] starts the controller.
    pub standby: bool,
    /// Each host gets a software TPM of its own (`[identity] tpm`).
    pub tpm: bool,
}

impl FleetSpec {
    pub fn smars(hosts: usize) -> Self {
        Self {
            role: "smars".into(),
            hosts,
            mode: "release".into(),
            freshness_ttl: Duration::from_secs(30),
            scan_interval: Duration::from_secs(5),
            watch: vec!["/opt/smars/**".into(), "/etc/hostname".into()],
            per_host: vec!["/etc/hostname".into()],
            without_agent: Vec::new(),
            processes: Vec::new(),
            configs: vec![("/opt/smars/etc/smars.conf".into(), "ini".into())],
            retired_flags: Vec::new(),
            watch_changes: true,
            quiet_period: Duration::from_millis(50),
            small_change_quiet_period: Duration::from_millis(15),
            hooks: true,
            controller_extra: String::new(),
            agent_extra: String::new(),
            agent_tables: String::new(),
            cert_validity: Duration::from_secs(30 * 24 * 3600),
            renew_fraction: 2.0 / 3.0,
            board: false,
            board_login_ttl: None,
            standby: false,
            tpm: false,
        }
    }

    pub fn host_name(&self, i: usize) -> String {
        format!("{}-{:02}", self.role, i)
    }
}

/// One running agent and the directory that plays its host's `/`.
pub struct HostHandle {
    pub host: String,
    pub root: PathBuf,
    pub config: AgentConfig,
    trigger: Option<Arc<Notify>>,
    /// The running agent's metrics.
    pub metrics: Option<Arc<lockstep_agent::metrics::AgentMetrics>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The host's software TPM (`FleetSpec::tpm`).
    pub tpm: Option<crate::swtpm::SwTpm>,
}

pub struct Fleet {
    pub spec: FleetSpec,
    pub dir: TempDir,
    pub pki_dir: PathBuf,
    pub addr: SocketAddr,
    pub controller: Arc<Controller>,
    /// The board's address (`https://127.0.0.1:PORT`) when the spec asks for one.
    pub board_url: Option<String>,
    /// The second address agents know (bound, not served until the controller moves there).
    standby: Option<tokio::net::TcpListener>,
    /// Every controller address the agents are configured with.
    pub addresses: Vec<SocketAddr>,
    pub hosts: BTreeMap<String, HostHandle>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

impl Fleet {
    /// PKI, controller and one agent per host, all running; host files empty
    /// until [`Fleet::write`] puts some there.
    pub async fn start(spec: FleetSpec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("lockstep-fleet-").tempdir()?;
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, YEAR)?;
        pki::issue(
            &pki_dir,
            &Subject::Controller {
                names: vec!["127.0.0.1".into(), "localhost".into()],
            },
            &pki_dir.join("controller"),
            YEAR,
        )?;
        let hosts: Vec<String> = (1..=spec.hosts).map(|i| spec.host_name(i)).collect();
        let config_path = dir.path().join("controller.toml");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let board = if spec.board {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
        } else {
            None
        };
        let board_addr = board.as_ref().map(|l| l.local_addr()).transpose()?;
        let standby = if spec.standby {
            Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
        } else {
            None
        };
        let mut addresses = vec![addr];
        if let Some(l) = &standby {
            addresses.push(l.local_addr()?);
        }
        let mut toml = controller_toml(&spec, &hosts, dir.path(), addr);
        if let Some(at) = board_addr {
            toml.push_str(&format!("\n[board]\nlisten = \"{at}\"\n"));
            if let Some(ttl) = spec.board_login_ttl {
                toml.push_str(&format!("login_ttl = \"{}ms\"\n", ttl.as_millis()));
            }
        }
        std::fs::write(&config_path, toml)?;
        let (controller, stop, task) = start_controller(&config_path, listener, board).await?;
        let mut fleet = Self {
            controller,
            board_url: board_addr.map(|a| format!("https://{a}")),
            standby,
            addresses,
            spec,
            pki_dir,
            addr,
            hosts: BTreeMap::new(),
            stop_server: Some(stop),
            server: Some(task),
            dir,
        };
        for host in hosts {
            fleet.add_host(&host)?;
        }
        for host in fleet.hosts.keys().cloned().collect::<Vec<_>>() {
            if !fleet.spec.without_agent.contains(&host) {
                fleet.enroll(&host).await?;
                fleet.start_agent(&host)?;
            }
        }
        Ok(fleet)
    }

    fn add_host(&mut self, host: &str) -> anyhow::Result<()> {
        let base = self.dir.path().join("hosts").join(host);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::write(root.join("etc/hostname"), format!("{host}\n"))?;
        let toml = format!(
            r#"host = "{host}"
role = "{role}"
state_dir = "{state}"
watch = {watch:?}
scan_interval = "{scan}ms"
root = "{root}"
watch_changes = {watching}
quiet_period = "{quiet}ms"
small_change_quiet_period = "{small}ms"
{agent_extra}
[controller]
address = {addr}
ca = "{ca}"
cert = "{cert}"
key = "{key}"
renew_fraction = {renew}

[gate]
state_file = "{gate}"
"#,
            gate = base.join("gate.json").display(),
            agent_extra = self.spec.agent_extra,
            renew = self.spec.renew_fraction,
            role = self.spec.role,
            watching = self.spec.watch_changes,
            quiet = self.spec.quiet_period.as_millis(),
            small = self.spec.small_change_quiet_period.as_millis(),
            state = base.join("state").display(),
            watch = self.spec.watch,
            scan = self.spec.scan_interval.as_millis(),
            root = root.display(),
            addr = if self.addresses.len() == 1 {
                format!("\"{}\"", self.addresses[0])
            } else {
                format!("{:?}", self.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            },
            ca = self.pki_dir.join(pki::CA_CERT).display(),
            cert = base.join("agent.pem").display(),
            key = base.join("agent.key").display(),
        );
        let mut toml = toml;
        if self.spec.hooks {
            let log = base.join("hooks.log");
            let hook = format!(
                "[\"sh\", \"-c\", \"echo \\\"$LOCKSTEP_GATE $LOCKSTEP_RELEASE\\\" >> {}\"]",
                log.display()
            );
            toml = toml.replace("[gate]\n", &format!("[gate]\non_open = {hook}\non_close = {hook}\n"));
        }
        for (name, exe) in &self.spec.processes {
            toml.push_str(&format!("\n[[process]]\nname = {name:?}\nexe = {exe:?}\n"));
        }
        for (path, format) in &self.spec.configs {
            toml.push_str(&format!("\n[[config]]\npath = {path:?}\nformat = {format:?}\n"));
        }
        toml.push_str(&self.spec.agent_tables);
        let tpm = if self.spec.tpm {
            let tpm = crate::swtpm::SwTpm::start()?;
            toml.push_str(&format!(
                "\n[identity]\ntpm = {:?}\nquote_interval = \"2s\"\n",
                tpm.tcti()
            ));
            Some(tpm)
        } else {
            None
        };
        let config_path = base.join("agent.toml");
        std::fs::write(&config_path, toml)?;
        let config = AgentConfig::load(&config_path)?;
        self.hosts.insert(
            host.to_string(),
            HostHandle {
                host: host.to_string(),
                root,
                config,
                trigger: None,
                metrics: None,
                stop: None,
                task: None,
                tpm,
            },
        );
        Ok(())
    }

    /// Enrolls `host` the way an operator would: a one-time join token
    /// from the controller, then `lockstep-agent enroll` on the host.
    pub async fn enroll(&self, host: &str) -> anyhow::Result<()> {
        let token = self.join_token(host).await?;
        lockstep_agent::link::enrollment::enroll(&self.host(host)?.config, &token, None).await?;
        Ok(())
    }

    /// A fresh one-time join token for `host`, made by a harness operator.
    pub async fn join_token(&self, host: &str) -> anyhow::Result<String> {
        let req = lockstep_proto::pb::CreateTokenRequest {
            allow_new_tpm: false,
            host: host.to_string(),
            role: self.spec.role.clone(),
            ttl_ms: 0,
        };
        Ok(self
            .controller
            .enrollment
            .create_token(&harness_operator(), &req)
            .await?
            .token)
    }

    pub fn host(&self, host: &str) -> anyhow::Result<&HostHandle> {
        self.hosts
            .get(host)
            .with_context(|| format!("no host {host} in this fleet"))
    }

    /// Starts (or restarts) `host`'s agent loop.
    pub fn start_agent(&mut self, host: &str) -> anyhow::Result<()> {
        let h = self.hosts.get_mut(host).with_context(|| format!("no host {host}"))?;
        let agent = Agent::new(h.config.clone())?;
        let (stop, stopped) = oneshot::channel();
        h.trigger = Some(agent.scan_trigger());
        h.metrics = Some(agent.metrics());
        h.stop = Some(stop);
        h.task = Some(tokio::spawn(agent.run(async {
            let _ = stopped.await;
        })));
        Ok(())
    }

    /// Stops `host`'s agent: the host goes silent.
    pub async fn stop_agent(&mut self, host: &str) -> anyhow::Result<()> {
        let h = self.hosts.get_mut(host).with_context(|| format!("no host {host}"))?;
        if let Some(stop) = h.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = h.task.take() {
            task.await?;
        }
        h.trigger = None;
        Ok(())
    }

    /// Writes `contents` at `path` (as the host sees it) on each of `hosts`.
    pub fn write(&self, hosts: &[String], path: &str, contents: &[u8]) -> anyhow::Result<()> {
        for host in hosts {
            let p = self.host(host)?.root.join(path.trim_start_matches('/'));
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Deploy tools replace files by rename; do the same.
            let tmp = p.with_extension("lockstep-deploy-tmp");
            std::fs::write(&tmp, contents)?;
            std::fs::rename(&tmp, &p)?;
        }
        Ok(())
    }

    pub fn remove(&self, hosts: &[String], path: &str) -> anyhow::Result<()> {
        for host in hosts {
            let p = self.host(host)?.root.join(path.trim_start_matches('/'));
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }

    /// `lockstep-agent gate check` on `host`: (exit code, line).
    pub fn local_gate_check(&self, host: &str) -> anyhow::Result<(u8, String)> {
        let h = self.host(host)?;
        Ok(lockstep_agent::gate::gatekeeper::check(
            &h.config.gate.state_file,
            Duration::ZERO,
            &lockstep_daemon::clock::system(),
        ))
    }

    /// Lines the host's on_open/on_close hooks wrote ("OPEN 2", "CLOSED 0"...).
    pub fn hook_log(&self, host: &str) -> anyhow::Result<Vec<String>> {
        let p = self.host(host)?.config.gate.state_file.with_file_name("hooks.log");
        Ok(std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// Polls until each host's hook log reads `want`.
    pub async fn wait_hooks(&self, hosts: &[String], want: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut wrong = Vec::new();
            for h in hosts {
                let log = self.hook_log(h)?;
                if log != want {
                    wrong.push(format!("{h}: {log:?}"));
                }
            }
            if wrong.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("hooks did not run as expected ({want:?}): {}", wrong.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the controller (its store stays on disk).
    pub async fn stop_controller(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.server.take() {
            task.await?;
        }
        Ok(())
    }

    /// Stops the controller and starts a new one on the same store, config
    /// and address (agents reconnect by themselves).
    pub async fn restart_controller(&mut self) -> anyhow::Result<()> {
        self.stop_controller().await?;
        let config_path = self.dir.path().join("controller.toml");
        // The old controller must let go of its store (sled locks it): one
        // on an empty store of its own stands in while the real one restarts.
        let mut stand_in = ControllerConfig::load(&config_path)?;
        stand_in.data_dir = tempfile::tempdir_in(self.dir.path())?.keep();
        let store = SledStore::open(&stand_in.data_dir.join("store"))?;
        drop(std::mem::replace(
            &mut self.controller,
            Arc::new(Controller::new(stand_in, Arc::new(store))?),
        ));
        let listener = bind_again(self.addr).await?;
        let board = match &self.controller.config.board {
            Some(b) => Some(bind_again(b.listen).await?),
            None => None,
        };
        let (controller, stop, task) = start_controller(&config_path, listener, board).await?;
        self.controller = controller;
        self.stop_server = Some(stop);
        self.server = Some(task);
        Ok(())
    }

    /// Stops the controller and starts it again at the standby address the
    /// agents also know (same store and config): a controller that moved.
    /// Agents must find it by themselves.
    pub async fn move_to_standby(&mut self) -> anyhow::Result<()> {
        let listener = self
            .standby
            .take()
            .ok_or_else(|| anyhow::anyhow!("the fleet has no standby address (FleetSpec.standby)"))?;
        let old = self.addr;
        self.stop_controller().await?;
        let config_path = self.dir.path().join("controller.toml");
        let mut stand_in = ControllerConfig::load(&config_path)?;
        stand_in.data_dir = tempfile::tempdir_in(self.dir.path())?.keep();
        let store = SledStore::open(&stand_in.data_dir.join("store"))?;
        drop(std::mem::replace(
            &mut self.controller,
            Arc::new(Controller::new(stand_in, Arc::new(store))?),
        ));
        self.addr = listener.local_addr()?;
        let (controller, stop, task) = start_controller(&config_path, listener, None).await?;
        self.controller = controller;
        self.stop_server = Some(stop);
        self.server = Some(task);
        tracing::info!(from = %old, to = %self.addr, "controller moved");
        Ok(())
    }

    /// Polls until every named host's local gate check gives `code`.
    pub async fn wait_local(&self, hosts: &[String], code: u8, what: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(20);
        loop {
            let mut pending = Vec::new();
            for h in hosts {
                if self.local_gate_check(h)?.0 != code {
                    pending.push(h.as_str());
                }
            }
            if pending.is_empty() {
                return Ok(start.elapsed());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what} on: {}", pending.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The digest `host`'s agent will report for its files as they are now.
    pub fn local_digest(&self, host: &str) -> anyhow::Result<String> {
        let h = self.host(host)?;
        let scanner = Scanner::new(&h.config.watch, h.config.root.clone())?;
        let (entries, _) = lockstep_agent::measurer::measure_host(&scanner, &h.config, true)?;
        Ok(hex::encode(lockstep_proto::digest::digest(&entries)))
    }

    /// Makes the given agents report now, and waits until the controller
    /// holds each one's current version set.
    pub async fn settle(&self, hosts: &[String]) -> anyhow::Result<()> {
        let mut want = Vec::new();
        for host in hosts {
            if let Some(t) = &self.host(host)?.trigger {
                t.notify_one();
            }
            want.push((host.clone(), self.local_digest(host)?));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let held: BTreeMap<String, String> = self
                .controller
                .queries
                .list_hosts(&self.spec.role)?
                .into_iter()
                .map(|h| (h.host, hex::encode(h.digest)))
                .collect();
            let pending: Vec<&str> = want
                .iter()
                .filter(|(h, d)| held.get(h) != Some(d))
                .map(|(h, _)| h.as_str())
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "controller did not receive the current version set of: {}",
                    pending.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Issues (once) and returns the TLS paths of operator `name`.
    pub fn operator(&self, name: &str, role: OperatorRole) -> anyhow::Result<TlsPaths> {
        let out = self
            .dir
            .path()
            .join("operators")
            .join(format!("{name}-{}", role.as_str()));
        if !out.with_extension("pem").exists() {
            pki::issue(
                &self.pki_dir,
                &Subject::Operator {
                    name: name.to_string(),
                    role,
                },
                &out,
                YEAR,
            )?;
        }
        Ok(TlsPaths {
            ca: self.pki_dir.join(pki::CA_CERT),
            cert: out.with_extension("pem"),
            key: out.with_extension("key"),
        })
    }

    /// Runs a `lockstep` console command as `operator`; returns exit code and output.
    pub async fn console(&self, operator: &TlsPaths, args: &[&str]) -> anyhow::Result<(u8, String)> {
        let mut argv: Vec<String> = vec!["lockstep".into()];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.extend([
            "--controller".into(),
            self.addr.to_string(),
            "--ca".into(),
            operator.ca.display().to_string(),
            "--cert".into(),
            operator.cert.display().to_string(),
            "--key".into(),
            operator.key.display().to_string(),
        ]);
        let cli = Cli::try_parse_from(&argv)?;
        let mut out = Vec::new();
        let code = console::run(cli, &mut out).await?;
        Ok((code, String::from_utf8_lossy(&out).into_owned()))
    }

    /// The gate check of the fleet's role, straight from the controller.
    pub fn gates(&self) -> anyhow::Result<GateCheckReply> {
        Ok(self.controller.queries.gate_check(&self.spec.role)?)
    }

    /// Polls the gate check until `ok` holds (or fails after 20 s).
    pub async fn wait_for(&self, what: &str, ok: impl Fn(&GateCheckReply) -> bool) -> anyhow::Result<GateCheckReply> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let g = self.gates()?;
            if ok(&g) {
                return Ok(g);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; gates now: {}", console::summary(&g));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A correctly formed attestation of `host`'s current files, as its
    /// agent would make it (for tests that play a host by hand).
    pub fn attestation(&self, host: &str, seq: u64) -> anyhow::Result<lockstep_proto::pb::Attestation> {
        let h = self.host(host)?;
        let scanner = lockstep_agent::measure::scan::Scanner::new(&h.config.watch, h.config.root.clone())?;
        let (entries, _) = lockstep_agent::measurer::measure_host(&scanner, &h.config, true)?;
        Ok(lockstep_proto::pb::Attestation {
            host: host.into(),
            role: self.spec.role.clone(),
            seq,
            measured_at_unix_ms: lockstep_proto::now_unix_ms(),
            digest: lockstep_proto::digest::digest(&entries).to_vec(),
            full: true,
            entries,
            ..Default::default()
        })
    }

    /// The real attestation key of `host`, read from its agent's state dir.
    pub fn host_key(&self, host: &str) -> anyhow::Result<lockstep_proto::envelope::Signer> {
        Ok(lockstep_agent::state::attestation_key(
            &self.host(host)?.config.state_dir,
        )?)
    }

    /// The last sequence number `host`'s agent used.
    pub fn last_seq(&self, host: &str) -> anyhow::Result<u64> {
        Ok(lockstep_agent::state::SeqCounter::load(&self.host(host)?.config.state_dir)?.last())
    }

    /// Every audit record, as the JSON lines `lockstep audit export` prints.
    pub async fn audit_records(&self) -> anyhow::Result<Vec<String>> {
        let viewer = self.operator("auditor", OperatorRole::Viewer)?;
        let (code, out) = self.console(&viewer, &["audit", "export"]).await?;
        anyhow::ensure!(code == 0, "audit export exited {code}: {out}");
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Waits (up to 15 s) for an audit record of `action` whose JSON line
    /// contains `needle`, and returns that line.
    pub async fn wait_audit(&self, action: &str, needle: &str) -> anyhow::Result<String> {
        let want = format!("\"action\":\"{action}\"");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let records = self.audit_records().await?;
            if let Some(r) = records.iter().find(|r| r.contains(&want) && r.contains(needle)) {
                return Ok(r.clone());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "no {action} audit record containing {needle:?}; the last records were:\n{}",
                    records[records.len().saturating_sub(10)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A raw agent-service client that presents `host`'s certificate.
    pub fn agent_client(&self, host: &str) -> anyhow::Result<AgentServiceClient<FailoverChannel>> {
        let h = self.host(host)?;
        agent_client_with(self.addr, &h.config.controller.tls)
    }

    pub fn ca_paths(&self) -> (PathBuf, PathBuf) {
        (self.pki_dir.join(pki::CA_CERT), self.pki_dir.join(pki::CA_KEY))
    }

    /// Stops everything; the temp dir goes when the fleet is dropped.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for host in self.hosts.keys().cloned().collect::<Vec<_>>() {
            self.stop_agent(&host).await?;
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.server.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

/// The identity the harness reads the controller with (in-process, no TLS).
fn harness_operator() -> lockstep_controller::audit::operator::Operator {
    lockstep_controller::audit::operator::Operator {
        name: "harness".into(),
        role: OperatorRole::Operator,
    }
}

/// An agent-service client with arbitrary TLS material (for hostile tests).
pub fn agent_client_with(addr: SocketAddr, paths: &TlsPaths) -> anyhow::Result<AgentServiceClient<FailoverChannel>> {
    let config = tls::client_config(paths)?;
    let channel = lockstep_link::failover::channel(&addr.to_string(), "127.0.0.1", config, Duration::from_secs(5))?;
    Ok(AgentServiceClient::new(channel))
}

fn controller_toml(spec: &FleetSpec, hosts: &[String], dir: &Path, addr: SocketAddr) -> String {
    format!(
        r#"listen = "{addr}"
data_dir = "{data}"
freshness_ttl = "{ttl}ms"
max_clock_skew = "30s"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/controller.pem"
key = "{pki}/controller.key"

[[role]]
name = "{role}"
mode = "{mode}"
hosts = {hosts:?}
per_host = {per_host:?}
retired_flags = {retired:?}

[enrollment]
ca_key = "{pki}/ca.key"
cert_validity = "{validity}ms"

{extra}
"#,
        validity = spec.cert_validity.as_millis(),
        extra = spec.controller_extra,
        retired = spec.retired_flags,
        data = dir.join("controller").display(),
        ttl = spec.freshness_ttl.as_millis(),
        pki = dir.join("pki").display(),
        role = spec.role,
        mode = spec.mode,
        per_host = spec.per_host,
    )
}

/// Binds `addr` again once its previous listener is gone (sled and the
/// server let go of it from tasks of their own, so this polls briefly).
async fn bind_again(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, %addr, "address not free yet");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("cannot bind {addr} again: {e}")),
        }
    }
}

async fn start_controller(
    config_path: &Path,
    listener: tokio::net::TcpListener,
    board: Option<tokio::net::TcpListener>,
) -> anyhow::Result<(Arc<Controller>, oneshot::Sender<()>, JoinHandle<()>)> {
    let config = ControllerConfig::load(config_path)?;
    let tls = tls::server_config(&config.tls)?;
    let store = SledStore::open(&config.data_dir.join("store"))?;
    let controller = Arc::new(Controller::new(config, Arc::new(store))?);
    let (stop, stopped) = oneshot::channel::<()>();
    let c = controller.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) =
            lockstep_controller::serve::serve_all(listener.into(), board.map(Into::into), tls, c, shutdown).await
        {
            tracing::error!(error = %e, "controller stopped with an error");
        }
    });
    Ok((controller, stop, task))
}

/// Gate state of `host` in a gate check reply.
pub fn state_of(g: &GateCheckReply, host: &str) -> GateState {
    g.gates
        .iter()
        .find(|x| x.host == host)
        .map_or(GateState::Unspecified, |x| x.state())
}

/// Reason texts of `host` in a gate check reply.
pub fn reasons_of(g: &GateCheckReply, host: &str) -> Vec<String> {
    g.gates
        .iter()
        .find(|x| x.host == host)
        .map(|x| x.reasons.iter().map(|r| r.text.clone()).collect())
        .unwrap_or_default()
}
