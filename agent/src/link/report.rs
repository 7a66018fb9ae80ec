//! The report loop: measure, sign, send; a full entry list when the version
//! set changed since the controller last took one, otherwise a signed
//! digest-only heartbeat that keeps the host fresh; backoff while the
//! controller cannot be reached. The loop's state is explicit ([`Due`],
//! [`Link`]), and so is the key's ([`Key`]), set from the refusal's stable
//! reason, never from its text.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lockstep_daemon::clock::SharedClock;
use lockstep_link::failover::FailoverChannel;
use lockstep_proto::envelope::Signer;
use lockstep_proto::pb::agent_service_client::AgentServiceClient;
use lockstep_proto::pb::{Attestation, GateState, PinKeyRequest, SubmitReply};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::error::AgentError;
use crate::link::attest_stream::AttestStream;
use crate::link::directives::Reconnects;
use crate::link::pace::{Failure, Pace};
use crate::measurer::{FullScanRequests, Measurer};
use crate::metrics::AgentMetrics;
use crate::state::SeqCounter;

/// Whether the controller confirmed the attestation key is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Not yet, or the controller said it is not (`KEY_NOT_PINNED`): `PinKey` first.
    Unconfirmed,
    Pinned,
}

/// Which report the loop makes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A heartbeat (or the full list): the interval passed, or a scan was asked for.
    Heartbeat,
    /// Watched files changed between heartbeats: report only if the set moved.
    IfChanged,
}

/// Whether the controller answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Failing since the last success: one warning, retries with backoff,
    /// and watched changes wait for the next retry.
    Down,
}

/// The signing and sending side: sequence numbers, the attestation key,
/// the stream to the controller and what it has acknowledged.
pub struct Reporter {
    host: String,
    role: String,
    signer: Signer,
    seq: SeqCounter,
    client: AgentServiceClient<FailoverChannel>,
    /// Attestations go to the controller on this stream.
    attest: AttestStream,
    boot_id: String,
    /// Digest whose entries the controller has acknowledged.
    acked_full: Option<Vec<u8>>,
    last_gate: Option<GateState>,
    key: Key,
    /// Whether the last attestation sent carried the full entry list.
    last_sent_full: bool,
    /// The host's wall clock: what `measured_at` says.
    clock: SharedClock,
    /// What the last failed call was (a redirect goes again at once).
    last_failure: Failure,
    /// Gates from the controller's replies, for the gate keeper: a halt
    /// that a reply carries closes the gate even before the directive
    /// stream is back on the new leader.
    gates: Option<tokio::sync::mpsc::UnboundedSender<lockstep_proto::pb::Gate>>,
    metrics: Arc<AgentMetrics>,
    /// A TPM-bound host: attestations are signed with this run's session
    /// key (bound by the quotes), the file key only answers `PinKey`.
    tpm: Option<TpmSession>,
}

/// A TPM-bound agent run: its session key, and its quotes. The first quote
/// of a run (and the first after a failed call: a reconnect) goes before
/// the report; the periodic ones and those after a full scan go beside the
/// reports, so a report never waits for the TPM.
pub struct TpmSession {
    pub tpm: crate::tpm::Tpm,
    pub signer: Signer,
    pub interval: std::time::Duration,
    last_quote: Option<tokio::time::Instant>,
    /// A quote must go before the next report (start, a failed call).
    before_next: bool,
    /// A quote is due beside the reports (a full scan just finished).
    soon: bool,
    /// The session PCR holds this run's binding (reset and extended once).
    bound: bool,
    /// The quote running beside the reports, if any.
    beside: Option<tokio::task::JoinHandle<Result<(), AgentError>>>,
}

/// A quote still running beside the reports when the agent stops is
/// abandoned: its answer would be for a run that is over.
impl Drop for TpmSession {
    fn drop(&mut self) {
        if let Some(task) = self.beside.take() {
            task.abort();
        }
    }
}

