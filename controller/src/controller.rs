//! The controller's core: takes attestations and console requests, keeps the
//! store and the in-memory fleet view in step (durable first), and decides
//! gates. The gRPC services are thin adapters over this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lockstep_proto::envelope;
use lockstep_proto::identity::{OperatorRole, PeerIdentity};
use lockstep_proto::pb::{Envelope, Gate, SubmitReply};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::audit::AuditEvent;
use crate::change::{Attested, Change, Committed};
use crate::config::{ControllerConfig, RoleConfig};
use crate::error::ApiError;
use crate::fleet::FleetState;
use crate::gate::Clock;
use crate::incidents::{Incidents, Signal, cause_of};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::verify::{self, Checks};

/// How often the count of unchanged heartbeats goes to the audit log.
pub const HEARTBEAT_COUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Controller {
    pub(crate) config: Arc<ControllerConfig>,
    /// Every durable change, and the fleet view they make.
    pub(crate) ledger: Ledger,
    /// The latest gate of each host, watched by its directive stream.
    gates: Mutex<HashMap<String, watch::Sender<Gate>>>,
    /// Set when the server begins to stop: long-lived streams end on it.
    closing: watch::Sender<bool>,
    /// Gate transitions to record, written by [`Controller::record_gate_transitions`].
    transitions: (
        mpsc::UnboundedSender<AuditEvent>,
        Mutex<Option<mpsc::UnboundedReceiver<AuditEvent>>>,
    ),
    /// Failures grouped by root cause, for alerts (see [`crate::alerts`]).
    /// Shared with the store writes of incidents, which take the latest
    /// record when they are applied (see [`crate::alerts`]).
    pub(crate) incidents: Arc<Mutex<Incidents>>,
    /// Refused connections and calls, counted for the audit log.
    pub refusals: crate::refusals::Refusals,
    /// Heartbeats accepted with an unchanged version set since the last
    /// count was written: each is stored, but one audit record per
    /// heartbeat would be ~86M records a day on 10,000 hosts.
    unchanged_heartbeats: std::sync::atomic::AtomicU64,
    pub metrics: Metrics,
    /// Full scans operators asked of connected agents.
    pub(crate) scan_requests: crate::scan_requests::ScanRequests,
}

