//! The Knight Capital morning of 1 August 2012, replayed on a loopback fleet.
//!
//! 1. Release 1 runs everywhere: every gate OPEN.
//! 2. New code (release 2) reaches 7 of 8 hosts; the eighth keeps the old
//!    binary, the old config and lacks the new library. Release 2 is
//!    approved: the eighth is CLOSED, naming exactly those files.
//! 3. The 7 are "rolled back" to the old code while release 2 stays the
//!    approved one: all 8 are CLOSED.
//! 4. Release 2 is deployed everywhere (all OPEN, also on the hosts), then
//!    the kill switch: every agent's local gate closes.
//! 5. The audit log tells the story, and its hash chain verifies.
//!
//! Each step returns what the console showed so the demo can print it and
//! the test can assert it.

use lockstep_link::tls::TlsPaths;
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::GateCheckReply;

use crate::fleet::{Fleet, FleetSpec};

pub const BIN: &str = "/opt/smars/bin/smars";
pub const CONF: &str = "/opt/smars/etc/smars.conf";
pub const RLP_LIB: &str = "/opt/smars/lib/librlp.so";
pub const SHARED_LIB: &str = "/opt/smars/lib/libsmars.so";

/// The old SMARS: Power Peg code still in the binary, reachable by the flag.
const OLD_BIN: &[u8] = b"SMARS build 2003.11 - order router\nPowerPeg: test harness, retired 2003 (code left in)\n";
const OLD_CONF: &[u8] = b"[router]\nflag_rlp = 0\nvenue = NYSE\n";
/// The new SMARS: the same flag now means "Retail Liquidity Program".
const NEW_BIN: &[u8] =
    b"SMARS build 2012.08 - order router\nRLP: Retail Liquidity Program (reuses the PowerPeg flag)\n";
const NEW_CONF: &[u8] = b"[router]\nflag_rlp = 1\nvenue = NYSE\n";
const NEW_RLP_LIB: &[u8] = b"librlp 1.0\n";
const SHARED: &[u8] = b"libsmars 4.2\n";

/// One step of the morning: what was run and what the gate check said.
pub struct Step {
    pub title: &'static str,
    /// (command line, output) of each console command run, gate check last.
    pub transcript: Vec<(String, String)>,
    pub gates: GateCheckReply,
    pub gate_check_exit: u8,
}

pub struct Morning {
    pub fleet: Fleet,
    /// Proposes releases.
    pub alice: TlsPaths,
    /// Approves them (two-person rule).
    pub bob: TlsPaths,
}

impl Morning {
    pub async fn start(hosts: usize) -> anyhow::Result<Self> {
        Self::with_spec(FleetSpec::smars(hosts)).await
    }

    pub async fn with_spec(spec: FleetSpec) -> anyhow::Result<Self> {
        let fleet = Fleet::start(spec).await?;
        let alice = fleet.operator("alice", OperatorRole::Operator)?;
        let bob = fleet.operator("bob", OperatorRole::Approver)?;
        Ok(Self { fleet, alice, bob })
    }

    pub fn all(&self) -> Vec<String> {
        self.fleet.hosts.keys().cloned().collect()
    }

    /// Every host but the last: where the technician's copy succeeded.
    pub fn all_but_last(&self) -> Vec<String> {
        let mut h = self.all();
        h.pop();
        h
    }

    pub fn last(&self) -> String {
        self.all().pop().unwrap_or_default()
    }