impl TpmSession {
    pub fn new(tpm: crate::tpm::Tpm, signer: Signer, interval: std::time::Duration) -> Self {
        Self {
            tpm,
            signer,
            interval,
            last_quote: None,
            before_next: true,
            soon: false,
            bound: false,
            beside: None,
        }
    }

    fn is_due(&self) -> bool {
        self.soon || self.last_quote.is_none_or(|t| t.elapsed() >= self.interval)
    }
}

/// One quote: a nonce from the controller, the TPM's quote answering it,
/// and the controller's verdict (the gate it leaves the host with, handed
/// to the gate keeper).
async fn quote_once(
    mut client: AgentServiceClient<FailoverChannel>,
    tpm: crate::tpm::Tpm,
    session_public_key: Vec<u8>,
    boot_id: String,
    metrics: Arc<AgentMetrics>,
    gates: Option<tokio::sync::mpsc::UnboundedSender<lockstep_proto::pb::Gate>>,
) -> Result<(), AgentError> {
    let nonce = client
        .tpm_nonce(lockstep_proto::pb::TpmNonceRequest {})
        .await?
        .into_inner()
        .nonce;
    let started = std::time::Instant::now();
    let quote = tpm.quote(nonce.clone()).await?;
    metrics.quote_seconds.observe(started.elapsed().as_secs_f64());
    let reply = client
        .tpm_quote(quote.into_request(nonce, session_public_key, boot_id))
        .await?
        .into_inner();
    if let (Some(gate), Some(gates)) = (reply.gate, gates) {
        let _ = gates.send(gate);
    }
    Ok(())
}

impl Reporter {
    pub fn new(
        host: String,
        role: String,
        signer: Signer,
        seq: SeqCounter,
        client: AgentServiceClient<FailoverChannel>,
        metrics: Arc<AgentMetrics>,
        clock: SharedClock,
    ) -> Self {
        Self {
            host,
            role,
            signer,
            seq,
            attest: AttestStream::new(client.clone()),
            client,
            boot_id: crate::state::boot_id(),
            acked_full: None,
            last_gate: None,
            key: Key::Unconfirmed,
            last_sent_full: false,
            clock,
            last_failure: Failure::Plain,
            gates: None,
            metrics,
            tpm: None,
        }
    }

    /// Signs with `session`'s key and quotes before reporting when due.
    pub fn with_tpm(mut self, session: TpmSession) -> Self {
        self.tpm = Some(session);
        self
    }

    /// Hands every gate a reply carries to `gates` (the gate keeper's side).
    pub fn send_gates_to(&mut self, gates: tokio::sync::mpsc::UnboundedSender<lockstep_proto::pb::Gate>) {
        self.gates = Some(gates);
    }

    /// Quote soon, beside the reports (a full scan just finished).
    pub fn quote_soon(&mut self) {
        if let Some(t) = &mut self.tpm {
            t.soon = true;
        }
    }

    /// Quote before the next report (a failed call: maybe a reconnect,
    /// maybe another controller).
    fn quote_before_next(&mut self) {
        if let Some(t) = &mut self.tpm {
            t.before_next = true;
        }
    }

    /// Before a report: the run's first quote (binding the session PCR
    /// first) or one after a failed call, in line; a due one started beside.
    async fn quote_if_due(&mut self) -> Result<(), AgentError> {
        let (client, boot_id, metrics, gates) = (
            self.client.clone(),
            self.boot_id.clone(),
            self.metrics.clone(),
            self.gates.clone(),
        );
        let Some(session) = &mut self.tpm else {
            return Ok(());
        };
        if let Some(done) = session.beside.take_if(|t| t.is_finished()) {
            match done.await {
                Ok(Ok(())) => session.last_quote = Some(tokio::time::Instant::now()),
                Ok(Err(e)) => {
                    warn!(host = %self.host, error = %e, "TPM quote failed; the gate closes if none succeeds within the controller's quote_max_age")
                }
                Err(e) => warn!(host = %self.host, error = %e, "TPM quote task failed"),
            }
        }
        if !session.bound {
            let binding = lockstep_proto::tpm::session_binding(session.signer.public_key(), &boot_id);
            session.tpm.bind_session(binding).await?;
            session.bound = true;
        }
        let key = session.signer.public_key().to_vec();
        if session.before_next {
            quote_once(client, session.tpm.clone(), key, boot_id, metrics, gates).await?;
            debug!(host = %self.host, "TPM quote accepted");
            session.last_quote = Some(tokio::time::Instant::now());
            session.before_next = false;
            session.soon = false;
        } else if session.is_due() && session.beside.is_none() {
            session.soon = false;
            session.beside = Some(tokio::spawn(quote_once(
                client,
                session.tpm.clone(),
                key,
                boot_id,
                metrics,
                gates,
            )));
            // Counted from its start: a slow TPM is not asked twice at once.
            session.last_quote = Some(tokio::time::Instant::now());
        }
        Ok(())
    }

