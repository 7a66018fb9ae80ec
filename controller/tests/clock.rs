//! The controller reads one injectable clock: with tokio's time paused, a
//! test moves it past a freshness TTL or a token's expiry instead of
//! waiting, and the gate and the enrollment follow it. Real sled, the
//! controller library, no network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lockstep_controller::attest::change::Attested;
use lockstep_controller::config::ControllerConfig;
use lockstep_controller::controller::Controller;
use lockstep_controller::enrollment::change::{Enrolled, TokenCreated};
use lockstep_controller::releases::change::{ReleaseApproved, ReleaseProposed};
use lockstep_controller::store::sled::SledStore;
use lockstep_controller::store::{ReleaseRecord, TokenRecord};
use lockstep_daemon::clock::TokioClock;
use lockstep_proto::pb::{Entry, GateState};

/// One role in consensus-free release mode, a 30 s freshness TTL.
fn controller(dir: &Path) -> Controller {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nfreshness_ttl = \"30s\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[[role]]\nname = \"smars\"\nhosts = [\"smars-01\", \"smars-02\"]\n",
        dir.display()
    );
    let config = ControllerConfig::parse(&text, Path::new("controller.toml")).unwrap();
    let store = Arc::new(SledStore::open(&dir.join("store")).unwrap());
    Controller::with_clock(config, store, TokioClock::now().shared()).unwrap()
}

fn manifest() -> Arc<Vec<Entry>> {
    let entry = Entry {
        path: b"/opt/smars/bin/smars".to_vec(),
        sha256: vec![7; 32],
        ..Entry::default()
    };
    Arc::new(lockstep_proto::digest::canonicalize(vec![entry]).unwrap())
}

fn token(c: &Controller, host: &str, hash: &str, ttl: Duration) -> TokenCreated {
    let now = c.ledger.now_unix_ms();
    TokenCreated {
        actor: "alice (operator)".into(),
        token: TokenRecord {
            allow_new_tpm: false,
            hash_hex: hash.into(),
            host: host.into(),
            role: "smars".into(),
            created_by: "alice (operator)".into(),
            created_at_unix_ms: now,
            expires_at_unix_ms: now + i64::try_from(ttl.as_millis()).unwrap(),
            used_at_unix_ms: 0,
        },
    }
}