    pub fn install_old(&self, hosts: &[String]) -> anyhow::Result<()> {
        self.fleet.write(hosts, BIN, OLD_BIN)?;
        self.fleet.write(hosts, CONF, OLD_CONF)?;
        self.fleet.write(hosts, SHARED_LIB, SHARED)?;
        for h in hosts {
            let p = self.fleet.host(h)?.root.join(RLP_LIB.trim_start_matches('/'));
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
        Ok(())
    }

    /// Writes the new build into `root` as a staged tree (a build's DESTDIR).
    pub fn stage_new(root: &std::path::Path) -> anyhow::Result<()> {
        for (path, contents) in [
            (BIN, NEW_BIN),
            (CONF, NEW_CONF),
            (RLP_LIB, NEW_RLP_LIB),
            (SHARED_LIB, SHARED),
        ] {
            let p = root.join(path.trim_start_matches('/'));
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(p, contents)?;
        }
        Ok(())
    }

    pub fn install_new(&self, hosts: &[String]) -> anyhow::Result<()> {
        self.fleet.write(hosts, BIN, NEW_BIN)?;
        self.fleet.write(hosts, CONF, NEW_CONF)?;
        self.fleet.write(hosts, RLP_LIB, NEW_RLP_LIB)?;
        self.fleet.write(hosts, SHARED_LIB, SHARED)
    }

    async fn run(&self, who: &TlsPaths, args: &[&str], transcript: &mut Vec<(String, String)>) -> anyhow::Result<u8> {
        let (code, out) = self.fleet.console(who, args).await?;
        transcript.push((format!("lockstep {}", args.join(" ")), out));
        Ok(code)
    }

    async fn finish(&self, title: &'static str, mut transcript: Vec<(String, String)>) -> anyhow::Result<Step> {
        let code = self
            .run(&self.bob, &["gate", "check", "--role", "smars"], &mut transcript)
            .await?;
        Ok(Step {
            title,
            transcript,
            gates: self.fleet.gates()?,
            gate_check_exit: code,
        })
    }

    /// Propose from `host` as alice, approve as bob.
    async fn release_from(&self, host: &str, note: &str, t: &mut Vec<(String, String)>) -> anyhow::Result<u64> {
        let code = self
            .run(
                &self.alice,
                &[
                    "release",
                    "propose",
                    "--role",
                    "smars",
                    "--from-host",
                    host,
                    "--note",
                    note,
                ],
                t,
            )
            .await?;
        let proposed = t.last().map(|(_, out)| out.as_str()).unwrap_or_default();
        anyhow::ensure!(code == 0, "propose failed: {proposed}");
        // "release N for role smars proposed (...)"
        let number: u64 = proposed
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no release number in {proposed:?}"))?;
        let n = number.to_string();
        let code = self.run(&self.bob, &["release", "approve", &n], t).await?;
        anyhow::ensure!(code == 0, "approve failed: {:?}", t.last());
        Ok(number)
    }

    pub async fn step1_release_everywhere(&self) -> anyhow::Result<Step> {
        let all = self.all();
        self.install_old(&all)?;
        self.fleet.settle(&all).await?;
        let mut t = Vec::new();
        self.release_from(&all[0], "the code every host runs today", &mut t)
            .await?;
        self.finish("Release 1 runs on every host", t).await
    }

    pub async fn step2_new_code_on_all_but_one(&self) -> anyhow::Result<Step> {
        let seven = self.all_but_last();
        self.install_new(&seven)?;
        self.fleet.settle(&self.all()).await?;
        let mut t = Vec::new();
        self.release_from(&seven[0], "RLP launch", &mut t).await?;
        let last = self.last();
        self.run(&self.bob, &["diff", &last, "--release"], &mut t).await?;
        self.finish("New code copied to all but one host; release 2 approved", t)
            .await
    }

    /// The deploy is done right (release 2 on every host, all open), then
    /// the kill switch: returns the step and how long it took until every
    /// agent's local gate (what `lockstep-agent gate check` reads) was closed.
    pub async fn step4_halt(&self) -> anyhow::Result<(Step, std::time::Duration)> {
        let all = self.all();
        self.install_new(&all)?;
        self.fleet.settle(&all).await?;
        self.fleet
            .wait_local(&all, 0, "every local gate to open under release 2")
            .await?;
        let mut t = Vec::new();
        let halt = ["halt", "--role", "smars", "--reason", "drill: stop SMARS"];
        self.run(&self.alice, &halt, &mut t).await?;
        let took = self
            .fleet
            .wait_local(&all, 1, "every agent's local gate to close")
            .await?;
        let step = self
            .finish("Release 2 deployed everywhere, then the kill switch", t)
            .await?;
        Ok((step, took))
    }

    /// The record: the newest audit entries for the role, the chain verified,
    /// and the incidents still open.
    pub async fn step5_audit(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut t = Vec::new();
        // Gate transitions are recorded in the background: let the halt's land.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.run(&self.bob, &["audit", "--role", "smars", "--limit", "12"], &mut t)
            .await?;
        self.run(&self.bob, &["audit", "verify"], &mut t).await?;
        // Every failure of the morning, grouped by root cause, waiting to be acknowledged.
        self.run(&self.bob, &["alerts"], &mut t).await?;
        // The evidence: the signed report of the last check, checked offline
        // against an export as an auditor would.
        let evidence = self.fleet.dir.path().join("evidence");
        std::fs::create_dir_all(&evidence)?;
        let dir = evidence.display().to_string();
        self.run(
            &self.bob,
            &["report", "pre-open", "--role", "smars", "--out-dir", &dir],
            &mut t,
        )
        .await?;
        let export = evidence.join("audit.jsonl");
        std::fs::write(&export, self.fleet.audit_records().await?.join("\n"))?;
        let report = std::fs::read_dir(&evidence)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "html"))
            .ok_or_else(|| anyhow::anyhow!("report pre-open wrote no page in {dir}"))?;
        let (report, export) = (report.display().to_string(), export.display().to_string());
        self.run(&self.bob, &["report", "verify", &report, "--audit", &export], &mut t)
            .await?;
        Ok(t)
    }

    pub async fn step3_roll_back(&self) -> anyhow::Result<Step> {
        let seven = self.all_but_last();
        self.install_old(&seven)?;
        self.fleet.settle(&self.all()).await?;
        self.finish(
            "The hosts are 'rolled back' to the old code; release 2 is still the approved one",
            Vec::new(),
        )
        .await
    }
}
