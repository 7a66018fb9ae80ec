//! `lockstep`, the operator console. Every command but `pki` and `report
//! verify` talks to the
//! controller over mTLS with the operator's certificate; the controller
//! authorises it by the role in that certificate. Tables for people,
//! `--output json` for scripts.

mod render;
mod report;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lockstep_link::failover::FailoverChannel;
use lockstep_link::tls::{self, TlsPaths};
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::console_service_client::ConsoleServiceClient;
use lockstep_proto::pb::{self, diff_request::Against, propose_release_request::Source};

pub use lockstep_evidence::gate_check::{ExitCode, exit_code, summary};
pub use report::ReportCommand;

use lockstep_pki::{self as pki, Subject};

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    version,
    about = "lockstep operator console: fleet attestation gate"
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Controller address, host:port; or several, comma-separated (every
    /// controller of an etcd deployment: the one that leads answers).
    #[arg(long, global = true, env = "LOCKSTEP_CONTROLLER", default_value = "127.0.0.1:7443")]
    pub controller: String,
    /// Name to check the controller's certificate against (default: the address's host).
    #[arg(long, global = true, env = "LOCKSTEP_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Fleet CA certificate.
    #[arg(long, global = true, env = "LOCKSTEP_CA", default_value = "/etc/lockstep/ca.pem")]
    pub ca: PathBuf,
    /// Your operator certificate.
    #[arg(long, global = true, env = "LOCKSTEP_CERT", default_value = "operator.pem")]
    pub cert: PathBuf,
    /// Your operator key.
    #[arg(long, global = true, env = "LOCKSTEP_KEY", default_value = "operator.key")]
    pub key: PathBuf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fleet CA and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Every inventory host with its gate.
    Hosts {
        #[arg(long)]
        role: Option<String>,
    },
    /// One host in detail; `host revoke` / `host remove` take one out of the fleet.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Host {
        #[command(subcommand)]
        action: Option<HostCommand>,
        #[arg(required = true)]
        host: Option<String>,
        /// Also list every entry of its version set.
        #[arg(long)]
        entries: bool,
    },
    /// One-time join tokens for enrolling hosts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Differences between a host and another host, or a release.
    Diff {
        host: String,
        /// The other host.
        other: Option<String>,
        /// Compare with a release instead (default: the role's active release).
        #[arg(long, num_args = 0..=1, default_missing_value = "0", conflicts_with = "other")]
        release: Option<u64>,
    },
    /// Gate checks.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Releases: propose, approve (by someone else), list.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// The kill switch: close every gate in scope at once, pushed to agents.
    Halt {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Why: shown to everyone whose gate it closes.
        #[arg(long)]
        reason: String,
        /// A test of the kill switch: it halts for real, and reports list it as a drill.
        #[arg(long)]
        drill: bool,
    },
    /// Lift the active halts of exactly this scope.
    Resume {
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Active halts (--all: lifted ones too).
    Halts {
        #[arg(long)]
        all: bool,
    },
    /// Ask a host's agent for a full scan now (in market hours too, within its budget).
    Scan {
        #[arg(long)]
        host: String,
        /// Why: kept in the audit log and the agent's log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Open incidents (failures grouped by root cause); `alerts ack ID` marks one read.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsCommand>,
    },
    /// The web board: a one-time login link, and its sessions.
    #[command(subcommand)]
    Board(BoardCommand),
    /// The control plane: controllers, the leader and its epoch, etcd members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Evidence: the signed pre-open report, and checking one offline.
    #[command(subcommand)]
    Report(ReportCommand),
    /// The hash-chained audit log: read it, verify it, export it.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        action: Option<AuditCommand>,
        #[command(flatten)]
        filter: AuditFilter,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// Distrust a host now: its calls are refused and its gate CLOSED until it enrolls with a new token.
    Revoke {
        host: String,
        /// Why: shown on its closed gate and kept in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Decommission a host: revoked, its key unpinned, kept in history.
    Remove {
        host: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a one-time join token bound to a host and its role (printed once; stored hashed).
    Create {
        #[arg(long)]
        host: String,
        #[arg(long)]
        role: String,
        /// How long it stays usable (default: the controller's enrollment.token_ttl, 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// The host may enroll with another TPM than the one bound to it, or
        /// without one (its TPM or board was replaced). Recorded.
        #[arg(long)]
        allow_new_tpm: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Acknowledge an incident: it leaves the list once it is also resolved.
    Ack { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every controller (leader or standby, when last seen), the leader's
    /// epoch, and each etcd member's health.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum BoardCommand {
    /// Print a one-time link that opens the board as you (your certificate's name and role).
    Login,
    /// Every open board session.
    Sessions,
    /// End a board session now: its page stops updating.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the whole chain; exit 1 naming the first broken record.
    /// With --archive, first the archived segments in DIR (offline: each
    /// segment's chain and signed checkpoint, and their links), then that
    /// the controller's log follows the archive's last record.
    Verify {
        /// The archive directory (the controller's `[audit] archive_dir`, or a copy).
        #[arg(long)]
        archive: Option<PathBuf>,
        /// The report key checkpoints must be signed with (hex, `lockstep pki report-key`).
        #[arg(long)]
        public_key: Option<String>,
        /// Check the archive alone, without asking the controller.
        #[arg(long, requires = "archive")]
        offline: bool,
    },
    /// Every record as JSON lines (for archiving or a SIEM).
    Export,
}

#[derive(Args, Debug, Default)]
pub struct AuditFilter {
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub role: Option<String>,
    /// Since a time (RFC 3339) or a while ago ("15m").
    #[arg(long)]
    pub since: Option<String>,
    /// Only the newest N records.
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
    /// Keep printing new records as they are written.
    #[arg(long)]
    pub follow: bool,
}

fn since_unix_ms(text: Option<&str>) -> anyhow::Result<i64> {
    let Some(t) = text else { return Ok(0) };
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        let ms = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        return Ok(i64::try_from(ms).unwrap_or(i64::MAX));
    }
    let ago = humantime::parse_duration(t)
        .map_err(|_| anyhow::anyhow!("--since {t:?}: give a time like 2026-11-22T09:00:00Z or a while ago like 15m"))?;
    Ok(lockstep_proto::now_unix_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
}

/// Exactly one of --fleet, --role, --host.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    #[arg(long)]
    pub fleet: bool,
    #[arg(long)]
    pub role: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
}

impl ScopeArgs {
    fn to_pb(&self) -> pb::HaltScope {
        use pb::halt_scope::Scope;
        let scope = match (&self.role, &self.host) {
            (Some(r), _) => Scope::Role(r.clone()),
            (None, Some(h)) => Scope::Host(h.clone()),
            (None, None) => Scope::Fleet(self.fleet),
        };
        pb::HaltScope { scope: Some(scope) }
    }
}

#[derive(Subcommand, Debug)]
pub enum GateCommand {
    /// Exit 0 only if every inventory host of the role is OPEN.
    Check {
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Propose a release from a host's current set, a manifest file, or an earlier release.
    #[command(group(clap::ArgGroup::new("source").required(true).multiple(false)))]
    Propose {
        #[arg(long)]
        role: String,
        /// The set a host reports now.
        #[arg(long, group = "source")]
        from_host: Option<String>,
        /// A manifest written by `lockstep-agent measure`.
        #[arg(long, group = "source")]
        manifest: Option<PathBuf>,
        /// The set of an earlier release (a rollback: new number, old content).
        #[arg(long, group = "source")]
        from_release: Option<u64>,
        /// The boot state (PCRs 0-9 of its last verified TPM quote) of this
        /// reference host becomes the release's (default: the boot state of
        /// the release rolled back to, or of the role's active release).
        #[arg(long, value_name = "HOST")]
        boot_from: Option<String>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Approve a proposed release (not your own).
    Approve { number: u64 },
    /// List releases.
    List {
        #[arg(long)]
        role: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create the fleet CA (ca.pem, ca.key) in --dir.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// Print the controller's report signing key (run on the controller): what auditors check reports against.
    ReportKey {
        /// The controller's data_dir.
        #[arg(long, default_value = "/var/lib/lockstep-controller")]
        data_dir: PathBuf,
    },
    /// Issue a certificate signed by the fleet CA in --dir: writes OUT.pem and OUT.key.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        validity: Duration,
        #[command(subcommand)]
        kind: IssueKind,
    },
    /// etcd's own CA and certificates (HA on etcd): never the fleet CA, so
    /// that only controllers can read or write the control plane.
    #[command(subcommand)]
    Etcd(EtcdPkiCommand),
}

#[derive(Subcommand, Debug)]
pub enum EtcdPkiCommand {
    /// Create etcd's CA (etcd-ca.pem, etcd-ca.key) in --dir, apart from the fleet CA.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "10y", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// A member's certificate (client and peer ports: server and client use): writes OUT.pem and OUT.key.
    Member {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The member's name (etcd --name).
        #[arg(long)]
        name: String,
        /// Each IP address or DNS name clients and peers reach the member at.
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
    /// One controller's client certificate to etcd (`store.etcd.cert`): writes OUT.pem and OUT.key.
    Client {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The controller's name (`store.etcd.name`); etcd's user name when its auth is on.
        #[arg(long)]
        controller: String,
        #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
        validity: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum IssueKind {
    /// The controller's server certificate.
    Controller {
        /// DNS names and IP addresses agents and operators connect to.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// An operator's client certificate.
    Operator {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: OperatorRole,
    },
}

fn parse_role(s: &str) -> Result<OperatorRole, String> {
    OperatorRole::parse(s).ok_or_else(|| format!("{s:?}: use viewer, operator or approver"))
}

/// Runs one console command, writing its output to `out`; returns the exit code.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<u8> {
    let json = cli.output == Output::Json;
    if let Command::Pki(cmd) = &cli.command {
        run_pki(cmd, out, json)?;
        return Ok(0);
    }
    if let Command::Report(ReportCommand::Verify {
        file,
        audit,
        public_key,
    }) = &cli.command
    {
        return report::verify(file, audit.as_deref(), public_key.as_deref(), out, json);
    }
    // The archive is checked before (and without) any controller.
    let mut archive_head = None;
    if let Command::Audit {
        action:
            Some(AuditCommand::Verify {
                archive: Some(dir),
                public_key,
                offline,
            }),
        ..
    } = &cli.command
    {
        match lockstep_evidence::archive::verify_dir(dir, public_key.as_deref(), true) {
            Ok(verdict) if verdict.segments == 0 => {
                anyhow::bail!(
                    "{} holds no archived audit segments (files audit-*.jsonl.gz); give the controller's [audit] archive_dir",
                    dir.display()
                )
            }
            Ok(verdict) => {
                render::archive_verified(out, dir, &verdict, json)?;
                archive_head = verdict.head;
            }
            Err(e) => {
                writeln!(out, "ARCHIVE BROKEN: {e}")?;
                return Ok(1);
            }
        }
        if *offline {
            return Ok(0);
        }
    }
    let mut client = connect(&cli.conn).await?;
    let unreachable = |e: tonic::Status| -> anyhow::Error {
        if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
            anyhow::Error::new(Unreachable(e.message().to_string()))
        } else {
            anyhow::anyhow!("{}", e.message())
        }
    };
    match cli.command {
        Command::Pki(_) => unreachable!("handled above"),
        Command::Board(BoardCommand::Login) => {
            let reply = client
                .board_login(pb::BoardLoginRequest {})
                .await
                .map_err(unreachable)?
                .answered();
            render::board_link(out, &reply, json)?;
        }
        Command::Cluster(ClusterCommand::Status) => {
            let reply = client
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .map_err(unreachable)?
                .answered();
            render::cluster_status(out, &reply, json)?;
        }
        Command::Board(BoardCommand::Sessions) => {
            let list = client
                .list_board_sessions(pb::ListBoardSessionsRequest {})
                .await
                .map_err(unreachable)?
                .answered();
            render::board_sessions(out, &list.sessions, json)?;
        }
        Command::Board(BoardCommand::Revoke { id }) => {
            let ended = client
                .revoke_board_session(pb::RevokeBoardSessionRequest { id })
                .await
                .map_err(unreachable)?
                .answered();
            render::board_sessions(out, &[ended], json)?;
        }
        Command::Report(cmd) => report::pre_open(&mut client, cmd, out, json).await.map_err(|e| match e
            .downcast::<tonic::Status>()
        {
            Ok(s) => unreachable(s),
            Err(e) => e,
        })?,
        Command::Hosts { role } => {
            let req = pb::ListHostsRequest {
                role: role.unwrap_or_default(),
            };
            let hosts = client.list_hosts(req).await.map_err(unreachable)?.answered().hosts;
            render::hosts(out, &hosts, json)?;
        }
        Command::Host {
            action: Some(action), ..
        } => {
            let (host, reason, remove) = match action {
                HostCommand::Revoke { host, reason } => (host, reason, false),
                HostCommand::Remove { host, reason } => (host, reason, true),
            };
            let reply = client
                .revoke_host(pb::RevokeHostRequest { host, reason, remove })
                .await
                .map_err(unreachable)?
                .answered();
            render::revoked(out, &reply, remove, json)?;
        }
        Command::Scan { host, reason } => {
            let reply = client
                .request_scan(pb::RequestScanRequest { host, reason })
                .await
                .map_err(unreachable)?
                .answered();
            render::scan_requested(out, &reply, json)?;
        }
        Command::Token(TokenCommand::Create {
            host,
            role,
            ttl,
            allow_new_tpm,
        }) => {
            let req = pb::CreateTokenRequest {
                host,
                role,
                ttl_ms: ttl.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                allow_new_tpm,
            };
            let reply = client.create_token(req).await.map_err(unreachable)?.answered();
            render::token(out, &reply, json)?;
        }
        Command::Host {
            action: None,
            host,
            entries,
        } => {
            let req = pb::GetHostRequest {
                host: host.unwrap_or_default(),
                include_entries: entries,
            };
            let detail = client.get_host(req).await.map_err(unreachable)?.answered();
            render::host(out, &detail, json)?;
        }
        Command::Diff { host, other, release } => {
            let against = match (other, release) {
                (Some(o), _) => Against::OtherHost(o),
                (None, Some(n)) => Against::Release(n),
                (None, None) => Against::Release(0),
            };
            let req = pb::DiffRequest {
                host,
                against: Some(against),
            };
            let reply = client.diff(req).await.map_err(unreachable)?.answered();
            render::diff(out, &reply, json)?;
            return Ok(u8::from(!reply.changes.is_empty()));
        }
        Command::Gate(GateCommand::Check { role }) => {
            let reply = client
                .gate_check(pb::GateCheckRequest { role })
                .await
                .map_err(unreachable)?
                .answered();
            render::gate_check(out, &reply, json)?;
            return Ok(exit_code(&reply.gates) as u8);
        }
        Command::Halt { scope, reason, drill } => {
            let req = pb::HaltRequest {
                scope: Some(scope.to_pb()),
                reason,
                drill,
            };
            let reply = client.halt(req).await.map_err(unreachable)?.answered();
            render::halted(out, &reply, json)?;
        }
        Command::Resume { scope, reason } => {
            let req = pb::ResumeRequest {
                scope: Some(scope.to_pb()),
                reason,
            };
            let reply = client.resume(req).await.map_err(unreachable)?.answered();
            render::resumed(out, &reply, json)?;
        }
        Command::Halts { all } => {
            let req = pb::ListHaltsRequest { all };
            let list = client.list_halts(req).await.map_err(unreachable)?.answered();
            render::halts(out, &list.halts, json)?;
        }
        Command::Alerts { action: None } => {
            let list = client
                .list_incidents(pb::ListIncidentsRequest {})
                .await
                .map_err(unreachable)?
                .answered();
            render::incidents(out, &list.incidents, json)?;
        }
        Command::Alerts {
            action: Some(AlertsCommand::Ack { id }),
        } => {
            let acked = client
                .ack_incident(pb::AckIncidentRequest { id })
                .await
                .map_err(unreachable)?
                .answered();
            render::incident_acked(out, &acked, json)?;
        }
        Command::Audit {
            action: Some(AuditCommand::Verify { .. }),
            ..
        } => {
            let reply = client
                .verify_audit(pb::VerifyAuditRequest {})
                .await
                .map_err(unreachable)?
                .answered();
            render::audit_verified(out, &reply, json)?;
            if let Some(head) = archive_head {
                // The record after the archive's last, wherever the
                // controller keeps it now, must follow it.
                let req = pb::ListAuditRequest {
                    after_seq: head.next_seq - 1,
                    limit: 0,
                    ..Default::default()
                };
                let list = client.list_audit(req).await.map_err(unreachable)?.answered();
                match list.records.first() {
                    Some(next) if next.seq == head.next_seq && next.prev_hash == head.last_hash => {
                        writeln!(
                            out,
                            "record {} in the controller's log follows the archive's last",
                            next.seq
                        )?;
                    }
                    Some(next) => {
                        writeln!(
                            out,
                            "ARCHIVE AND LOG DISAGREE: the controller's record {} does not follow the archive's last record ({}): the archive or the log was changed",
                            next.seq,
                            head.next_seq - 1
                        )?;
                        return Ok(1);
                    }
                    None => writeln!(out, "the controller's log has no record after the archive's last yet")?,
                }
            }
            return Ok(if reply.ok { 0 } else { 1 });
        }
        Command::Audit {
            action: Some(AuditCommand::Export),
            ..
        } => {
            // Page by page, oldest first: no answer holds the whole log.
            let mut req = pb::ListAuditRequest::default();
            loop {
                let list = client.list_audit(req.clone()).await.map_err(unreachable)?.answered();
                render::audit_export(out, &list.records)?;
                if !list.more {
                    break;
                }
                req.after_seq = next_after(&req, &list);
            }
        }
        Command::Audit { action: None, filter } => {
            let mut req = pb::ListAuditRequest {
                host: filter.host.unwrap_or_default(),
                role: filter.role.unwrap_or_default(),
                since_unix_ms: since_unix_ms(filter.since.as_deref())?,
                after_seq: 0,
                limit: filter.limit,
            };
            loop {
                let list = client.list_audit(req.clone()).await.map_err(unreachable)?.answered();
                render::audit(out, &list.records, json)?;
                out.flush()?;
                let paging = list.more && req.limit == 0;
                if !paging && !filter.follow {
                    break;
                }
                req.after_seq = next_after(&req, &list);
                req.limit = 0;
                if !list.more {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Command::Release(cmd) => {
            run_release(&mut client, cmd, out, json)
                .await
                .map_err(|e| match e.downcast::<tonic::Status>() {
                    Ok(s) => unreachable(s),
                    Err(e) => e,
                })?
        }
    }
    Ok(0)
}

async fn run_release(
    client: &mut ConsoleServiceClient<FailoverChannel>,
    cmd: ReleaseCommand,
    out: &mut (dyn Write + Send),
    json: bool,
) -> anyhow::Result<()> {
    match cmd {
        ReleaseCommand::Propose {
            role,
            from_host,
            manifest,
            from_release,
            boot_from,
            note,
        } => {
            let source = match (from_host, manifest, from_release) {
                (Some(h), _, _) => Source::FromHost(h),
                (None, Some(path), _) => Source::Manifest(pb::Manifest {
                    entries: read_manifest(&path)?,
                }),
                (None, None, Some(n)) => Source::FromRelease(n),
                (None, None, None) => anyhow::bail!("give --from-host HOST, --manifest FILE or --from-release N"),
            };
            let req = pb::ProposeReleaseRequest {
                role,
                source: Some(source),
                note,
                boot_from_host: boot_from.unwrap_or_default(),
            };
            let r = client.propose_release(req).await?.answered();
            render::release_done(out, &r, "proposed", json)?;
        }
        ReleaseCommand::Approve { number } => {
            let r = client
                .approve_release(pb::ApproveReleaseRequest { number })
                .await?
                .answered();
            render::release_done(out, &r, "approved", json)?;
        }
        ReleaseCommand::List { role } => {
            let req = pb::ListReleasesRequest {
                role: role.unwrap_or_default(),
            };
            let list = client.list_releases(req).await?.answered().releases;
            render::releases(out, &list, json)?;
        }
    }
    Ok(())
}

fn read_manifest(path: &Path) -> anyhow::Result<Vec<pb::Entry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    lockstep_proto::manifest::from_json(&text).with_context(|| format!("manifest {}", path.display()))
}

/// The controller could not be reached: `gate check` exits with its own code.
#[derive(Debug, thiserror::Error)]
#[error("controller unreachable: {0}")]
pub struct Unreachable(pub String);

/// A reply's message. A standby that answered a read from its own view of
/// the ledger says so in a header; stderr passes that on once (stdout stays
/// the answer, for scripts).
trait Answered<T> {
    fn answered(self) -> T;
}

impl<T> Answered<T> for tonic::Response<T> {
    fn answered(self) -> T {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let by = self
            .metadata()
            .get(lockstep_link::failover::SERVED_BY_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Some(by) = by {
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                eprintln!("note: answered by {by}; writes and `gate check` go to the leader");
            }
        }
        self.into_inner()
    }
}

/// A client on the leader when several controllers are named: a standby
/// answers the first call with the leader's address, which the channel
/// follows, so that call is a cheap health check rather than the command.
/// Addresses are tried side by side (a frozen or cut-off one costs
/// [`lockstep_link::failover::STAGGER`], not a timeout).
async fn connect(conn: &Connection) -> anyhow::Result<ConsoleServiceClient<FailoverChannel>> {
    let paths = TlsPaths {
        ca: conn.ca.clone(),
        cert: conn.cert.clone(),
        key: conn.key.clone(),
    };
    let config = tls::client_config(&paths)?;
    let targets = conn
        .controller
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|address| {
            Ok(tls::Target {
                address: address.to_string(),
                server_name: match &conn.server_name {
                    Some(n) => n.clone(),
                    None => tls::default_server_name(address)?,
                },
            })
        })
        .collect::<Result<Vec<_>, tls::TlsError>>()?;
    let several = targets.len() > 1;
    // A call a controller refused without doing it (a standby, one that
    // stood down) goes to the next address at once.
    let channel = lockstep_link::failover::failover_channel(targets, config, Duration::from_secs(5))?.retrying();
    if several {
        channel.find_leader().await;
    }
    Ok(ConsoleServiceClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024))
}

fn run_pki(cmd: &PkiCommand, out: &mut (dyn Write + Send), json: bool) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init { dir, validity } => {
            pki::init(dir, *validity)?;
            writeln!(
                out,
                "fleet CA created: {} (key {}, mode 0600)",
                dir.join(pki::CA_CERT).display(),
                dir.join(pki::CA_KEY).display()
            )?;
        }
        PkiCommand::ReportKey { data_dir } => {
            let path = data_dir.join(lockstep_evidence::report::key::REPORT_KEY);
            let key = lockstep_evidence::report::key::ReportKey::load(&path).map_err(|e| {
                anyhow::anyhow!("{e} (the controller makes it at its first start; --data-dir is its data_dir)")
            })?;
            if json {
                let v =
                    serde_json::json!({"key_id": key.key_id(), "public_key": key.public_hex(), "algorithm": "Ed25519"});
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "report signing key {}: {}", key.key_id(), key.public_hex())?;
            }
        }
        PkiCommand::Issue {
            dir,
            out: dest,
            validity,
            kind,
        } => {
            let subject = match kind {
                IssueKind::Controller { names } => Subject::Controller { names: names.clone() },
                IssueKind::Operator { name, role } => Subject::Operator {
                    name: name.clone(),
                    role: *role,
                },
            };
            let (cert, key) = pki::issue(dir, &subject, dest, *validity)?;
            writeln!(
                out,
                "issued {}: {} (key {}, mode 0600)",
                subject_label(&subject),
                cert.display(),
                key.display()
            )?;
        }
        PkiCommand::Etcd(EtcdPkiCommand::Init { dir, validity }) => {
            pki::etcd_init(dir, *validity)?;
            writeln!(
                out,
                "etcd CA created: {} (key {}, mode 0600); give etcd-ca.pem to etcd (--trusted-ca-file, --peer-trusted-ca-file) and to each controller (store.etcd.ca), and keep the key off every host",
                dir.join(pki::ETCD_CA_CERT).display(),
                dir.join(pki::ETCD_CA_KEY).display()
            )?;
        }
        PkiCommand::Etcd(EtcdPkiCommand::Member {
            dir,
            out: dest,
            name,
            addresses,
            validity,
        }) => {
            let subject = pki::EtcdSubject::Member {
                name: name.clone(),
                addresses: addresses.clone(),
            };
            let (cert, key) = pki::etcd_issue(dir, &subject, dest, *validity)?;
            writeln!(
                out,
                "issued etcd member certificate for {name} ({}): {} (key {}, mode 0600)",
                addresses.join(", "),
                cert.display(),
                key.display()
            )?;
        }
        PkiCommand::Etcd(EtcdPkiCommand::Client {
            dir,
            out: dest,
            controller,
            validity,
        }) => {
            let subject = pki::EtcdSubject::Client {
                controller: controller.clone(),
            };
            let (cert, key) = pki::etcd_issue(dir, &subject, dest, *validity)?;
            writeln!(
                out,
                "issued etcd client certificate for controller {controller}: {} (key {}, mode 0600)",
                cert.display(),
                key.display()
            )?;
        }
    }
    Ok(())
}

fn subject_label(s: &Subject) -> String {
    match s {
        Subject::Controller { names } => format!("controller certificate for {}", names.join(", ")),
        Subject::Operator { name, role } => {
            format!("operator certificate for {name} ({})", role.as_str())
        }
        Subject::Agent { host } => format!("agent certificate for {host}"),
    }
}

/// Where the next page of the audit log starts: after what this answer
/// looked at (a controller before paging answers without saying so).
fn next_after(req: &pb::ListAuditRequest, list: &pb::AuditList) -> u64 {
    let last = list.records.last().map_or(0, |r| r.seq);
    req.after_seq.max(list.next_after_seq).max(last)
}
