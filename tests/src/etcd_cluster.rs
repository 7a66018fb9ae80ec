//! A 3-member etcd cluster (Debian's etcd-server) for the HA tests: its
//! own CA, mutual TLS on the client and peer ports, one client certificate
//! per controller, and `etcdctl` as an attacker holding a certificate would
//! use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lockstep_link::tls::TlsPaths;
use lockstep_pki::{self as pki, EtcdSubject};

use crate::child::Killed;
use crate::ports::free_port;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Debian's etcd-server puts it here; `.ci/run` installs it.
pub const ETCD: &str = "/usr/bin/etcd";
/// Debian's etcd-client.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

struct Member {
    name: String,
    client: u16,
    peer: u16,
    process: Option<Killed>,
}

/// A 3-member etcd cluster as docs/ha.md sets one up: etcd's own CA
/// (never the fleet CA), mutual TLS on the client and the peer ports, one
/// client certificate per controller.
pub struct EtcdCluster {
    dir: PathBuf,
    /// etcd's CA and its certificates (`lockstep pki etcd`).
    pub etcd_pki: PathBuf,
    ip: String,
    members: Vec<Member>,
    cluster: String,
}

impl EtcdCluster {
    /// Three members on loopback.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(dir, "127.0.0.1")
    }

    /// Three members listening on `ip` (an address of this network
    /// namespace: loopback, or a test bridge's).
    pub fn start_on(dir: &Path, ip: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(ETCD).is_file(),
            "{ETCD} is missing: install Debian's etcd-server (.ci/run does)"
        );
        let etcd_pki = dir.join("etcd-pki");
        pki::etcd_init(&etcd_pki, YEAR)?;
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("etcd-{i}");
            pki::etcd_issue(
                &etcd_pki,
                &EtcdSubject::Member {
                    name: name.clone(),
                    addresses: vec![ip.to_string()],
                },
                &etcd_pki.join(&name),
                YEAR,
            )?;
            members.push(Member {
                name,
                client: free_port()?,
                peer: free_port()?,
                process: None,
            });
        }
        let cluster = members
            .iter()
            .map(|m| format!("{}=https://{ip}:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Self {
            dir: dir.to_path_buf(),
            etcd_pki,
            ip: ip.to_string(),
            members,
            cluster,
        };
        for i in 0..3 {
            c.start_member(i)?;
        }
        Ok(c)
    }

    /// `host:port` of each member's client side.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}:{}", self.ip, m.client))
            .collect()
    }

    /// Each member's client and peer ports (what a cut from etcd drops).
    pub fn ports(&self) -> Vec<u16> {
        self.members.iter().flat_map(|m| [m.client, m.peer]).collect()
    }

    /// etcd's CA certificate (what controllers check etcd's servers against).
    pub fn ca(&self) -> PathBuf {
        self.etcd_pki.join(pki::ETCD_CA_CERT)
    }

    /// A client certificate of etcd's CA for controller `name`
    /// (`lockstep pki etcd client`).
    pub fn client_identity(&self, name: &str) -> anyhow::Result<TlsPaths> {
        let out = self.etcd_pki.join(format!("client-{name}"));
        let (cert, key) = pki::etcd_issue(
            &self.etcd_pki,
            &EtcdSubject::Client {
                controller: name.to_string(),
            },
            &out,
            YEAR,
        )?;
        Ok(TlsPaths {
            ca: self.ca(),
            cert,
            key,
        })
    }

    /// Starts member `i` again on its data (or for the first time).
    pub fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        anyhow::ensure!(m.process.is_none(), "{} is already running", m.name);
        let data = self.dir.join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let client = format!("https://{}:{}", self.ip, m.client);
        let peer = format!("https://{}:{}", self.ip, m.peer);
        let file = |suffix: &str| self.etcd_pki.join(format!("{}.{suffix}", m.name)).display().to_string();
        let ca = self.ca().display().to_string();
        // The command line docs/ha.md gives, with short raft timers for
        // loopback (a lost member is noticed fast).
        let child = Command::new(ETCD)
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=lockstep-test")
            .arg(format!("--cert-file={}", file("pem")))
            .arg(format!("--key-file={}", file("key")))
            .arg(format!("--trusted-ca-file={ca}"))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", file("pem")))
            .arg(format!("--peer-key-file={}", file("key")))
            .arg(format!("--peer-trusted-ca-file={ca}"))
            .arg("--peer-client-cert-auth")
            .arg("--heartbeat-interval=100")
            .arg("--election-timeout=1000")
            .arg("--max-txn-ops=1024")
            // etcd 3.4 keeps the last 100,000 raft entries in memory by
            // default: with multi-megabyte gate states (a 10,000-host role)
            // each member grew by 1 GB a minute in the years bench until the
            // machine stalled. 10,000 is etcd 3.6's default (docs/ha.md).
            .arg("--snapshot-count=10000")
            .arg("--quota-backend-bytes=1073741824")
            .arg("--auto-compaction-mode=revision")
            .arg("--auto-compaction-retention=10000")
            .arg("--log-level=error")
            .arg("--logger=zap")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.members[i].process = Some(Killed(child));
        Ok(())
    }

    /// Stops member `i` (SIGKILL; its data stays).
    pub fn stop_member(&mut self, i: usize) {
        self.members[i].process = None;
    }

    /// Debian's `etcdctl` (v3 API) against every member as `who`: what an
    /// attacker holding that certificate can do. Exit status and output.
    pub fn etcdctl(&self, who: &TlsPaths, args: &[&str]) -> anyhow::Result<std::process::Output> {
        anyhow::ensure!(
            Path::new(ETCDCTL).is_file(),
            "{ETCDCTL} is missing: install Debian's etcd-client (.ci/run does)"
        );
        Ok(Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg(format!("--cacert={}", who.ca.display()))
            .arg(format!("--cert={}", who.cert.display()))
            .arg(format!("--key={}", who.key.display()))
            .args(["--dial-timeout=2s", "--command-timeout=3s"])
            .args(args)
            .output()?)
    }

    /// Compacts the history up to the current revision, as etcd's periodic
    /// auto-compaction does on a schedule (a benchmark that moves time
    /// faster than the wall clock does it itself): deleted keys' space is
    /// free for reuse after it.
    pub fn compact_now(&self) -> anyhow::Result<i64> {
        let who = self.client_identity("compactor")?;
        let status = self.etcdctl(&who, &["endpoint", "status", "--write-out=json"])?;
        anyhow::ensure!(
            status.status.success(),
            "etcdctl endpoint status: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        let revision = v
            .as_array()
            .and_then(|members| {
                members
                    .iter()
                    .filter_map(|m| m["Status"]["header"]["revision"].as_i64())
                    .max()
            })
            .ok_or_else(|| anyhow::anyhow!("no revision in {v}"))?;
        let out = self.etcdctl(&who, &["compact", &revision.to_string()])?;
        anyhow::ensure!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("already been compacted"),
            "etcdctl compact: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(revision)
    }

    /// Waits until every member answers healthy (a quorum formed), or `within` passes.
    pub fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let who = self.client_identity("health")?;
        let deadline = std::time::Instant::now() + within;
        loop {
            let out = self.etcdctl(&who, &["endpoint", "health"])?;
            if out.status.success() {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "etcd not healthy within {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
