//! The ledger with every part's changes through it, on a real sled store:
//! a view rebuilt from the store equals the live one; the checks that run
//! inside the commit (replays, revocations, one-time tokens, the two-person
//! rule) hold under concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use lockstep_controller::attest::change::{Attested, Rejected};
use lockstep_controller::config::ControllerConfig;
use lockstep_controller::enrollment::change::{Enrolled, Revoked, TokenCreated};
use lockstep_controller::fleet::FleetState;
use lockstep_controller::halts::change::{Halted, Resumed};
use lockstep_controller::ledger::Ledger;
use lockstep_controller::releases::change::{ReleaseApproved, ReleaseProposed};
use lockstep_controller::store::sled::SledStore;
use lockstep_controller::store::{HaltRecord, HaltScope, ReleaseRecord, Revocation, Store, TokenRecord};
use lockstep_proto::pb::Entry;

fn config() -> Arc<ControllerConfig> {
    let text = include_str!("fixtures/controller_good.toml");
    Arc::new(ControllerConfig::parse(text, Path::new("controller.toml")).unwrap())
}

fn open(dir: &Path) -> Ledger {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
    Ledger::open(config(), store, lockstep_daemon::clock::system(), Box::new(|_| {})).unwrap()
}

fn entries(contents: &str) -> Arc<Vec<Entry>> {
    let entry = Entry {
        path: b"/opt/smars/bin/smars".to_vec(),
        sha256: ring::digest::digest(&ring::digest::SHA256, contents.as_bytes())
            .as_ref()
            .to_vec(),
        ..Entry::default()
    };
    Arc::new(lockstep_proto::digest::canonicalize(vec![entry]).unwrap())
}

fn digest_of(entries: &[Entry]) -> String {
    hex::encode(lockstep_proto::digest::digest(entries))
}

fn token(host: &str, hash: &str) -> TokenRecord {
    TokenRecord {
        allow_new_tpm: false,
        hash_hex: hash.into(),
        host: host.into(),
        role: "smars".into(),
        created_by: "alice (operator)".into(),
        created_at_unix_ms: 1_000,
        expires_at_unix_ms: i64::MAX,
        used_at_unix_ms: 0,
    }
}

fn enrolled(host: &str, hash: &str, key: &str) -> Enrolled {
    Enrolled {
        tpm: None,
        host: host.into(),
        token_hash: hash.into(),
        pinned_key_hex: key.into(),
        detail: "test".into(),
    }
}

fn attested(host: &str, key: &str, seq: u64, manifest: &Arc<Vec<Entry>>) -> Attested {
    Attested {
        session_key_hex: String::new(),
        actor: format!("agent {host}"),
        host: host.into(),
        role: "smars".into(),
        pinned_key_hex: key.into(),
        seq,
        digest_hex: digest_of(manifest),
        measured_at_unix_ms: 3_000,
        accepted_at_unix_ms: 3_000,
        boot_id: "boot".into(),
        agent_version: "test".into(),
        full: true,
        manifest: Some(manifest.clone()),
    }
}

/// A release of `entries` proposed by alice (numbered by the commit).
fn proposal(entries: &[Entry]) -> ReleaseRecord {
    ReleaseRecord {
        boot_pcrs: Default::default(),
        boot_from_host: String::new(),
        number: 0,
        role: "smars".into(),
        digest_hex: digest_of(entries),
        entry_count: 1,
        source: "manifest file".into(),
        note: String::new(),
        proposed_by: "alice".into(),
        proposed_at_unix_ms: 1,
        approved_by: None,
        approved_at_unix_ms: 0,
    }
}

fn halt(scope: HaltScope, reason: &str) -> Halted {
    Halted {
        actor: "alice (operator)".into(),
        halt: HaltRecord {
            id: 0,
            scope,
            reason: reason.into(),
            halted_by: "alice".into(),
            halted_at_unix_ms: 4_000,
            resumed_by: None,
            resumed_at_unix_ms: 0,
            resume_reason: String::new(),
            drill: false,
        },
    }
}

