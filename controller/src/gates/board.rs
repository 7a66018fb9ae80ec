//! The gate board: the latest decided gate of every host, one `watch`
//! channel per host that its directive stream follows. Gates are decided
//! from the ledger's view ([`crate::fleet`], [`crate::fleet::gate`]); a change
//! that can move a gate re-decides it here, and a periodic refresh catches
//! what time alone changes (a host going stale, a lease running out).
//! State changes (OPEN, CLOSED, MISSING) go to the audit log through a
//! queue drained by [`GateBoard::record_transitions`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_proto::pb::{Gate, GateState};
use tokio::sync::{mpsc, watch};

use crate::alerts::Alerts;
use crate::alerts::incidents::{Signal, cause_of};
use crate::config::{ControllerConfig, RoleConfig, RoleMode};
use crate::error::ApiError;
use crate::fleet::gate::Clock;
use crate::ledger::Ledger;
use crate::ledger::change::Committed;
use crate::store::Put;
use lockstep_evidence::chain::AuditEvent;
use lockstep_evidence::facts::{GateChanged, to_facts};

/// How often every gate is re-decided, so that time alone (a host going
/// stale) reaches the agents even when nothing else happens.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

pub struct GateBoard {
    config: Arc<ControllerConfig>,
    ledger: Arc<Ledger>,
    alerts: Arc<Alerts>,
    /// The latest gate of each host, watched by its directive stream.
    gates: Mutex<HashMap<String, watch::Sender<Gate>>>,
    /// Gate transitions to record, written by [`GateBoard::record_transitions`].
    transitions: (
        mpsc::UnboundedSender<AuditEvent>,
        Mutex<Option<mpsc::UnboundedReceiver<AuditEvent>>>,
    ),
    /// Counts gate decisions that changed something (state or reasons),
    /// for pages that follow the fleet live (the web board).
    changes: watch::Sender<u64>,
    /// Hosts with an attestation accepted by this controller since it
    /// started leading (see [`GateBoard::holds_back`]).
    attested_here: Mutex<std::collections::HashSet<String>>,
}