impl Controller {
    pub fn new(config: ControllerConfig, store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let config = Arc::new(config);
        let (tx, rx) = mpsc::unbounded_channel();
        let incidents = Incidents::load(store.incidents()?);
        let metrics = Metrics::new();
        let store_seconds = metrics.store_seconds.clone();
        let ledger = Ledger::open(config.clone(), store, Box::new(move |s| store_seconds.observe(s)))?;
        Ok(Self {
            config,
            ledger,
            gates: Mutex::new(HashMap::new()),
            closing: watch::channel(false).0,
            transitions: (tx, Mutex::new(Some(rx))),
            incidents: Arc::new(Mutex::new(incidents)),
            refusals: crate::refusals::Refusals::default(),
            unchanged_heartbeats: std::sync::atomic::AtomicU64::new(0),
            metrics,
            scan_requests: crate::scan_requests::ScanRequests::default(),
        })
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    pub fn clock(&self) -> Clock {
        Clock {
            now_unix_ms: lockstep_proto::now_unix_ms(),
            freshness_ttl_ms: i64::try_from(self.config.freshness_ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Tells long-lived streams to end: the server is stopping.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Controller::begin_shutdown`] has been called.
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// `host`'s gate now and every later decision, for its directive stream.
    pub fn watch_gate(&self, host: &str) -> Result<watch::Receiver<Gate>, ApiError> {
        self.refuse_if_revoked(host)?;
        let current = self.current_gate(host)?;
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let tx = gates
            .entry(host.to_string())
            .or_insert_with(|| watch::channel(current).0);
        Ok(tx.subscribe())
    }

    /// Hands a decided gate to the host's directive stream if it differs
    /// from what the stream last had (the decision time aside), and queues
    /// a state change (OPEN, CLOSED, MISSING) for the audit log.
    fn push(&self, gate: Gate) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = gates.get(&gate.host) else {
            // The first decision about a host is its starting point, not a
            // transition to audit; alerts still learn where it starts.
            self.signal_gate(&gate);
            gates.insert(gate.host.clone(), watch::channel(gate).0);
            return;
        };
        let mut transition = None;
        let mut cause_changed = false;
        tx.send_if_modified(|old| {
            cause_changed = cause_of(old).map(|c| c.key) != cause_of(&gate).map(|c| c.key);
            let changed = Gate {
                decided_at_unix_ms: old.decided_at_unix_ms,
                ..gate.clone()
            } != *old;
            if old.state != gate.state {
                let reasons: Vec<&str> = gate.reasons.iter().map(|r| r.text.as_str()).collect();
                transition = Some(AuditEvent {
                    actor: "controller".into(),
                    action: "gate.changed".into(),
                    host: gate.host.clone(),
                    role: gate.role.clone(),
                    detail: format!(
                        "{} -> {}{}",
                        gate_word(old.state()),
                        gate_word(gate.state()),
                        if reasons.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", reasons.join("; "))
                        }
                    ),
                });
            }
            if changed {
                *old = gate;
            }
            changed
        });
        if let Some(t) = transition {
            let _ = self.transitions.0.send(t);
        }
        if cause_changed {
            let current = tx.borrow().clone();
            drop(gates);
            self.signal_gate(&current);
        }
    }

    fn signal_gate(&self, gate: &Gate) {
        self.signal(Signal::Gate {
            host: gate.host.clone(),
            role: gate.role.clone(),
            role_hosts: self.config.roles.get(&gate.role).map_or(0, |r| r.hosts.len()),
            cause: cause_of(gate),
        });
    }

    /// Re-decides every gate of `role` and pushes those that changed.
    pub(crate) fn publish_role(&self, role: &RoleConfig) {
        let (gates, _) = self.read().role_gates(role, self.clock());
        for gate in gates {
            self.push(gate);
        }
    }

    /// Re-decides every gate of the fleet: gates also change with time alone
    /// (a silent host goes stale), so this runs on a timer.
    pub fn publish_all(&self) {
        for role in self.config.roles.values() {
            self.publish_role(role);
        }
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, FleetState> {
        self.ledger.view()
    }

    pub(crate) fn role(&self, name: &str) -> Result<&RoleConfig, ApiError> {
        self.config.roles.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.roles.keys().map(String::as_str).collect();
            ApiError::NotFound(format!(
                "no role {name:?} in the controller config; roles: {}",
                known.join(", ")
            ))
        })
    }

    /// Commits `change` through the ledger (see [`crate::ledger`]); a
    /// store that stalled has raised a fleet-wide halt, pushed here.
    pub(crate) async fn commit(&self, change: Change) -> Result<Committed, ApiError> {
        let result = self.ledger.commit(change).await;
        if matches!(&result, Err(ApiError::Store(StoreError::Stalled { .. }))) {
            self.publish_all();
        }
        result
    }

    /// Appends `events` to the audit chain, durably.
    pub async fn audit(&self, events: Vec<AuditEvent>) -> Result<(), ApiError> {
        self.commit(Change::Recorded(events)).await.map(drop)
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.ledger.store()
    }

    /// Writes gate transitions to the audit log as they are decided, until
    /// the controller is dropped. Run once, by the server.
    /// Writes queued gate transitions to the audit log until `stop`, then
    /// writes what is still queued (a transition decided just before a
    /// shutdown is recorded, not dropped).
    pub async fn record_gate_transitions(&self, stop: impl std::future::Future<Output = ()>) {
        let rx = self.transitions.1.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut rx) = rx else { return };
        tokio::pin!(stop);
        loop {
            let (first, stopping) = tokio::select! {
                got = rx.recv() => (got, false),
                () = &mut stop => (None, true),
            };
            let mut batch: Vec<AuditEvent> = first.into_iter().collect();
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            if !batch.is_empty() {
                if let Err(e) = self.audit(batch).await {
                    tracing::error!(error = %e, "cannot record gate transitions in the audit log");
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes the count of unchanged heartbeats every
    /// [`HEARTBEAT_COUNT_INTERVAL`] until the controller is dropped. Run
    /// once, by the server.
    pub async fn count_heartbeats(&self) {
        let mut tick = tokio::time::interval(HEARTBEAT_COUNT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.record_heartbeat_count().await;
        }
    }

    /// Writes one `attestation.heartbeats` record with how many heartbeats
    /// renewed an unchanged version set since the last one (none: nothing).
    /// Also called at shutdown.
    pub async fn record_heartbeat_count(&self) {
        let n = self.unchanged_heartbeats.swap(0, std::sync::atomic::Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let event = AuditEvent {
            actor: "controller".into(),
            action: "attestation.heartbeats".into(),
            host: String::new(),
            role: String::new(),
            detail: format!("{n} heartbeats renewed unchanged version sets since the last count"),
        };
        if let Err(e) = self.audit(vec![event]).await {
            // Put back: they are counted in the next record instead.
            self.unchanged_heartbeats
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "cannot record the heartbeat count in the audit log");
        }
    }

    /// The host named by an agent certificate, and the role the inventory gives it.
    pub(crate) fn agent_host<'a>(&'a self, peer: &'a PeerIdentity) -> Result<(&'a str, &'a str), ApiError> {
        let PeerIdentity::Agent { host } = peer else {
            return Err(ApiError::PermissionDenied(format!(
                "only agent certificates may attest; this connection is {peer}"
            )));
        };
        let role = self.config.inventory.get(host).ok_or_else(|| {
            ApiError::PermissionDenied(format!(
                "host {host} is not in any role's inventory: add it to `hosts` of a [[role]] in the controller config"
            ))
        })?;
        self.refuse_if_revoked(host)?;
        Ok((host, role))
    }

    /// A revoked host's certificate is still CA-valid until it expires:
    /// every agent call checks this instead.
    pub(crate) fn refuse_if_revoked(&self, host: &str) -> Result<(), ApiError> {
        match self.read().hosts.get(host).and_then(|r| r.revoked.clone()) {
            None => Ok(()),
            Some(rev) => Err(ApiError::Revoked(format!(
                "host {host} was {} by {}: {}; it must enroll again with a new token (lockstep token create)",
                if rev.removed { "removed from service" } else { "revoked" },
                rev.by,
                rev.reason
            ))),
        }
    }

    /// Confirms the agent holds the attestation key pinned when it enrolled
    /// (see `PinKeyRequest`): a key is only ever pinned by enrollment.
    pub async fn pin_key(&self, peer: &PeerIdentity, public_key: Vec<u8>) -> Result<String, ApiError> {
        let (host, _) = self.agent_host(peer)?;
        if public_key.len() != 32 {
            return Err(ApiError::InvalidArgument("an Ed25519 public key is 32 bytes".into()));
        }
        let pinned = self
            .read()
            .hosts
            .get(host)
            .map(|r| r.pinned_key_hex.clone())
            .unwrap_or_default();
        let key_id = envelope::key_id(&public_key);
        if pinned.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "host {host} is not enrolled: create a join token with `lockstep token create --host {host}` and run `lockstep-agent enroll` on it"
            )));
        }
        if pinned != hex::encode(&public_key) {
            warn!(host, offered = %key_id, "refused an attestation key other than the one pinned at enrollment");
            return Err(ApiError::PermissionDenied(format!(
                "host {host} enrolled with attestation key {}, not {key_id}; a new key needs the host re-enrolled with a new token",
                hex::decode(&pinned).map(|k| envelope::key_id(&k)).unwrap_or_default()
            )));
        }
        Ok(key_id)
    }

    /// Verifies, stores durably, then acknowledges one attestation. The
    /// checks that depend on the host's record (seq, pinned key, revoked)
    /// are made again by the commit, where they cannot race.
    #[tracing::instrument(name = "attestation", level = "debug", skip_all, fields(host = tracing::field::Empty, seq = tracing::field::Empty))]
    pub async fn submit(&self, peer: &PeerIdentity, envelope: Envelope) -> Result<SubmitReply, ApiError> {
        let (host, role) = self.agent_host(peer)?;
        tracing::Span::current().record("host", host);
        let now = lockstep_proto::now_unix_ms();
        let record = self.read().hosts.get(host).cloned().unwrap_or_default();
        let pinned_key = hex::decode(&record.pinned_key_hex).unwrap_or_default();
        if pinned_key.is_empty() {
            return Err(ApiError::NotPinned { host: host.to_string() });
        }
        let checks = Checks {
            peer_host: host,
            inventory_role: role,
            record: &record,
            pinned_key: &pinned_key,
            limits: self.config.limits,
            max_skew_ms: i64::try_from(self.config.max_clock_skew.as_millis()).unwrap_or(i64::MAX),
            now_unix_ms: now,
        };
        let started = std::time::Instant::now();
        let verdict = verify::verify(&envelope, &checks);
        self.metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
        let verified = match verdict {
            Ok(v) => v,
            Err(rejection) => return Err(self.reject(peer, host, role, now, rejection).await),
        };
        if verified.entries.is_none() && !self.read().has_manifest(&verified.digest_hex) {
            return Ok(SubmitReply {
                accepted: false,
                manifest_needed: true,
                gate: None,
            });
        }
        let a = verified.attestation;
        tracing::Span::current().record("seq", a.seq);
        let unchanged =
            !a.full && record.last_seq > 0 && record.digest_hex == verified.digest_hex && record.boot_id == a.boot_id;
        let change = Change::Attested(Attested {
            actor: peer.to_string(),
            host: host.to_string(),
            role: role.to_string(),
            pinned_key_hex: record.pinned_key_hex.clone(),
            seq: a.seq,
            digest_hex: verified.digest_hex,
            measured_at_unix_ms: a.measured_at_unix_ms,
            accepted_at_unix_ms: now,
            boot_id: a.boot_id,
            agent_version: a.agent_version,
            full: a.full,
            manifest: verified.entries.map(Arc::new),
        });
        match self.commit(change).await {
            Ok(_) => {}
            // Refused at the commit: another attestation or a revocation got there first.
            Err(ApiError::Rejected(rejection)) => return Err(self.reject(peer, host, role, now, rejection).await),
            Err(e @ ApiError::Store(_)) => {
                tracing::error!(host, error = %e, "cannot store an attestation; closing the host's gate");
                self.ledger.note_unstored(host, now, &e);
                self.publish_gate(role, host);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.metrics.attestation(None);
        if unchanged {
            self.unchanged_heartbeats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let gate = self.publish_gate(role, host);
        Ok(SubmitReply {
            accepted: true,
            manifest_needed: false,
            gate,
        })
    }

    /// Records a rejected attestation (the gate closes on it even if it
    /// cannot be stored) and says so to the agent.
    async fn reject(
        &self,
        peer: &PeerIdentity,
        host: &str,
        role: &str,
        now: i64,
        rejection: verify::Rejection,
    ) -> ApiError {
        warn!(host, reason = %rejection, "rejected attestation");
        self.metrics.attestation(Some(rejection.kind()));
        let change = Change::Rejected {
            actor: peer.to_string(),
            host: host.to_string(),
            role: role.to_string(),
            reason: rejection.to_string(),
            at_unix_ms: now,
        };
        if let Err(e) = self.commit(change).await {
            tracing::error!(host, error = %e, "cannot store a rejection; the gate closes anyway");
            self.ledger.note_unstored(host, now, &e);
        }
        // Before the gate is re-decided, so the closing gate joins this
        // rejection's incident instead of counting twice.
        self.signal(Signal::Rejected {
            host: host.to_string(),
            role: role.to_string(),
            role_hosts: self.config.roles.get(role).map_or(0, |r| r.hosts.len()),
            detail: rejection.to_string(),
        });
        self.publish_gate(role, host);
        ApiError::Rejected(rejection)
    }

    /// `host`'s gate as of now.
    pub fn current_gate(&self, host: &str) -> Result<Gate, ApiError> {
        let role = self
            .config
            .inventory
            .get(host)
            .ok_or_else(|| ApiError::PermissionDenied(format!("host {host} is not in any role's inventory")))?;
        Ok(self.read().host_gate(self.role(role)?, host, self.clock()))
    }

    /// Decides `host`'s gate now and pushes it (its lease was renewed or it
    /// was just refused); in consensus mode one host can move the majority,
    /// so the whole role is re-decided.
    pub(crate) fn publish_gate(&self, role: &str, host: &str) -> Option<Gate> {
        let role_cfg = self.config.roles.get(role)?;
        if role_cfg.mode == crate::config::RoleMode::Consensus {
            self.publish_role(role_cfg);
        }
        let gate = self.read().host_gate(role_cfg, host, self.clock());
        self.push(gate.clone());
        Some(gate)
    }
}

/// Console actions allowed to each operator role.
pub(crate) fn require(peer: &PeerIdentity, needed: OperatorRole) -> Result<&str, ApiError> {
    match peer {
        PeerIdentity::Operator { name, role } if *role >= needed => Ok(name),
        PeerIdentity::Operator { name, role } => Err(ApiError::PermissionDenied(format!(
            "{name} has role {}; this needs the {} role",
            role.as_str(),
            needed.as_str()
        ))),
        other => Err(ApiError::PermissionDenied(format!(
            "console requests need an operator certificate; this connection is {other}"
        ))),
    }
}

fn gate_word(s: lockstep_proto::pb::GateState) -> &'static str {
    match s {
        lockstep_proto::pb::GateState::Open => "OPEN",
        lockstep_proto::pb::GateState::Closed => "CLOSED",
        lockstep_proto::pb::GateState::Missing => "MISSING",
        lockstep_proto::pb::GateState::Unspecified => "UNKNOWN",
    }
}