/// Every kind of change, committed through the ledger, leaves a view that
/// a controller started on the same store rebuilds exactly.
#[tokio::test]
async fn a_view_rebuilt_from_the_store_equals_the_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path());
    let (v1, v2) = (entries("v1"), entries("v2"));
    for (i, host) in ["smars-01", "smars-02", "smars-03"].iter().enumerate() {
        let hash = format!("{i:064}");
        ledger
            .commit(TokenCreated {
                actor: "alice (operator)".into(),
                token: token(host, &hash),
            })
            .await
            .unwrap();
        ledger.commit(enrolled(host, &hash, &format!("{i:02}"))).await.unwrap();
        ledger.commit(attested(host, &format!("{i:02}"), 1, &v1)).await.unwrap();
    }
    ledger.commit(attested("smars-02", "01", 2, &v2)).await.unwrap();
    ledger
        .commit(Rejected {
            actor: "agent smars-03".into(),
            host: "smars-03".into(),
            role: "smars".into(),
            reason: "bad signature".into(),
            at_unix_ms: 5_000,
        })
        .await
        .unwrap();
    let proposed = ledger
        .commit(ReleaseProposed {
            actor: "alice (operator)".into(),
            release: proposal(&v1),
            manifest: v1.clone(),
        })
        .await
        .unwrap();
    ledger
        .commit(ReleaseApproved {
            actor: "bob (approver)".into(),
            number: proposed.number,
            by: "bob".into(),
            at_unix_ms: 7_000,
        })
        .await
        .unwrap();
    ledger.commit(halt(HaltScope::Fleet, "drill")).await.unwrap();
    ledger
        .commit(halt(HaltScope::Host("smars-02".into()), "odd"))
        .await
        .unwrap();
    ledger
        .commit(Resumed {
            actor: "alice (operator)".into(),
            scope: HaltScope::Fleet,
            by: "alice".into(),
            reason: "drill over".into(),
            at_unix_ms: 8_000,
        })
        .await
        .unwrap();
    ledger
        .commit(Revoked {
            actor: "alice (operator)".into(),
            host: "smars-03".into(),
            role: "smars".into(),
            revocation: Revocation {
                by: "alice".into(),
                at_unix_ms: 9_000,
                reason: "lost".into(),
                removed: true,
            },
        })
        .await
        .unwrap();

    let live = ledger.view();
    assert_eq!(live.hosts["smars-02"].last_seq, 2);
    assert!(live.hosts["smars-03"].last_rejection.is_some());
    assert!(
        live.hosts["smars-03"].pinned_key_hex.is_empty(),
        "removed: its key is unpinned"
    );
    assert_eq!(live.active_release("smars").map(|r| r.number), Some(1));
    assert_eq!(live.halts.values().filter(|h| h.is_active()).count(), 1);
    let rebuilt = FleetState::load(ledger.store(), &config()).unwrap();
    assert_eq!(
        rebuilt, *live,
        "the view rebuilt from the store differs from the live one"
    );
}

/// The checks that depend on state run where the change is committed:
/// a replayed seq, a spent token, a second approval, a resume of nothing
/// and an attestation of a revoked host are refused there.
#[tokio::test]
async fn changes_are_checked_against_the_state_at_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = open(dir.path());
    let v1 = entries("v1");
    let hash = format!("{:064}", 7);
    ledger
        .commit(TokenCreated {
            actor: "alice (operator)".into(),
            token: token("smars-01", &hash),
        })
        .await
        .unwrap();
    ledger.commit(enrolled("smars-01", &hash, "aa")).await.unwrap();
    let again = ledger.commit(enrolled("smars-01", &hash, "bb")).await.unwrap_err();
    assert!(again.to_string().contains("already used"), "{again}");

    ledger.commit(attested("smars-01", "aa", 5, &v1)).await.unwrap();
    let replay = ledger.commit(attested("smars-01", "aa", 5, &v1)).await.unwrap_err();
    assert!(
        replay
            .domain::<lockstep_controller::attest::verify::Rejected>()
            .is_some(),
        "{replay}"
    );
    let other_key = ledger.commit(attested("smars-01", "bb", 6, &v1)).await.unwrap_err();
    assert!(
        matches!(
            other_key.domain(),
            Some(lockstep_controller::fleet::auth::AuthError::NotPinned { .. })
        ),
        "{other_key}"
    );

    let nothing = ledger
        .commit(Resumed {
            actor: "alice (operator)".into(),
            scope: HaltScope::Fleet,
            by: "alice".into(),
            reason: String::new(),
            at_unix_ms: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            nothing.domain(),
            Some(lockstep_controller::halts::HaltError::NothingActive { .. })
        ),
        "{nothing}"
    );

    ledger
        .commit(Revoked {
            actor: "alice (operator)".into(),
            host: "smars-01".into(),
            role: "smars".into(),
            revocation: Revocation {
                by: "alice".into(),
                at_unix_ms: 10,
                reason: "lost".into(),
                removed: false,
            },
        })
        .await
        .unwrap();
    let revoked = ledger.commit(attested("smars-01", "aa", 7, &v1)).await.unwrap_err();
    assert!(
        matches!(
            revoked.domain(),
            Some(lockstep_controller::fleet::auth::AuthError::Revoked { .. })
        ),
        "{revoked}"
    );
    assert_eq!(
        ledger.view().hosts["smars-01"].last_seq,
        5,
        "nothing refused reached the view"
    );

    // The refused enrollment is in the audit log; the refused attestations
    // and resume are not (their callers record them).
    let actions: Vec<String> = ledger
        .store()
        .audit_page(1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        [
            "token.created",
            "host.enrolled",
            "enroll.refused",
            "attestation.accepted",
            "host.revoked"
        ]
    );
}

/// Two approvals of one release committed at once: one is the approval,
/// the other is refused (the two-person rule and numbering live in the
/// commit, not in a lock around a read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_of_one_release_take_effect_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(open(dir.path()));
    let v1 = entries("v1");
    let proposed = ledger
        .commit(ReleaseProposed {
            actor: "alice (operator)".into(),
            release: proposal(&v1),
            manifest: v1,
        })
        .await
        .unwrap();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                ledger
                    .commit(ReleaseApproved {
                        actor: format!("approver{i} (approver)"),
                        number: proposed.number,
                        by: format!("approver{i}"),
                        at_unix_ms: 2,
                    })
                    .await
            })
        })
        .collect();
    let mut approved = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => approved += 1,
            Err(e) => assert!(e.to_string().contains("already approved"), "{e}"),
        }
    }
    assert_eq!(approved, 1);
    let records = ledger.store().audit_page(1, usize::MAX).unwrap();
    assert_eq!(records.iter().filter(|r| r.action == "release.approved").count(), 1);
}
