//! Controllers in HA on a real etcd cluster: three `etcd` members on
//! loopback (Debian's etcd-server; client TLS with certificates of the
//! fleet's CA, peers plain on loopback), and N real `lockstep-controller`
//! processes on one key prefix. Agents are real `lockstep-agent` processes
//! given every controller's address.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_link::failover::FailoverChannel;
use lockstep_link::tls::{self, TlsPaths};
use lockstep_pki::{self as pki, Subject};
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::console_service_client::ConsoleServiceClient;
use tempfile::TempDir;

use crate::child::{Killed, binary, pause_process};
use crate::etcd_cluster::EtcdCluster;
use crate::fleet::process::{console_command, operator};
use crate::netns::Net;
use crate::ports::free_port;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// N controllers on one etcd prefix, two operators, agents.
pub struct HaFleet {
    pub dir: TempDir,
    pub pki_dir: PathBuf,
    pub etcd: EtcdCluster,
    /// Each controller's gRPC address, in controller order.
    pub addrs: Vec<String>,
    metrics: Vec<std::net::SocketAddr>,
    configs: Vec<PathBuf>,
    /// Each controller's board (`https://…`), with [`HaSpec::board`].
    pub boards: Vec<String>,
    controllers: Vec<Option<Killed>>,
    sled: Option<Killed>,
    pub alice: TlsPaths,
    pub bob: TlsPaths,
    /// With [`HaSpec::isolated`], how many racks agents run in.
    racks: usize,
    /// More environment for every controller ([`HaSpec::env`]).
    env: Vec<(String, String)>,
    /// With [`HaSpec::isolated`]: each controller's box and the agents'
    /// racks on a test network (last, so it goes after the processes in it).
    net: Option<Net>,
}

pub struct HaSpec {
    pub controllers: usize,
    pub hosts: Vec<String>,
    pub freshness_ttl: Duration,
    pub leader_ttl_s: u64,
    /// Start one sled controller on controller 0's address instead of the
    /// etcd ones (for migration; [`HaFleet::stop_sled`], [`HaFleet::start_all`]).
    pub sled_first: bool,
    /// Each controller in a box of its own (a network namespace on a
    /// bridge; etcd, agents and consoles outside), so that a box can be cut
    /// off ([`HaFleet::cut`], [`HaFleet::cut_from_etcd`]). Needs root.
    pub isolated: bool,
    /// Each controller serves the board too ([`HaFleet::board_url`]).
    pub board: bool,
    /// An `[audit]` table for every controller's config.
    pub audit_toml: String,
    /// More environment for every controller (a test hook).
    pub env: Vec<(String, String)>,
}

impl HaSpec {
    /// Three controllers, `hosts` in role smars, not isolated.
    pub fn three(hosts: Vec<String>, freshness_ttl: Duration, leader_ttl_s: u64) -> Self {
        Self {
            controllers: 3,
            hosts,
            freshness_ttl,
            leader_ttl_s,
            sled_first: false,
            isolated: false,
            board: false,
            audit_toml: String::new(),
            env: Vec::new(),
        }
    }
}

impl HaFleet {
    /// A fleet from `spec` with a real agent for each of `agents` (hosts of
    /// the spec's inventory) reporting, a release from the first approved,
    /// and every one of their local gates open. With the release's number.
    pub async fn trading(spec: HaSpec, agents: &[String]) -> anyhow::Result<(Self, Vec<Killed>, u64)> {
        let fleet = Self::start(spec).await?;
        let mut running = Vec::new();
        for h in agents {
            running.push(fleet.start_agent(h).await?);
        }
        fleet
            .wait_hosts("every host reported", Duration::from_secs(60), |hs| {
                agents.iter().all(|h| hs.iter().any(|s| &s.host == h && s.last_seq > 0))
            })
            .await?;
        let first = agents.first().ok_or_else(|| anyhow::anyhow!("no agents"))?;
        let release = fleet.release_from_host(first).await?;
        for h in agents {
            fleet.wait_local(h, 0, Duration::from_secs(30)).await?;
        }
        Ok((fleet, running, release))
    }

