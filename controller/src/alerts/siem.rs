//! The audit log in the firm's SIEM: every sealed audit record is
//! forwarded, in order, as an RFC 5424 syslog message over TLS (RFC 5425,
//! octet-counted frames) to `[siem] syslog_address`. Delivery is at least
//! once: a durable cursor (`siem.cursor` in the data dir, the last seq
//! written and flushed to the collector) is advanced only after a write, so
//! a restart or an outage resumes where it stopped; a duplicate carries the
//! same seq and record hash. The queue is the audit log itself, read in
//! bounded batches: an unreachable collector costs no memory, only lag
//! (`lockstep_siem_lag_records`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lockstep_daemon::backoff::Backoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::alerts::Alerts;
use crate::alerts::incidents::Signal;
use crate::config::SiemSettings;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use lockstep_evidence::chain::AuditRecord;

/// Records read from the store per batch.
const BATCH: usize = 512;
/// How often the log is looked at for new records.
const POLL: Duration = Duration::from_millis(200);
/// A connect or write that takes longer is a failure (the collector is
/// retried with backoff).
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a record's `detail` one message carries (bytes): with the
/// header and structured data a message stays under 4 KiB, inside every
/// collector's default (rsyslog's `maxMessageSize` is 8 KiB). The whole
/// record is in `lockstep audit export`; the message says how much was cut.
pub const MAX_DETAIL_BYTES: usize = 2048;
/// How long a connection must stay open after a batch for the batch to count.
const LIVENESS: Duration = Duration::from_millis(50);

/// The last seq the collector has been sent, kept in `dir/siem.cursor`.
pub struct Cursor {
    path: PathBuf,
}

impl Cursor {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("siem.cursor"),
        }
    }

    /// 0 when nothing was ever sent.
    pub fn load(&self) -> std::io::Result<u64> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}; delete it to resend the whole audit log", self.path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Written to a temporary file, synced, then renamed over the old one:
    /// a crash leaves the old cursor or the new one, never half of one.
    pub fn store(&self, seq: u64) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("cursor.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(seq.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// One record as an RFC 5424 message (`<PRI>1 TIMESTAMP HOST APP PROCID
/// MSGID [SD] MSG`), facility 13 (log audit), severity notice, under the
/// structured-data id `sd_id`.
pub fn rfc5424(record: &AuditRecord, hostname: &str, sd_id: &str) -> String {
    let ms = u64::try_from(record.at_unix_ms.min(lockstep_evidence::time::LAST_RFC3339_MS)).unwrap_or(0);
    let at = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms));
    let msgid: String = record
        .action
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    format!(
        "<{pri}>1 {at} {host} lockstep-controller {pid} {msgid} [{sd_id} seq=\"{seq}\" action=\"{action}\" host=\"{rhost}\" role=\"{role}\" actor=\"{actor}\" hash=\"{hash}\" prev=\"{prev}\"] {detail}",
        pri = 13 * 8 + 5,
        host = if hostname.is_empty() { "-" } else { hostname },
        pid = std::process::id(),
        msgid = if msgid.is_empty() { "-".to_string() } else { msgid },
        seq = record.seq,
        action = sd_escape(&record.action),
        rhost = sd_escape(&record.host),
        role = sd_escape(&record.role),
        actor = sd_escape(&record.actor),
        hash = record.hash,
        prev = record.prev_hash,
        detail = message_text(&record.detail),
    )
}

/// The detail as the message's text: control characters escaped one way
/// (`\n`, `\r`, `\t`, any other as `\u00XX`; a backslash as `\\`), so a
/// message is one line and nothing a collector does with a control
/// character changes it; then cut at [`MAX_DETAIL_BYTES`] (on a character
/// boundary), saying how many bytes are left out.
fn message_text(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len());
    for c in detail.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    if out.len() <= MAX_DETAIL_BYTES {
        return out;
    }
    let mut cut = MAX_DETAIL_BYTES;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    let left = out.len() - cut;
    out.truncate(cut);
    out.push_str(&format!(
        " … [{left} more bytes: the whole record is in `lockstep audit export`]"
    ));
    out
}