    /// What the last failed call was (and forgets it).
    fn take_failure(&mut self) -> Failure {
        std::mem::replace(&mut self.last_failure, Failure::Plain)
    }

    pub fn public_key(&self) -> &[u8] {
        self.signer.public_key()
    }

    /// Whether the last attestation sent carried entries (false: a heartbeat).
    pub fn last_sent_full(&self) -> bool {
        self.last_sent_full
    }

    /// Whether the controller holds the entries of `digest`.
    pub fn holds(&self, digest: &[u8]) -> bool {
        self.acked_full.as_deref() == Some(digest)
    }

    pub async fn submit_scanned(
        &mut self,
        entries: Vec<lockstep_proto::pb::Entry>,
        digest: Vec<u8>,
    ) -> Result<SubmitReply, AgentError> {
        if self.key == Key::Unconfirmed {
            let req = PinKeyRequest {
                public_key: self.signer.public_key().to_vec(),
            };
            let reply = self.client.pin_key(req).await?.into_inner();
            debug!(host = %self.host, key_id = %reply.key_id, "attestation key pinned");
            self.key = Key::Pinned;
        }
        // Not quoted in line: nothing is reported (the controller would not
        // take this run's key) and the next report tries again.
        self.quote_if_due().await?;
        let full = self.acked_full.as_deref() != Some(digest.as_slice());
        let mut reply = self.submit(&entries, &digest, full).await?;
        if reply.manifest_needed && !full {
            reply = self.submit(&entries, &digest, true).await?;
        }
        self.note_gate(&reply);
        Ok(reply)
    }

    #[tracing::instrument(name = "attestation", level = "debug", skip_all, fields(host = %self.host, seq = tracing::field::Empty, full))]
    async fn submit(
        &mut self,
        entries: &[lockstep_proto::pb::Entry],
        digest: &[u8],
        full: bool,
    ) -> Result<SubmitReply, AgentError> {
        let seq = self.seq.reserve()?;
        tracing::Span::current().record("seq", seq);
        let attestation = Attestation {
            host: self.host.clone(),
            role: self.role.clone(),
            seq,
            measured_at_unix_ms: self.clock.now_unix_ms(),
            boot_id: self.boot_id.clone(),
            digest: digest.to_vec(),
            full,
            entries: if full { entries.to_vec() } else { Vec::new() },
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let signer = self.tpm.as_ref().map_or(&self.signer, |t| &t.signer);
        let envelope = signer.seal_attestation(&attestation);
        self.last_sent_full = full;
        let sent = tokio::time::Instant::now();
        let reply = match self.attest.send(envelope).await {
            Ok(r) => r,
            Err(status) => {
                self.metrics.report(match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled => "failed",
                    _ => "refused",
                });
                self.last_failure = Failure::of(&status, sent);
                // A reconnect (or a refusal) quotes again before the next report.
                self.quote_before_next();
                // Decided on the stable reason, never on the message text.
                if lockstep_proto::reason::of(&status).as_deref() == Some(lockstep_proto::reason::KEY_NOT_PINNED) {
                    self.key = Key::Unconfirmed;
                }
                return Err(status.into());
            }
        };
        if reply.accepted {
            self.metrics.report("accepted");
        }
        if full && reply.accepted {
            self.acked_full = Some(digest.to_vec());
        }
        if reply.manifest_needed {
            self.acked_full = None;
        }
        Ok(reply)
    }