impl GateBoard {
    pub fn new(config: Arc<ControllerConfig>, ledger: Arc<Ledger>, alerts: Arc<Alerts>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            config,
            ledger,
            alerts,
            gates: Mutex::new(HashMap::new()),
            transitions: (tx, Mutex::new(Some(rx))),
            changes: watch::channel(0).0,
            attested_here: Mutex::default(),
        }
    }

    /// `host` has had an attestation accepted by this controller.
    pub fn attested(&self, host: &str) {
        let mut here = self.attested_here.lock().unwrap_or_else(|p| p.into_inner());
        if !here.contains(host) {
            here.insert(host.to_string());
        }
    }

    /// Whether `gate` is an OPEN lease this controller may not give yet:
    /// on etcd (epoch > 0) a leader opens no gate before the host has
    /// attested to it, so nothing the previous leader accepted is renewed
    /// on its word. Sled (epoch 0) has one controller, whose word it is.
    pub fn holds_back(&self, gate: &Gate) -> bool {
        self.ledger.store().epoch() > 0
            && gate.state() == lockstep_proto::pb::GateState::Open
            && !self
                .attested_here
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&gate.host)
    }

    /// Moves whenever any host's gate changes (state or reasons).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Every host's latest decided gate, without deciding again (cheap at
    /// 10,000 hosts; at most one refresh old).
    pub fn latest(&self) -> HashMap<String, Gate> {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.iter().map(|(h, tx)| (h.clone(), tx.borrow().clone())).collect()
    }

    /// Now, and the lease a fresh attestation buys.
    pub fn clock(&self) -> Clock {
        Clock::at(&self.config, self.ledger.now_unix_ms())
    }

    /// `host`'s gate now and every later decision, for its directive stream.
    pub fn watch(&self, host: &str) -> Result<watch::Receiver<Gate>, ApiError> {
        self.ledger.view().refuse_if_revoked(host)?;
        let current = self.current(host)?;
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let tx = gates
            .entry(host.to_string())
            .or_insert_with(|| watch::channel(current).0);
        Ok(tx.subscribe())
    }

    /// `host`'s gate as of now.
    pub fn current(&self, host: &str) -> Result<Gate, ApiError> {
        let role = self.config.host_role(host)?;
        Ok(self.ledger.view().host_gate(role, host, self.clock()))
    }

    /// Decides `host`'s gate now and pushes it (its lease was renewed or it
    /// was just refused); in consensus mode one host can move the majority,
    /// so the whole role is re-decided.
    pub fn publish_host(&self, role: &str, host: &str) -> Option<Gate> {
        let role_cfg = self.config.roles.get(role)?;
        if role_cfg.mode == RoleMode::Consensus {
            self.publish_role(role_cfg);
        }
        let gate = self.ledger.view().host_gate(role_cfg, host, self.clock());
        self.push(gate.clone());
        Some(gate)
    }

    /// Re-decides every gate of `role` and pushes those that changed.
    pub fn publish_role(&self, role: &RoleConfig) {
        let (gates, _) = self.ledger.view().role_gates(role, self.clock());
        for gate in gates {
            self.push(gate);
        }
    }

    /// Re-decides every gate a commit's records touch, the one place a
    /// part's committed change reaches the hosts: a host record its host
    /// (its role too in consensus mode), a release its role, a halt or its
    /// lifting the whole fleet. The gate of the last host written, if any.
    pub fn after(&self, committed: &Committed) -> Option<Gate> {
        let mut gate = None;
        let mut all = false;
        for put in committed.puts.iter() {
            match put {
                Put::Host(h) => gate = self.publish_host(&h.role, &h.host),
                Put::Release(r) => {
                    if let Some(role) = self.config.roles.get(&r.role) {
                        self.publish_role(role);
                    }
                }
                Put::Halt(_) => all = true,
                _ => {}
            }
        }
        if all {
            self.publish_all();
        }
        gate
    }

    /// Re-decides every gate of the fleet.
    pub fn publish_all(&self) {
        for role in self.config.roles.values() {
            self.publish_role(role);
        }
    }

    /// Re-decides every gate each [`REFRESH_INTERVAL`] until `stop`.
    pub async fn refresh(&self, stop: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.publish_all(),
                () = &mut stop => return,
            }
        }
    }

    /// Hands a decided gate to the host's directive stream if it differs
    /// from what the stream last had (the decision time aside), and queues
    /// a state change for the audit log.
    fn push(&self, gate: Gate) {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = gates.get(&gate.host) else {
            // The first decision about a host is its starting point, not a
            // transition to audit; alerts still learn where it starts.
            self.signal_gate(&gate);
            gates.insert(gate.host.clone(), watch::channel(gate).0);
            self.changes.send_modify(|n| *n += 1);
            return;
        };
        let mut transition = None;
        let mut cause_changed = false;
        let mut seen_change = false;
        tx.send_if_modified(|old| {
            cause_changed = cause_of(old).map(|c| c.key) != cause_of(&gate).map(|c| c.key);
            // A renewed lease is not news to a person watching the board.
            seen_change = old.state != gate.state || old.reasons != gate.reasons || old.release != gate.release;
            let changed = Gate {
                decided_at_unix_ms: old.decided_at_unix_ms,
                ..gate.clone()
            } != *old;
            if old.state != gate.state {
                transition = Some(transition_event(old, &gate));
            }
            if changed {
                *old = gate;
            }
            changed
        });
        if let Some(t) = transition {
            let _ = self.transitions.0.send(t);
        }
        if seen_change {
            self.changes.send_modify(|n| *n += 1);
        }
        if cause_changed {
            let current = tx.borrow().clone();
            drop(gates);
            self.signal_gate(&current);
        }
    }

    fn signal_gate(&self, gate: &Gate) {
        self.alerts.signal(Signal::Gate {
            host: gate.host.clone(),
            role: gate.role.clone(),
            role_hosts: self.config.roles.get(&gate.role).map_or(0, |r| r.hosts.len()),
            cause: cause_of(gate),
        });
    }

    /// Writes queued gate transitions to the audit log until `stop`, then
    /// writes what is still queued (a transition decided just before a
    /// shutdown is recorded, not dropped). Run once, by the server.
    pub async fn record_transitions(&self, stop: impl Future<Output = ()>) {
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
                if let Err(e) = self.ledger.record(batch).await {
                    tracing::error!(error = %e, "cannot record gate transitions in the audit log");
                }
            }
            if stopping {
                return;
            }
        }
    }
}

fn transition_event(old: &Gate, new: &Gate) -> AuditEvent {
    let reasons: Vec<String> = new.reasons.iter().map(|r| r.text.clone()).collect();
    let facts = to_facts(&GateChanged {
        from: gate_word(old.state()).into(),
        to: gate_word(new.state()).into(),
        reasons: reasons.clone(),
    });
    AuditEvent {
        actor: "controller".into(),
        action: lockstep_evidence::action::AuditAction::GateChanged,
        host: new.host.clone(),
        role: new.role.clone(),
        detail: format!(
            "{} -> {}{}",
            gate_word(old.state()),
            gate_word(new.state()),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", reasons.join("; "))
            }
        ),
        facts,
    }
}

pub fn gate_word(s: GateState) -> &'static str {
    match s {
        GateState::Open => "OPEN",
        GateState::Closed => "CLOSED",
        GateState::Missing => "MISSING",
        GateState::Unspecified => "UNKNOWN",
    }
}
