use lockstep_proto::now_unix_ms;
use lockstep_proto::pb::{Reason, ReasonKind};

use super::*;
use crate::config::GateConfig;

fn config(dir: &Path, outage: OutagePolicy) -> GateConfig {
    GateConfig {
        state_file: dir.join("gate.json"),
        on_open: vec!["open-hook".into()],
        on_close: vec!["close-hook".into()],
        hook_timeout: Duration::from_secs(1),
        outage,
    }
}

fn open_gate(lease_ms: i64) -> Gate {
    let now = now_unix_ms();
    Gate {
        host: "smars-01".into(),
        state: GateState::Open as i32,
        release: 2,
        decided_at_unix_ms: now,
        lease_expires_unix_ms: now + lease_ms,
        ..Default::default()
    }
}

fn closed_gate(text: &str) -> Gate {
    Gate {
        host: "smars-01".into(),
        state: GateState::Closed as i32,
        reasons: vec![Reason {
            kind: ReasonKind::Halted as i32,
            text: text.into(),
        }],
        ..Default::default()
    }
}

#[test]
fn starts_closed_then_follows_the_controller_and_hooks_run_on_transitions_only() {
    let d = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx);
    let f = GateFile::read(&d.path().join("gate.json")).unwrap().unwrap();
    assert_eq!(f.state, "CLOSED");
    assert!(f.reasons[0].contains("no gate from the controller yet"));

    k.apply(&open_gate(30_000));
    let f = GateFile::read(&d.path().join("gate.json")).unwrap().unwrap();
    assert!(f.is_open_at(now_unix_ms()));
    assert_eq!(f.release, 2);
    assert_eq!(rx.try_recv().unwrap().argv, vec!["open-hook"]);
    // A renewal is not a transition: no hook.
    k.apply(&open_gate(30_000));
    assert!(rx.try_recv().is_err());

    k.apply(&closed_gate("halted (fleet) by alice"));
    let run = rx.try_recv().unwrap();
    assert_eq!(run.argv, vec!["close-hook"]);
    assert_eq!(run.reasons, vec!["halted (fleet) by alice"]);
    assert!(
        !GateFile::read(&d.path().join("gate.json"))
            .unwrap()
            .unwrap()
            .is_open_at(now_unix_ms())
    );
    assert_eq!(k.deadline(), None);
}

#[test]
fn lease_is_counted_on_the_hosts_clock_from_the_controllers_difference() {
    let d = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx);
    // The controller's clock is an hour ahead of ours: only the difference counts.
    let mut g = open_gate(5_000);
    g.decided_at_unix_ms += 3_600_000;
    g.lease_expires_unix_ms += 3_600_000;
    k.apply(&g);
    let left = k.deadline().unwrap().saturating_duration_since(Instant::now());
    assert!(
        left > Duration::from_millis(4_000) && left <= Duration::from_millis(5_000),
        "{left:?}"
    );
    let f = k.file();
    let file_left = f.lease_expires_unix_ms - now_unix_ms();
    assert!((4_000..=5_000).contains(&file_left), "{file_left}");
}

#[test]
fn expiry_closes_the_gate_and_runs_the_close_hook() {
    let d = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx);
    k.apply(&open_gate(30_000));
    let _ = rx.try_recv();
    k.expire();
    let f = GateFile::read(&d.path().join("gate.json")).unwrap().unwrap();
    assert_eq!(f.state, "CLOSED");
    assert!(
        f.reasons[0].starts_with("lease expired: no word from the controller"),
        "{:?}",
        f.reasons
    );
    assert_eq!(rx.try_recv().unwrap().argv, vec!["close-hook"]);
}

#[test]
fn hold_policy_keeps_open_only_inside_its_hours() {
    let d = tempfile::tempdir().unwrap();
    let now_min = i32::try_from((now_unix_ms() / 60_000).rem_euclid(1440)).unwrap();
    let inside = OutagePolicy::Hold {
        from_min: (now_min + 1439) % 1440,
        to_min: (now_min + 2) % 1440,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), inside), tx);
    k.apply(&open_gate(30_000));
    let _ = rx.try_recv();
    k.expire();
    let f = k.file().clone();
    assert!(f.is_open_at(now_unix_ms()), "held open during the session");
    assert!(f.held_since_unix_ms > 0);
    assert!(f.reasons[0].contains("ALARM"));
    assert!(rx.try_recv().is_err(), "no transition, no hook");

    let outside = OutagePolicy::Hold {
        from_min: (now_min + 10) % 1440,
        to_min: (now_min + 20) % 1440,
    };
    let d2 = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d2.path(), outside), tx);
    k.apply(&open_gate(30_000));
    k.expire();
    assert_eq!(k.file().state, "CLOSED", "outside the session an outage closes");
}

#[test]
fn restart_keeps_an_unexpired_open_lease_and_drops_an_expired_one() {
    let d = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx.clone());
    k.apply(&open_gate(30_000));
    drop(k);
    let k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx.clone());
    assert_eq!(k.file().state, "OPEN");
    assert!(k.deadline().is_some());

    let mut f = k.file().clone();
    f.lease_expires_unix_ms = now_unix_ms() - 1;
    std::fs::write(d.path().join("gate.json"), serde_json::to_vec(&f).unwrap()).unwrap();
    let k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx);
    assert_eq!(k.file().state, "CLOSED");
}

/// 10:00 UTC on some day, for tests that depend on the hour.
const TEN_UTC: i64 = 1_764_669_600_000;