    pub async fn start(spec: HaSpec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("lockstep-ha-").tempdir()?;
        let pki_dir = dir.path().join("pki");
        // Agents in racks of at most 32 (boxes of their own, after the
        // controllers'): each rack is one address to the controllers, as
        // hosts behind one router are, well under the controllers' bound
        // on handshakes in flight from one address.
        let racks = spec.hosts.len().div_ceil(32).max(1);
        let net = spec
            .isolated
            .then(|| Net::create(spec.controllers + racks))
            .transpose()?;
        // Where each controller listens, and where etcd does.
        let (ips, etcd_ip): (Vec<String>, String) = match &net {
            Some(n) => (
                n.boxes[..spec.controllers].iter().map(|b| b.ip.clone()).collect(),
                n.host_ip.clone(),
            ),
            None => (vec!["127.0.0.1".to_string(); spec.controllers], "127.0.0.1".to_string()),
        };
        pki::init(&pki_dir, YEAR)?;
        let mut names = vec!["127.0.0.1".to_string()];
        names.extend(ips.iter().filter(|ip| *ip != "127.0.0.1").cloned());
        pki::issue(
            &pki_dir,
            &Subject::Controller { names },
            &pki_dir.join("controller"),
            YEAR,
        )?;
        let alice = operator(&pki_dir, "alice", OperatorRole::Operator)?;
        let bob = operator(&pki_dir, "bob", OperatorRole::Approver)?;
        let etcd = EtcdCluster::start_on(dir.path(), &etcd_ip)?;
        let mut addrs = Vec::new();
        let mut metrics = Vec::new();
        let mut configs = Vec::new();
        let mut boards = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            let addr = format!("{ip}:{}", free_port()?);
            let metrics_at: std::net::SocketAddr = format!("{ip}:{}", free_port()?).parse()?;
            let board = if spec.board {
                let at = format!("{ip}:{}", free_port()?);
                boards.push(format!("https://{at}"));
                format!("[board]\nlisten = \"{at}\"\nurl = \"https://{at}\"\n")
            } else {
                String::new()
            };
            let config = dir.path().join(format!("controller-{i}.toml"));
            // Each controller's own client certificate of etcd's CA.
            let etcd_client = etcd.client_identity(&format!("ctl-{i}"))?;
            std::fs::write(
                &config,
                format!(
                    "listen = \"{addr}\"\ndata_dir = \"{data}\"\nfreshness_ttl = \"{ttl}ms\"\n\
                     [tls]\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/controller.pem\"\nkey = \"{pki}/controller.key\"\n\
                     [enrollment]\nca_key = \"{pki}/ca.key\"\n[metrics]\nlisten = \"{metrics_at}\"\n{board}\
                     [store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = {endpoints:?}\n\
                     ca = \"{etcd_ca}\"\ncert = \"{client_cert}\"\nkey = \"{client_key}\"\n\
                     name = \"ctl-{i}\"\nleader_ttl = \"{lease}s\"\nrequest_timeout = \"1s\"\nmax_txn_ops = 1024\n\
                     {audit}[[role]]\nname = \"smars\"\nhosts = {hosts:?}\n",
                    data = dir.path().join(format!("controller-{i}")).display(),
                    ttl = spec.freshness_ttl.as_millis(),
                    pki = pki_dir.display(),
                    endpoints = etcd.endpoints(),
                    etcd_ca = etcd_client.ca.display(),
                    client_cert = etcd_client.cert.display(),
                    client_key = etcd_client.key.display(),
                    lease = spec.leader_ttl_s,
                    hosts = spec.hosts,
                    audit = spec.audit_toml,
                ),
            )?;
            if i == 0 && spec.sled_first {
                // The same controller on sled: no [store] section, its own data dir.
                let text = std::fs::read_to_string(&config)?;
                let (head, roles) = text
                    .split_once("[store]")
                    .and_then(|(h, rest)| rest.split_once("[[role]]").map(|(_, r)| (h, r)))
                    .ok_or_else(|| anyhow::anyhow!("controller config without [store] or [[role]]"))?;
                let head = head.replace("controller-0\"", "controller-sled\"");
                std::fs::write(
                    dir.path().join("controller-sled.toml"),
                    format!("{head}[[role]]{roles}"),
                )?;
            }
            addrs.push(addr);
            metrics.push(metrics_at);
            configs.push(config);
        }
        let mut fleet = Self {
            dir,
            pki_dir,
            etcd,
            addrs,
            metrics,
            controllers: (0..spec.controllers).map(|_| None).collect(),
            sled: None,
            configs,
            boards,
            alice,
            bob,
            racks,
            net,
            env: spec.env,
        };
        if spec.sled_first {
            let log = std::fs::File::create(fleet.dir.path().join("controller-sled.log"))?;
            let child = Command::new(binary("lockstep-controller")?)
                .arg("--config")
                .arg(fleet.sled_config())
                .env("LOCKSTEP_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            fleet.sled = Some(Killed(child));
            let deadline = Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(&fleet.addrs[0]).await.is_err() {
                anyhow::ensure!(Instant::now() < deadline, "the sled controller never listened");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return Ok(fleet);
        }
        fleet.start_all().await?;
        Ok(fleet)
    }

    /// Starts every etcd controller and waits for a leader.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.addrs.len() {
            if self.controllers[i].is_none() {
                self.start_controller(i)?;
            }
        }
        self.wait_leader(None, Duration::from_secs(60)).await?;
        Ok(())
    }

    /// The sled controller's config (with `sled_first`).
    pub fn sled_config(&self) -> PathBuf {
        self.dir.path().join("controller-sled.toml")
    }

    /// Stops the sled controller (SIGTERM, and waits for it to exit).
    pub fn stop_sled(&mut self) -> anyhow::Result<()> {
        if let Some(mut s) = self.sled.take() {
            let pid = s.0.id();
            Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
            s.0.wait()?;
        }
        Ok(())
    }

    /// A scratch path inside the fleet's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn start_controller(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.controllers[i].is_none(), "controller {i} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("controller-{i}.log")))?;
        let program = binary("lockstep-controller")?;
        let mut command = match &self.net {
            Some(net) => net.command(i, &program),
            None => Command::new(&program),
        };
        let child = command
            .arg("--config")
            .arg(&self.configs[i])
            .env("LOCKSTEP_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.controllers[i] = Some(Killed(child));
        Ok(())
    }

    fn net(&self) -> anyhow::Result<&Net> {
        self.net
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("this fleet's controllers are not isolated (HaSpec::isolated)"))
    }

    /// Controller `i`'s box is cut off from the network, both ways, with
    /// no RST (a pulled cable).
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        self.net()?.cut(i)
    }

    /// Controller `i` can no longer reach etcd (nor etcd it); agents and
    /// consoles still reach it.
    pub fn cut_from_etcd(&self, i: usize) -> anyhow::Result<()> {
        self.net()?.cut_from(i, &self.etcd.ports())
    }

    /// Every cut mended.
    pub fn mend(&self) -> anyhow::Result<()> {
        self.net()?.mend()
    }

    /// What controller `i` has logged.
    pub fn controller_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("controller-{i}.log"))).unwrap_or_default()
    }

    /// `kill -9` controller `i`.
    pub fn kill_controller(&mut self, i: usize) {
        self.controllers[i] = None;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) controller `i`.
    pub fn pause_controller(&self, i: usize, pause: bool) -> anyhow::Result<()> {
        let c = self.controllers[i]
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("controller {i} is not running"))?;
        pause_process(c, pause)
    }

    /// An agent-service client speaking as `host` (its agent's certificate)
    /// to controller `i` alone.
    pub fn agent_client_at(&self, i: usize, host: &str) -> anyhow::Result<AgentServiceClient<FailoverChannel>> {
        let base = self.dir.path().join("hosts").join(host);
        let paths = TlsPaths {
            ca: self.pki_dir.join(pki::CA_CERT),
            cert: base.join("agent.pem"),
            key: base.join("agent.key"),
        };
        let channel = lockstep_link::failover::channel(
            &self.addrs[i],
            "127.0.0.1",
            tls::client_config(&paths)?,
            Duration::from_secs(2),
        )?;
        Ok(AgentServiceClient::new(channel))
    }

    /// Controller `i`'s `/metrics` (leader, epoch), if it answers.
    pub async fn role_of(&self, i: usize) -> Option<(bool, i64)> {
        let body = self.metrics_body(i).await?;
        Some((
            gauge_in(&body, "lockstep_controller_leader")? == 1,
            gauge_in(&body, "lockstep_controller_epoch")?,
        ))
    }

    /// Gauge `name` (unlabelled) from controller `i`'s `/metrics`.
    pub async fn gauge(&self, i: usize, name: &str) -> Option<i64> {
        gauge_in(&self.metrics_body(i).await?, name)
    }

    /// Controller `i`'s whole `/metrics` page, asked until it answers.
    pub async fn metrics_within(&self, i: usize, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(body) = self.metrics_body(i).await {
                return Ok(body);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "controller {i}'s /metrics did not answer within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics_body(&self, i: usize) -> Option<String> {
        let (_, _, body) = tokio::time::timeout(
            Duration::from_secs(1),
            crate::collectors::webhook::http_get(self.metrics[i], "/metrics"),
        )
        .await
        .ok()?
        .ok()?;
        Some(body)
    }

    /// The controller that leads (and its epoch), once one does and the
    /// others know it; `not` excludes a controller (the one just killed,
    /// frozen or cut off), as leader and as one that must know.
    pub async fn wait_leader(&self, not: Option<usize>, within: Duration) -> anyhow::Result<(usize, i64)> {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..self.addrs.len() {
                if Some(i) == not || self.controllers[i].is_none() {
                    continue;
                }
                if let Some((true, epoch)) = self.role_of(i).await {
                    // Settled: every other live controller follows this
                    // epoch (so its refusals name this leader), or does
                    // not answer at all (a paused process).
                    let mut others_follow = true;
                    // `not` is not asked: one cut off from etcd cannot know.
                    for j in
                        (0..self.addrs.len()).filter(|&j| j != i && Some(j) != not && self.controllers[j].is_some())
                    {
                        others_follow &= match self.role_of(j).await {
                            Some((false, e)) => e == epoch,
                            Some((true, _)) => false,
                            None => true,
                        };
                    }
                    if others_follow {
                        return Ok((i, epoch));
                    }
                }
            }
            if Instant::now() > deadline {
                let logs = self.controller_logs_tail();
                let etcd = tail(&std::fs::read_to_string(self.dir.path().join("etcd-0.log")).unwrap_or_default());
                anyhow::bail!("no controller led within {within:?}\n{logs}--- etcd-0:\n{etcd}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A console client that tries every controller (as operators would be
    /// told to configure it), moved onto the leader first as the `lockstep`
    /// console is, so its first call is not refused by a standby.
    pub async fn console(&self, who: &TlsPaths) -> anyhow::Result<ConsoleServiceClient<FailoverChannel>> {
        self.console_via(who, 0).await
    }

    /// [`Self::console`] with controller `first`'s address first.
    pub async fn console_via(
        &self,
        who: &TlsPaths,
        first: usize,
    ) -> anyhow::Result<ConsoleServiceClient<FailoverChannel>> {
        let mut addrs = self.addrs.clone();
        addrs.rotate_left(first);
        let targets = addrs
            .into_iter()
            .map(|address| tls::Target {
                address,
                server_name: "127.0.0.1".into(),
            })
            .collect();
        let channel =
            lockstep_link::failover::failover_channel(targets, tls::client_config(who)?, Duration::from_secs(2))?
                .retrying();
        channel.find_leader().await;
        Ok(ConsoleServiceClient::new(channel).max_decoding_message_size(256 << 20))
    }

    /// A console client for controller `i` alone.
    pub fn console_at(&self, i: usize, who: &TlsPaths) -> anyhow::Result<ConsoleServiceClient<FailoverChannel>> {
        let channel = lockstep_link::failover::channel(
            &self.addrs[i],
            "127.0.0.1",
            tls::client_config(who)?,
            Duration::from_secs(2),
        )?;
        Ok(ConsoleServiceClient::new(channel))
    }

    /// `host`'s agent config with every controller's address, written to
    /// `hosts/<host>/agent.toml`; its tree at `hosts/<host>/root`.
    pub fn agent_config(&self, host: &str) -> anyhow::Result<lockstep_agent::config::AgentConfig> {
        self.agent_config_via(host, 0)
    }

    /// [`Self::agent_config`] with controller `first`'s address first in
    /// the list (the others follow in turn).
    pub fn agent_config_via(&self, host: &str, first: usize) -> anyhow::Result<lockstep_agent::config::AgentConfig> {
        let mut addrs = self.addrs.clone();
        addrs.rotate_left(first);
        let base = self.dir.path().join("hosts").join(host);
        std::fs::create_dir_all(base.join("root/opt/smars/bin"))?;
        std::fs::write(base.join("root/opt/smars/bin/smars"), "build 1\n")?;
        let text = format!(
            "host = \"{host}\"\nrole = \"smars\"\nstate_dir = \"{b}/state\"\nwatch = [\"/opt/smars/**\"]\nroot = \"{b}/root\"\nscan_interval = \"1s\"\nmetrics_listen = \"off\"\n[controller]\naddress = {addrs:?}\nconnect_timeout = \"1s\"\nca = \"{pki}/ca.pem\"\ncert = \"{b}/agent.pem\"\nkey = \"{b}/agent.key\"\n[gate]\nstate_file = \"{b}/gate.json\"\n",
            b = base.display(),
            pki = self.pki_dir.display(),
        );
        let path = base.join("agent.toml");
        std::fs::write(&path, &text)?;
        Ok(lockstep_agent::config::AgentConfig::parse(&text, &path)?)
    }

    /// Enrolls `host` through whichever controller leads and starts its
    /// real agent process.
    pub async fn start_agent(&self, host: &str) -> anyhow::Result<Killed> {
        self.start_agent_via(host, 0).await
    }

    /// [`Self::start_agent`] with controller `first`'s address first in
    /// the agent's list.
    pub async fn start_agent_via(&self, host: &str, first: usize) -> anyhow::Result<Killed> {
        let token = self
            .console(&self.alice)
            .await?
            .create_token(pb::CreateTokenRequest {
                allow_new_tpm: false,
                host: host.into(),
                role: "smars".into(),
                ttl_ms: 0,
            })
            .await?
            .into_inner()
            .token;
        let config = self.agent_config_via(host, first)?;
        lockstep_agent::link::enrollment::enroll(&config, &token, None).await?;
        let base = self.dir.path().join("hosts").join(host);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(base.join("agent.log"))?;
        let program = binary("lockstep-agent")?;
        let mut command = match &self.net {
            // Its rack: a box after the controllers', by the host's name.
            Some(net) => {
                let rack = host.bytes().map(usize::from).sum::<usize>() % self.racks;
                net.command(self.addrs.len() + rack, &program)
            }
            None => Command::new(&program),
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

    /// `host`'s agent certificate and key (made at enrollment), with
    /// `ca` as the CA to check servers against.
    pub fn agent_identity(&self, host: &str, ca: &Path) -> TlsPaths {
        let base = self.dir.path().join("hosts").join(host);
        TlsPaths {
            ca: ca.to_path_buf(),
            cert: base.join("agent.pem"),
            key: base.join("agent.key"),
        }
    }

    /// Controller `i`'s config file (its `[store.etcd]` settings too).
    pub fn controller_config(&self, i: usize) -> &Path {
        &self.configs[i]
    }

    /// Where `host`'s agent writes its local gate state.
    pub fn gate_file_path(&self, host: &str) -> PathBuf {
        self.dir.path().join("hosts").join(host).join("gate.json")
    }

    /// `host`'s local gate state file, as its agent last wrote it.
    pub fn gate_file(&self, host: &str) -> anyhow::Result<lockstep_agent::gate::gatekeeper::GateFile> {
        let path = self.gate_file_path(host);
        lockstep_agent::gate::gatekeeper::GateFile::read(&path)?
            .ok_or_else(|| anyhow::anyhow!("{host}: no gate file at {}", path.display()))
    }

    /// `lockstep-agent gate check` of `host`: 0 open, else closed.
    pub fn local_gate_check(&self, host: &str) -> anyhow::Result<i32> {
        Ok(self.gate_check_output(host)?.status.code().unwrap_or(-1))
    }

    /// `lockstep-agent gate check` of `host`: its exit code (0 open, -1
    /// killed) and what it printed.
    pub fn local_gate(&self, host: &str) -> anyhow::Result<(i32, String)> {
        let out = self.gate_check_output(host)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code().unwrap_or(-1), said))
    }

    /// Samples each of `hosts`' local gates every 100 ms until `stop`: for
    /// every time one was seen closed, what its check said and its agent's
    /// last log lines (so a failure says why, not only who).
    pub fn watch_gates(
        self: std::sync::Arc<Self>,
        hosts: Vec<String>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut closed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for h in &hosts {
                    match self.local_gate(h) {
                        Ok((0, _)) => {}
                        Ok((code, said)) => closed.push(format!(
                            "{h} (exit {code}): {}\n{}",
                            said.trim(),
                            self.agent_log_tail(h)
                        )),
                        Err(e) => closed.push(format!("{h}: gate check did not run: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            closed
        })
    }

    /// The last lines `host`'s agent logged (warnings and worse).
    pub fn agent_log_tail(&self, host: &str) -> String {
        tail(&std::fs::read_to_string(self.dir.path().join("hosts").join(host).join("agent.log")).unwrap_or_default())
    }

    /// The last lines every controller logged, each under its name.
    pub fn controller_logs_tail(&self) -> String {
        (0..self.addrs.len())
            .map(|i| format!("--- controller {i}:\n{}\n", tail(&self.controller_log(i))))
            .collect()
    }

    /// What `lockstep-agent gate check` of `host` prints (stdout and stderr).
    pub fn local_gate_text(&self, host: &str) -> anyhow::Result<String> {
        let out = self.gate_check_output(host)?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn gate_check_output(&self, host: &str) -> anyhow::Result<std::process::Output> {
        let config = self.dir.path().join("hosts").join(host).join("agent.toml");
        Ok(Command::new(binary("lockstep-agent")?)
            .args(["gate", "check", "--config"])
            .arg(&config)
            .output()?)
    }

    /// Waits (`within`) until `host`'s local gate check exits `code`.
    pub async fn wait_local(&self, host: &str, code: i32, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.local_gate_check(host)? != code {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{host}: local gate check never exited {code}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Waits until the leader has accepted a report from every one of
    /// `hosts` received after `since_unix_ms` (agents found it by themselves).
    pub async fn wait_reported_since(
        &self,
        hosts: &[String],
        since_unix_ms: i64,
        within: Duration,
    ) -> anyhow::Result<()> {
        self.wait_hosts("every agent accepted by the new leader", within, |hs| {
            hosts.iter().all(|h| {
                hs.iter()
                    .any(|s| &s.host == h && s.last_received_at_unix_ms > since_unix_ms)
            })
        })
        .await
    }

    /// Polls the leader until `ok` holds of the host list.
    pub async fn wait_hosts(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&[pb::HostStatus]) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut console = self.console(&self.alice).await?;
        loop {
            if let Ok(hosts) = console.list_hosts(pb::ListHostsRequest::default()).await {
                if ok(&hosts.into_inner().hosts) {
                    return Ok(());
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the `lockstep` console as `who` against every controller's
    /// address (as an operator would configure it): exit code, stdout, stderr.
    pub fn lockstep(&self, who: &TlsPaths, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        self.lockstep_via(who, 0, args)
    }

    /// [`Self::lockstep`] with controller `first`'s address first.
    pub fn lockstep_via(&self, who: &TlsPaths, first: usize, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let mut addrs = self.addrs.clone();
        addrs.rotate_left(first);
        lockstep_on(who, &addrs.join(","), args)
    }

    /// [`Self::lockstep`] given controller `i`'s address alone.
    pub fn lockstep_at(&self, who: &TlsPaths, i: usize, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        lockstep_on(who, &self.addrs[i], args)
    }

    /// Proposes a release from `host` (alice) and approves it (bob).
    pub async fn release_from_host(&self, host: &str) -> anyhow::Result<u64> {
        crate::fleet::process::release_from_host(self.console(&self.alice).await?, self.console(&self.bob).await?, host)
            .await
    }
}

/// The `lockstep` console given `addresses`: exit code, stdout, stderr.
fn lockstep_on(who: &TlsPaths, addresses: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = console_command(who, addresses)?
        .args(["--server-name", "127.0.0.1"])
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Unlabelled gauge `name` in a `/metrics` text.
fn gauge_in(body: &str, name: &str) -> Option<i64> {
    let prefix = format!("{name} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse::<f64>().ok()))
        .map(|v| v as i64)
}

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