/// RFC 5424 §6.3.3: `"`, `\` and `]` are escaped in a parameter value.
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn frame(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Forwards the audit log to the collector until `stop`.
pub struct Forwarder {
    settings: SiemSettings,
    /// Told when the collector is lost and found (an incident).
    alerts: Arc<Alerts>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    cursor: Cursor,
    /// Where the lag is seen (`[metrics] listen`), said in the incident.
    metrics_hint: String,
    /// Archived records are read from here (a collector away for longer
    /// than `keep_online` still gets every record).
    archive_dir: PathBuf,
}

impl Forwarder {
    pub fn new(
        config: &crate::config::ControllerConfig,
        alerts: Arc<Alerts>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        let settings = config.siem.clone()?;
        Some(Self {
            settings,
            alerts,
            ledger,
            metrics,
            cursor: Cursor::in_dir(&config.data_dir),
            metrics_hint: config
                .metrics_listen
                .map(|at| format!("; lockstep_siem_lag_records on http://{at}/metrics counts them"))
                .unwrap_or_default(),
            archive_dir: config.audit.archive_dir.clone(),
        })
    }

    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let host = hostname();
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut down = false;
        loop {
            let outcome = tokio::select! {
                r = self.connect_and_send(&host, &mut down, &mut backoff) => r,
                () = &mut stop => return,
            };
            // Only an error gets here: the sending loop runs until one.
            if let Err(e) = outcome {
                self.metrics.siem_connected.set(0);
                // What waits grows while the collector is away.
                if let Ok(sent) = self.cursor.load() {
                    let head = *self.ledger.sealed().borrow();
                    self.metrics
                        .siem_lag
                        .set(i64::try_from(head.saturating_sub(sent)).unwrap_or(i64::MAX));
                }
                if !down {
                    warn!(address = %self.settings.address, error = %e, "cannot forward the audit log to the SIEM collector; retrying with backoff");
                    self.alerts.signal(Signal::SiemUnreachable {
                        address: self.settings.address.clone(),
                        detail: format!(
                            "{e}; records wait in the audit log and are sent when it answers{}",
                            self.metrics_hint
                        ),
                    });
                }
                down = true;
            }
            let pause = backoff.next_delay();
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = &mut stop => return,
            }
        }
    }

    async fn connect(&self) -> Result<TlsStream, String> {
        // Server-authenticated TLS, 1.3 or (unless `siem.tls_min = "1.3"`)
        // 1.2 with rustls's suites (ECDHE, AEAD only), which is what stock
        // collectors offer; no ALPN and no client certificate (the fleet's
        // certificates are for lockstep's own services).
        let roots = lockstep_link::tls::load_roots(&self.settings.ca).map_err(|e| format!("siem.syslog_ca: {e}"))?;
        let versions: &[&rustls::SupportedProtocolVersion] = if self.settings.allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let config = rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let config = Arc::new(config);
        let name = rustls_pki_types::ServerName::try_from(self.settings.server_name.clone())
            .map_err(|e| format!("siem.syslog_server_name {:?}: {e}", self.settings.server_name))?;
        let tcp = tokio::time::timeout(IO_TIMEOUT, tokio::net::TcpStream::connect(&self.settings.address))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(IO_TIMEOUT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake: {e}"))
    }

    /// Up only once the connection outlived a write or a quiet wait, not
    /// at the handshake (a collector may refuse us just after it).
    fn announce(&self, announced: &mut bool, down: &mut bool, backoff: &mut Backoff) {
        if std::mem::replace(announced, true) {
            return;
        }
        self.metrics.siem_connected.set(1);
        backoff.reset();
        info!(address = %self.settings.address, "forwarding the audit log to the SIEM collector");
        if std::mem::take(down) {
            self.alerts.signal(Signal::SiemReachable);
        }
    }

    /// Sends everything after the cursor, then follows the log; returns
    /// only on an error.
    async fn connect_and_send(&self, host: &str, down: &mut bool, backoff: &mut Backoff) -> Result<(), String> {
        let mut conn = self.connect().await?;
        let mut sent = self.cursor.load().map_err(|e| e.to_string())?;
        let mut announced = false;
        loop {
            let (ledger, archive) = (self.ledger.clone(), self.archive_dir.clone());
            let from = sent + 1;
            let records = tokio::task::spawn_blocking(move || {
                use crate::store::audit_reads::AuditSource;
                crate::archive::log::Log::open(ledger.store(), &archive)?.page(from, crate::store::audit_reads::PAGE)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            // Everything sealed and not yet sent, not just this page.
            let head = (*self.ledger.sealed().borrow()).max(records.last().map_or(sent, |r| r.seq));
            self.metrics
                .siem_lag
                .set(i64::try_from(head.saturating_sub(sent)).unwrap_or(i64::MAX));
            if records.is_empty() {
                // Nothing new: wait by reading, which also sees a collector
                // that closed the connection while the log was quiet.
                let mut probe = [0u8; 256];
                match tokio::time::timeout(POLL, conn.read(&mut probe)).await {
                    Err(_) | Ok(Ok(1..)) => self.announce(&mut announced, down, backoff),
                    Ok(Ok(0)) => return Err("the collector closed the connection".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                }
                continue;
            }
            for chunk in records.chunks(BATCH) {
                let mut bytes = Vec::new();
                for r in chunk {
                    bytes.extend(frame(&rfc5424(r, host, &self.settings.sd_id)));
                }
                let write = async {
                    conn.write_all(&bytes).await?;
                    conn.flush().await
                };
                tokio::time::timeout(IO_TIMEOUT, write)
                    .await
                    .map_err(|_| "write timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                // A write only says the bytes left: a collector that closed
                // the connection (it refused us, or went away) is seen by
                // reading. The cursor moves only past a batch the
                // connection outlived; otherwise it is sent again.
                let mut probe = [0u8; 256];
                match tokio::time::timeout(LIVENESS, conn.read(&mut probe)).await {
                    Err(_) | Ok(Ok(1..)) => {} // quiet (or chatty): still there
                    Ok(Ok(0)) => return Err("the collector closed the connection".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                }
                sent = chunk.last().map_or(sent, |r| r.seq);
                self.announce(&mut announced, down, backoff);
                let cursor = Cursor {
                    path: self.cursor.path.clone(),
                };
                tokio::task::spawn_blocking(move || cursor.store(sent))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("cannot keep the SIEM cursor: {e}"))?;
                self.metrics.siem_forwarded.set(i64::try_from(sent).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_rfc5424_message_with_escaped_structured_data() {
        let r = AuditRecord {
            seq: 7,
            at_unix_ms: 1_764_669_600_123,
            actor: "alice (operator)".into(),
            action: lockstep_evidence::action::AuditAction::Halt.as_str().into(),
            host: String::new(),
            role: "smars".into(),
            detail: "halt 1 on role smars: \"drill\" ] \\ now".into(),
            facts: String::new(),
            prev_hash: "ab".into(),
            hash: "cd".into(),
        };
        let m = rfc5424(&r, "ctl-1", "lockstep@32473");
        assert!(
            m.starts_with("<109>1 2025-12-02T10:00:00.123Z ctl-1 lockstep-controller "),
            "{m}"
        );
        assert!(m.contains(" halt [lockstep@32473 seq=\"7\" action=\"halt\" host=\"\" role=\"smars\" actor=\"alice (operator)\" hash=\"cd\" prev=\"ab\"] "), "{m}");
        // The text's backslash is doubled: control characters are escaped with one.
        assert!(m.ends_with("halt 1 on role smars: \"drill\" ] \\\\ now"), "{m}");
        assert_eq!(sd_escape("a\"b]c\\"), "a\\\"b\\]c\\\\");
        let f = frame(&m);
        assert!(f.starts_with(format!("{} <109>", m.len()).as_bytes()));
    }

    #[test]
    fn control_characters_are_escaped_one_way_and_a_long_detail_is_cut_saying_so() {
        assert_eq!(
            message_text("a\nb\tc\rd\\e\u{7}f\u{7f}"),
            "a\\nb\\tc\\rd\\\\e\\u0007f\\u007f"
        );
        let long = "é".repeat(3_000);
        let text = message_text(&long);
        assert!(text.len() < MAX_DETAIL_BYTES + 100, "{}", text.len());
        assert!(
            text.ends_with("more bytes: the whole record is in `lockstep audit export`]"),
            "{text}"
        );
        assert!(text.contains(" … [3952 more bytes"), "{}", &text[text.len() - 80..]);
        assert_eq!(message_text("short"), "short");
    }

    #[test]
    fn the_cursor_survives_and_starts_at_zero() {
        let d = tempfile::tempdir().unwrap();
        let c = Cursor::in_dir(d.path());
        assert_eq!(c.load().unwrap(), 0);
        c.store(42).unwrap();
        assert_eq!(Cursor::in_dir(d.path()).load().unwrap(), 42);
        std::fs::write(d.path().join("siem.cursor"), "x").unwrap();
        assert!(c.load().unwrap_err().to_string().contains("delete it to resend"));
    }
}