/// The lease runs out on the host's clock: with time paused, a test moves
/// the clock past it instead of waiting, and the gate closes then, not before.
#[tokio::test(start_paused = true)]
async fn a_lease_runs_out_on_the_injected_clock() {
    use lockstep_daemon::clock::{Clock, TokioClock};
    let d = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let clock = TokioClock::starting_at(TEN_UTC);
    let mut k = GateKeeper::with_clock("smars-01", config(d.path(), OutagePolicy::Close), tx, clock.shared());
    let mut g = open_gate(5_000);
    (g.decided_at_unix_ms, g.lease_expires_unix_ms) = (TEN_UTC, TEN_UTC + 5_000);
    k.apply(&g);
    assert_eq!(
        k.file().lease_expires_unix_ms,
        TEN_UTC + 5_000,
        "counted on the host's clock"
    );
    tokio::time::advance(Duration::from_millis(4_900)).await;
    assert!(k.file().is_open_at(clock.now_unix_ms()), "still inside the lease");
    tokio::time::sleep_until(k.deadline().unwrap()).await;
    assert!(
        !k.file().is_open_at(clock.now_unix_ms()),
        "the lease ran out with the clock"
    );
    k.expire();
    assert_eq!(k.file().state, "CLOSED");
    assert_eq!(k.file().updated_at_unix_ms, TEN_UTC + 5_000);
}

/// The hold policy's hours are read on the injected clock: at 10:00 UTC a
/// 09:00-16:00 window holds through an outage, a 12:00-13:00 one does not.
#[tokio::test(start_paused = true)]
async fn hold_hours_are_read_on_the_injected_clock() {
    use lockstep_daemon::clock::TokioClock;
    for (from_min, to_min, held) in [
        (9 * 60, 16 * 60, true),
        (12 * 60, 13 * 60, false),
        (22 * 60, 11 * 60, true),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let clock = TokioClock::starting_at(TEN_UTC).shared();
        let policy = OutagePolicy::Hold { from_min, to_min };
        let mut k = GateKeeper::with_clock("smars-01", config(d.path(), policy), tx, clock);
        let mut g = open_gate(5_000);
        (g.decided_at_unix_ms, g.lease_expires_unix_ms) = (TEN_UTC, TEN_UTC + 5_000);
        k.apply(&g);
        tokio::time::advance(Duration::from_secs(6)).await;
        k.expire();
        assert_eq!(k.file().state == "OPEN", held, "hold {from_min}-{to_min} at 10:00 UTC");
    }
}

#[test]
fn a_gate_from_a_lower_epoch_is_refused_and_the_highest_epoch_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx.clone());
    // The new leader (epoch 9) says CLOSED (a halt it re-issued)...
    let halted = Gate {
        epoch: 9,
        ..closed_gate("halted (fleet) by alice")
    };
    assert!(k.apply(&halted));
    // ...and the deposed leader (epoch 5), woken up, still says OPEN.
    let stale = Gate {
        epoch: 5,
        ..open_gate(30_000)
    };
    assert!(!k.apply(&stale), "a deposed leader's gate must be refused");
    let f = GateFile::read(&d.path().join("gate.json")).unwrap().unwrap();
    assert_eq!(f.state, "CLOSED");
    assert_eq!(f.epoch, 9);
    // An agent restart keeps the epoch: the stale gate is still refused.
    drop(k);
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx);
    assert!(!k.apply(&stale));
    assert!(
        !GateFile::read(&d.path().join("gate.json"))
            .unwrap()
            .unwrap()
            .is_open_at(now_unix_ms())
    );
    // The same or a higher epoch is taken.
    assert!(k.apply(&Gate {
        epoch: 9,
        ..open_gate(30_000)
    }));
    assert!(
        GateFile::read(&d.path().join("gate.json"))
            .unwrap()
            .unwrap()
            .is_open_at(now_unix_ms())
    );
    // A sled controller (epoch 0, unfenced) is taken, the highest kept.
    assert!(k.apply(&closed_gate("halted (fleet) by alice")));
    assert_eq!(GateFile::read(&d.path().join("gate.json")).unwrap().unwrap().epoch, 9);
    assert!(!k.apply(&stale));
}

#[test]
fn a_reply_closes_the_gate_only_when_newer_and_never_opens_it() {
    let d = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut k = GateKeeper::new("smars-01", config(d.path(), OutagePolicy::Close), tx);
    let state = || GateFile::read(&d.path().join("gate.json")).unwrap().unwrap();
    let open = Gate {
        epoch: 5,
        ..open_gate(30_000)
    };
    assert!(k.apply(&open));
    // An OPEN lease in a reply is not taken: leases come on the stream.
    let reply_open = Gate {
        epoch: 9,
        ..open_gate(60_000)
    };
    assert!(!k.apply_closing(&reply_open));
    assert_eq!(state().epoch, 5);
    // A halt in the new leader's reply closes at once.
    let halted = Gate {
        epoch: 9,
        decided_at_unix_ms: open.decided_at_unix_ms + 10,
        ..closed_gate("halted (role smars) by alice")
    };
    assert!(k.apply_closing(&halted));
    assert_eq!(state().state, "CLOSED");
    assert!(!k.apply_closing(&halted), "the same decision again changes nothing");
    // The stream reopens it (a resume); an older closing reply still in
    // flight does not undo that.
    let resumed = Gate {
        epoch: 9,
        decided_at_unix_ms: halted.decided_at_unix_ms + 10,
        lease_expires_unix_ms: halted.decided_at_unix_ms + 30_010,
        ..open_gate(30_000)
    };
    assert!(k.apply(&resumed));
    assert!(!k.apply_closing(&halted));
    assert!(state().is_open_at(now_unix_ms()));
}