    fn note_gate(&mut self, reply: &SubmitReply) {
        let Some(gate) = &reply.gate else { return };
        if let Some(to) = &self.gates {
            let _ = to.send(gate.clone());
        }
        let state = gate.state();
        if self.last_gate != Some(state) {
            let reasons: Vec<&str> = gate.reasons.iter().map(|r| r.text.as_str()).collect();
            info!(host = %self.host, gate = ?state, release = gate.release, reasons = ?reasons, "gate changed");
            self.last_gate = Some(state);
        }
    }
}

/// One report: a scan, then a submission (`None` when `due` is
/// [`Due::IfChanged`] and the set did not move).
pub async fn report(
    measurer: &mut Measurer,
    reporter: &mut Reporter,
    due: Due,
) -> Result<Option<SubmitReply>, AgentError> {
    let full_scans = measurer.full_scans_done();
    let (entries, digest) = measurer.scan().await?;
    if measurer.full_scans_done() != full_scans {
        reporter.quote_soon();
    }
    if due == Due::IfChanged && reporter.holds(&digest) {
        return Ok(None);
    }
    reporter.submit_scanned(entries, digest).await.map(Some)
}

/// What wakes the loop before the next heartbeat is due.
pub struct Triggers {
    /// `Agent::scan_trigger`: scan and report now.
    pub scan_now: Arc<Notify>,
    /// Watched files changed and settled.
    pub fs_changed: Arc<Notify>,
    /// `lockstep scan --host`.
    pub scan_requests: Arc<FullScanRequests>,
    /// The directive stream's side of the link (see [`Reconnects`]).
    pub reconnects: Arc<Reconnects>,
}

/// Reports every `interval` (sooner when triggered) until `shutdown`.
pub async fn run(
    measurer: &mut Measurer,
    reporter: &mut Reporter,
    triggers: &Triggers,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut pace = Pace::new(Duration::from_secs(30));
    let (mut due, mut link) = (Due::Heartbeat, Link::Up);
    // The next heartbeat is due then, whatever the watcher triggers in
    // between: a change that does not move the set must not delay it.
    let mut next_report = tokio::time::Instant::now();
    loop {
        let host = reporter.host.clone();
        link = match (report(measurer, reporter, due).await, link) {
            (Ok(submitted), was) => {
                if was == Link::Down {
                    info!(host = %host, "reporting to the controller again");
                    triggers.reconnects.reports_back.notify_one();
                }
                pace.succeeded();
                if submitted.is_some() {
                    next_report = tokio::time::Instant::now() + interval;
                }
                Link::Up
            }
            (Err(e), was) => {
                // One warning per outage, not one per retry.
                if was == Link::Down {
                    debug!(host = %host, error = %e, "report failed again");
                } else {
                    warn!(host = %host, error = %e, "report failed; retrying with backoff");
                }
                // A failover (a few seconds) is waited out at most a second
                // behind the new leader, a redirect followed at once; a long
                // outage backs off fully (crate::link::pace).
                let pause = pace.failed(reporter.take_failure());
                next_report = tokio::time::Instant::now() + pause;
                Link::Down
            }
        };
        due = tokio::select! {
            () = tokio::time::sleep_until(next_report) => Due::Heartbeat,
            () = triggers.scan_now.notified() => Due::Heartbeat,
            () = triggers.scan_requests.requested() => Due::Heartbeat,
            () = triggers.reconnects.directives_back.notified(), if link == Link::Down => Due::Heartbeat,
            done = measurer.verification_finished() => {
                measurer.verification_done(done);
                Due::Heartbeat
            }
            () = triggers.fs_changed.notified(), if link == Link::Up => Due::IfChanged,
            () = shutdown.as_mut() => return,
        };
    }
}
