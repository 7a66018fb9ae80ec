//! A fleet around a real `lockstep-controller` *process*, for what is about
//! processes: `kill -9` and restart on the same data, a full disk, a fleet
//! far larger than the in-process harness runs. Hosts are enrolled through
//! the real enrollment path; each can then be a simulated agent in this
//! process (its own key and certificate) or a real `lockstep-agent` process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_agent::config::AgentConfig;
use lockstep_link::failover::FailoverChannel;
use lockstep_link::tls::{self, TlsPaths};
use lockstep_pki::{self as pki, Subject};
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::console_service_client::ConsoleServiceClient;
use lockstep_proto::pb::{self, Entry, EntryKind};
use tempfile::TempDir;

use crate::child::{Killed, binary};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The `lockstep` console as `who` against `controller` (one address or a
/// comma-separated list); the caller adds the subcommand.
pub fn console_command(who: &TlsPaths, controller: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new(binary("lockstep")?);
    cmd.args(["--controller", controller])
        .arg("--ca")
        .arg(&who.ca)
        .arg("--cert")
        .arg(&who.cert)
        .arg("--key")
        .arg(&who.key);
    Ok(cmd)
}

/// What the controller process is started with.
pub struct ProcSpec {
    pub hosts: Vec<String>,
    pub freshness_ttl: Duration,
    /// Appended to controller.toml (e.g. `[limits]`).
    pub extra_toml: String,
    /// Where the controller keeps its store; default: inside the fleet's dir.
    pub data_dir: Option<PathBuf>,
    /// LOCKSTEP_LOG for the controller.
    pub log: String,
    /// Keep the ledger in a 3-member etcd cluster the fleet starts
    /// (Debian's etcd-server) instead of sled: one controller, leading.
    pub etcd: bool,
}

impl ProcSpec {
    pub fn smars(hosts: Vec<String>) -> Self {
        Self {
            hosts,
            freshness_ttl: Duration::from_secs(600),
            extra_toml: String::new(),
            data_dir: None,
            log: "error".into(),
            etcd: false,
        }
    }
}

pub struct ProcFleet {
    pub dir: TempDir,
    pub pki_dir: PathBuf,
    pub addr: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// Proposes releases, halts, enrolls.
    pub alice: TlsPaths,
    /// Approves releases.
    pub bob: TlsPaths,
    log: String,
    controller: Option<Killed>,
    /// The etcd cluster the ledger is in (`ProcSpec::etcd`), held so its
    /// members run as long as the fleet.
    etcd: Option<crate::etcd_cluster::EtcdCluster>,
}

impl ProcFleet {
    /// Makes a CA, the controller's config and certificate, two operators,
    /// and starts the controller process.
    pub async fn start(spec: ProcSpec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("lockstep-proc-fleet-").tempdir()?;
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, YEAR)?;
        pki::issue(
            &pki_dir,
            &Subject::Controller {
                names: vec!["127.0.0.1".into()],
            },
            &pki_dir.join("controller"),
            YEAR,
        )?;
        let alice = operator(&pki_dir, "alice", OperatorRole::Operator)?;
        let bob = operator(&pki_dir, "bob", OperatorRole::Approver)?;
        let port = crate::ports::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let data_dir = spec.data_dir.unwrap_or_else(|| dir.path().join("controller"));
        let (etcd, store_toml) = if spec.etcd {
            let cluster = crate::etcd_cluster::EtcdCluster::start(dir.path())?;
            let client = cluster.client_identity("ctl-0")?;
            let toml = format!(
                "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = {endpoints:?}\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nname = \"ctl-0\"\nmax_txn_ops = 1024\n",
                endpoints = cluster.endpoints(),
                ca = client.ca.display(),
                cert = client.cert.display(),
                key = client.key.display(),
            );
            (Some(cluster), toml)
        } else {
            (None, String::new())
        };
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{addr}\"\ndata_dir = \"{data}\"\nfreshness_ttl = \"{ttl}ms\"\n[tls]\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/controller.pem\"\nkey = \"{pki}/controller.key\"\n[enrollment]\nca_key = \"{pki}/ca.key\"\n[metrics]\nlisten = \"off\"\n[[role]]\nname = \"smars\"\nhosts = {hosts:?}\n{extra}\n{store_toml}",
                data = data_dir.display(),
                ttl = spec.freshness_ttl.as_millis(),
                pki = pki_dir.display(),
                hosts = spec.hosts,
                extra = spec.extra_toml,
            ),
        )?;
        let mut fleet = Self {
            dir,
            pki_dir,
            addr,
            config,
            data_dir,
            alice,
            bob,
            log: spec.log,
            controller: None,
            etcd,
        };
        fleet.start_controller().await?;
        if fleet.etcd.is_some() {
            fleet.wait_leading(Duration::from_secs(30)).await?;
        }
        Ok(fleet)
    }

    /// On etcd the port answers UNAVAILABLE until the controller leads
    /// (etcd starting, the lease being won): waits for a console call to
    /// go through.
    pub async fn wait_leading(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let answer = self
                .console(&self.alice)?
                .cluster_status(pb::ClusterStatusRequest {})
                .await;
            match answer {
                Ok(_) => return Ok(()),
                Err(status) if Instant::now() > deadline => {
                    anyhow::bail!("the controller did not lead within {within:?}: {}", status.message())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Starts the controller process on the fleet's config and data, and
    /// waits until it listens.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        self.start_controller_with(&[]).await
    }

    /// [`Self::start_controller`] with more environment (a test hook).
    pub async fn start_controller_with(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        anyhow::ensure!(self.controller.is_none(), "the controller is already running");
        let child = Command::new(binary("lockstep-controller")?)
            .arg("--config")
            .arg(&self.config)
            .env("LOCKSTEP_LOG", &self.log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        self.controller = Some(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            if let Some(status) = self.controller.as_mut().and_then(|c| c.0.try_wait().ok().flatten()) {
                self.controller = None;
                anyhow::bail!("the controller exited at start: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "controller did not start listening on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(|c| c.0.id())
    }

    /// `kill -9` the controller: no shutdown, no flush, no goodbye.
    pub fn kill_controller(&mut self) -> anyhow::Result<()> {
        let mut c = self
            .controller
            .take()
            .ok_or_else(|| anyhow::anyhow!("no controller running"))?;
        c.0.kill()?;
        c.0.wait()?;
        Ok(())
    }

    /// The controller's exit status if it has exited by itself.
    pub fn controller_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.controller.as_mut()?.0.try_wait().ok().flatten()?;
        self.controller = None;
        Some(status)
    }

    pub fn console(&self, who: &TlsPaths) -> anyhow::Result<ConsoleServiceClient<FailoverChannel>> {
        let channel = lockstep_link::failover::channel(
            &self.addr,
            "127.0.0.1",
            tls::client_config(who)?,
            Duration::from_secs(10),
        )?;
        Ok(ConsoleServiceClient::new(channel).max_decoding_message_size(256 << 20))
    }

    /// Runs the `lockstep` console binary as `who`; (exit code, stdout+stderr).
    pub fn lockstep(&self, who: &TlsPaths, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = console_command(who, &self.addr)?.args(args).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// The agent config of `host` (its files under `hosts/<host>/root`),
    /// written to `hosts/<host>/agent.toml`.
    pub fn agent_config(&self, host: &str) -> anyhow::Result<(PathBuf, AgentConfig)> {
        let base = self.dir.path().join("hosts").join(host);
        std::fs::create_dir_all(base.join("root/opt/smars"))?;
        let text = format!(
            "host = \"{host}\"\nrole = \"smars\"\nstate_dir = \"{b}/state\"\nwatch = [\"/opt/smars/**\"]\nroot = \"{b}/root\"\nscan_interval = \"1s\"\nmetrics_listen = \"off\"\n[controller]\naddress = \"{addr}\"\nca = \"{pki}/ca.pem\"\ncert = \"{b}/agent.pem\"\nkey = \"{b}/agent.key\"\n[gate]\nstate_file = \"{b}/gate.json\"\n",
            b = base.display(),
            addr = self.addr,
            pki = self.pki_dir.display(),
        );
        let path = base.join("agent.toml");
        std::fs::write(&path, &text)?;
        Ok((path.clone(), AgentConfig::parse(&text, &path)?))
    }

    /// Enrolls `hosts` (a join token each, then the agent side of
    /// enrollment, `concurrency` at a time); their configs, in order.
    pub async fn enroll(&self, hosts: &[String], concurrency: usize) -> anyhow::Result<Vec<AgentConfig>> {
        let mut console = self.console(&self.alice)?;
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut enrolling = tokio::task::JoinSet::new();
        for (i, host) in hosts.iter().enumerate() {
            let token = console
                .create_token(pb::CreateTokenRequest {
                    allow_new_tpm: false,
                    host: host.clone(),
                    role: "smars".into(),
                    ttl_ms: 0,
                })
                .await?
                .into_inner()
                .token;
            let (_, config) = self.agent_config(host)?;
            let permit = limit.clone().acquire_owned().await?;
            enrolling.spawn(async move {
                let _permit = permit;
                lockstep_agent::link::enrollment::enroll(&config, &token, None).await?;
                anyhow::Ok((i, config))
            });
        }
        let mut configs = Vec::with_capacity(hosts.len());
        while let Some(done) = enrolling.join_next().await {
            configs.push(done??);
        }
        configs.sort_by_key(|(i, _)| *i);
        Ok(configs.into_iter().map(|(_, c)| c).collect())
    }

    /// Starts a real `lockstep-agent run` for an enrolled `host`; its log
    /// (warnings and up) goes to [`ProcFleet::agent_log`].
    pub fn start_agent(&self, host: &str) -> anyhow::Result<Killed> {
        self.start_agent_under(host, &[])
    }

    /// Like [`ProcFleet::start_agent`], under `wrapper` (e.g. `nice -n 10`).
    pub fn start_agent_under(&self, host: &str, wrapper: &[&str]) -> anyhow::Result<Killed> {
        let base = self.dir.path().join("hosts").join(host);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("agent.log"))?;
        let agent = binary("lockstep-agent")?;
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(agent);
                c
            }
            None => Command::new(agent),
        };
        let child = command
            .args(["run", "--config"])
            .arg(base.join("agent.toml"))
            .env("LOCKSTEP_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Killed(child))
    }

    /// What `host`'s agent processes have logged so far.
    pub fn agent_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("hosts").join(host).join("agent.log")).unwrap_or_default()
    }

    /// Replaces `host`'s tree with `build` (the same shape for every host).
    pub fn write_tree(&self, host: &str, build: &str) -> anyhow::Result<()> {
        let root = self.dir.path().join("hosts").join(host).join("root/opt/smars");
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::write(root.join("bin/smars"), build)?;
        std::fs::write(root.join("etc/smars.conf"), "venue = NYSE\n")?;
        Ok(())
    }

    /// Waits (30 s at most) until `lockstep-agent gate check` of `host`
    /// exits `code`.
    pub async fn wait_local(&self, host: &str, code: i32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.local_gate_check(host)? == code {
                return Ok(());
            }
            if Instant::now() > deadline {
                let gate = std::fs::read_to_string(self.dir.path().join("hosts").join(host).join("gate.json"))
                    .unwrap_or_default();
                anyhow::bail!("{host}: local gate check never exited {code}; gate file: {gate}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `lockstep-agent gate check` of `host`, through the real binary.
    pub fn local_gate_check(&self, host: &str) -> anyhow::Result<i32> {
        let config = self.dir.path().join("hosts").join(host).join("agent.toml");
        let out = Command::new(binary("lockstep-agent")?)
            .args(["gate", "check", "--config"])
            .arg(&config)
            .output()?;
        Ok(out.status.code().unwrap_or(-1))
    }

    /// Every host's status, as the controller sees it.
    pub async fn hosts(&self) -> anyhow::Result<Vec<pb::HostStatus>> {
        let mut console = self.console(&self.alice)?;
        Ok(console
            .list_hosts(pb::ListHostsRequest::default())
            .await?
            .into_inner()
            .hosts)
    }

    /// Polls the controller until `ok` holds of the host list (30 s at most).
    pub async fn wait_hosts(&self, what: &str, ok: impl Fn(&[pb::HostStatus]) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(hosts) = self.hosts().await {
                if ok(&hosts) {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Proposes a release from `host`'s report (alice) and approves it (bob).
    pub async fn release_from_host(&self, host: &str) -> anyhow::Result<u64> {
        release_from_host(self.console(&self.alice)?, self.console(&self.bob)?, host).await
    }
}

/// A smars release from `host`'s report: proposed by `proposer`, approved
/// by `approver` (two operators, as the two-person rule wants).
pub async fn release_from_host(
    mut proposer: ConsoleServiceClient<FailoverChannel>,
    mut approver: ConsoleServiceClient<FailoverChannel>,
    host: &str,
) -> anyhow::Result<u64> {
    let release = proposer
        .propose_release(pb::ProposeReleaseRequest {
            role: "smars".into(),
            source: Some(pb::propose_release_request::Source::FromHost(host.into())),
            ..Default::default()
        })
        .await?
        .into_inner();
    approver
        .approve_release(pb::ApproveReleaseRequest { number: release.number })
        .await?;
    Ok(release.number)
}

pub fn operator(pki_dir: &Path, name: &str, role: OperatorRole) -> anyhow::Result<TlsPaths> {
    let out = pki_dir.join(name);
    pki::issue(
        pki_dir,
        &Subject::Operator {
            name: name.into(),
            role,
        },
        &out,
        YEAR,
    )?;
    Ok(TlsPaths {
        ca: pki_dir.join(pki::CA_CERT),
        cert: out.with_extension("pem"),
        key: out.with_extension("key"),
    })
}

/// A small version set for simulated agents (the same `build` on every
/// host: stored once, by digest).
pub fn entries(build: &str) -> Vec<Entry> {
    let files = [
        ("/opt/smars/bin/smars", build),
        ("/opt/smars/etc/smars.conf", "venue = NYSE"),
    ];
    let list = files
        .iter()
        .map(|(path, content)| Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File as i32,
            sha256: ring::digest::digest(&ring::digest::SHA256, content.as_bytes())
                .as_ref()
                .to_vec(),
            size: content.len() as u64,
            mode: 0o755,
            ..Default::default()
        })
        .collect();
    lockstep_proto::digest::canonicalize(list).unwrap_or_default()
}

/// An attestation of `set` by `host` (a simulated agent's report).
pub fn report(host: &str, seq: u64, set: &[Entry], full: bool) -> pb::Attestation {
    pb::Attestation {
        host: host.into(),
        role: "smars".into(),
        seq,
        measured_at_unix_ms: lockstep_proto::now_unix_ms(),
        digest: lockstep_proto::digest::digest(set).to_vec(),
        full,
        entries: if full { set.to_vec() } else { Vec::new() },
        ..Default::default()
    }
}

/// A simulated agent's client: its own certificate over mTLS.
pub fn agent_client(
    config: &AgentConfig,
) -> anyhow::Result<pb::agent_service_client::AgentServiceClient<FailoverChannel>> {
    let channel = lockstep_link::failover::channel(
        &config.controller.address,
        &config.controller.server_name,
        tls::client_config(&config.controller.tls)?,
        Duration::from_secs(30),
    )?;
    Ok(pb::agent_service_client::AgentServiceClient::new(channel))
}