fn enrolled(host: &str, hash: &str) -> Enrolled {
    Enrolled {
        tpm: None,
        host: host.into(),
        token_hash: hash.into(),
        pinned_key_hex: "aa".into(),
        detail: "test".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_host_goes_stale_when_the_clock_passes_its_ttl() {
    let d = tempfile::tempdir().unwrap();
    let c = controller(d.path());
    let entries = manifest();
    let digest_hex = hex::encode(lockstep_proto::digest::digest(&entries));
    c.ledger
        .commit(token(&c, "smars-01", "01", Duration::from_secs(3600)))
        .await
        .unwrap();
    c.ledger.commit(enrolled("smars-01", "01")).await.unwrap();
    let now = c.ledger.now_unix_ms();
    c.ledger
        .commit(Attested {
            session_key_hex: String::new(),
            actor: "agent smars-01".into(),
            host: "smars-01".into(),
            role: "smars".into(),
            pinned_key_hex: "aa".into(),
            seq: 1,
            digest_hex: digest_hex.clone(),
            measured_at_unix_ms: now,
            accepted_at_unix_ms: now,
            boot_id: "boot".into(),
            agent_version: "test".into(),
            full: true,
            manifest: Some(entries.clone()),
        })
        .await
        .unwrap();
    let proposed = c
        .ledger
        .commit(ReleaseProposed {
            actor: "alice (operator)".into(),
            release: ReleaseRecord {
                boot_pcrs: Default::default(),
                boot_from_host: String::new(),
                number: 0,
                role: "smars".into(),
                digest_hex,
                entry_count: 1,
                source: "host smars-01".into(),
                note: String::new(),
                proposed_by: "alice".into(),
                proposed_at_unix_ms: now,
                approved_by: None,
                approved_at_unix_ms: 0,
            },
            manifest: entries,
        })
        .await
        .unwrap();
    c.ledger
        .commit(ReleaseApproved {
            actor: "bob (approver)".into(),
            number: proposed.number,
            by: "bob".into(),
            at_unix_ms: now,
        })
        .await
        .unwrap();
    let gate = c.board.current("smars-01").unwrap();
    assert_eq!(gate.state(), GateState::Open, "{:?}", gate.reasons);
    assert_eq!(
        gate.lease_expires_unix_ms,
        now + 30_000,
        "the lease is the TTL from acceptance"
    );

    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(
        c.board.current("smars-01").unwrap().state(),
        GateState::Open,
        "inside the TTL"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let gate = c.board.current("smars-01").unwrap();
    assert_eq!(gate.state(), GateState::Closed);
    assert!(
        gate.reasons
            .iter()
            .any(|r| r.text.starts_with("stale: last attestation accepted 31s ago")),
        "{:?}",
        gate.reasons
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_expires_when_the_clock_passes_its_ttl() {
    let d = tempfile::tempdir().unwrap();
    let c = controller(d.path());
    c.ledger
        .commit(token(&c, "smars-01", "01", Duration::from_secs(600)))
        .await
        .unwrap();
    c.ledger
        .commit(token(&c, "smars-02", "02", Duration::from_secs(600)))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(599)).await;
    c.ledger.commit(enrolled("smars-01", "01")).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    let late = c.ledger.commit(enrolled("smars-02", "02")).await.unwrap_err();
    assert!(late.to_string().contains("join token expired at"), "{late}");
    // The audit records carry the controller's clock, not the system's.
    let records = c.ledger.store().audit_page(1, usize::MAX).unwrap();
    let first = records.first().unwrap().at_unix_ms;
    let last = records.last().unwrap().at_unix_ms;
    assert_eq!(last - first, 601_000, "{records:?}");
}

/// A board login link opens within its life and not after it; a session
/// ends when its own life does.
#[tokio::test(start_paused = true)]
async fn a_board_login_link_and_session_expire_on_the_clock() {
    use lockstep_controller::audit::operator::Operator;
    use lockstep_controller::logins::LoginRefused;
    use lockstep_proto::identity::OperatorRole;
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[[role]]\nname = \"smars\"\nhosts = [\"smars-01\"]\n[board]\nlisten = \"127.0.0.1:0\"\nurl = \"https://board.example:7444\"\nlogin_ttl = \"2m\"\nsession_ttl = \"1h\"\n",
        d.path().display()
    );
    let config = ControllerConfig::parse(&text, Path::new("controller.toml")).unwrap();
    let store = Arc::new(SledStore::open(&d.path().join("store")).unwrap());
    let c = Controller::with_clock(config, store, TokioClock::now().shared()).unwrap();
    let alice = Operator {
        name: "alice".into(),
        role: OperatorRole::Operator,
    };
    let token_of = |url: &str| url.rsplit('/').next().unwrap().to_string();

    let (first, _) = c.board_sessions.issue_link(&alice).await.unwrap();
    assert!(first.starts_with("https://board.example:7444/login/"), "{first}");
    let (late, expires) = c.board_sessions.issue_link(&alice).await.unwrap();
    assert_eq!(expires - c.ledger.now_unix_ms(), 120_000);
    tokio::time::advance(Duration::from_secs(119)).await;
    let (cookie, session) = c.board_sessions.redeem(&token_of(&first)).await.unwrap();
    assert_eq!(session.operator, alice);
    assert_eq!(
        c.board_sessions.redeem(&token_of(&first)).await.unwrap_err(),
        LoginRefused::Used
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        c.board_sessions.redeem(&token_of(&late)).await.unwrap_err(),
        LoginRefused::Expired
    );
    assert_eq!(
        c.board_sessions.redeem("nonsense").await.unwrap_err(),
        LoginRefused::Unknown
    );

    assert!(c.board_sessions.session(&cookie).await.is_some());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        c.board_sessions.session(&cookie).await.is_none(),
        "a session outlived its ttl"
    );
    let records = c.ledger.store().audit_page(1, usize::MAX).unwrap();
    let refused: Vec<&str> = records
        .iter()
        .filter(|r| r.action == "board.login_refused")
        .map(|r| r.detail.as_str())
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[1].contains("expired"), "{refused:?}");
}
