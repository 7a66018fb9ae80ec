//! Editing one audit record in the store offline is caught: `audit verify`
//! names that record. Real sled, real controller library, no network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::sync::Arc;

use lockstep_controller::config::ControllerConfig;
use lockstep_controller::controller::Controller;
use lockstep_controller::store::Store;
use lockstep_controller::store::sled::SledStore;
use lockstep_evidence::chain::AuditEvent;

fn config(dir: &Path) -> ControllerConfig {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[tls]\nca = \"x\"\ncert = \"x\"\nkey = \"x\"\n[alerts]\ngroup_wait = \"100ms\"\n[[role]]\nname = \"smars\"\nhosts = [\"smars-01\"]\n",
        dir.display()
    );
    ControllerConfig::parse(&text, Path::new("controller.toml")).unwrap()
}

#[tokio::test]
async fn an_audit_record_edited_offline_is_named_by_verify() {
    let d = tempfile::tempdir().unwrap();
    let store_path = d.path().join("store");
    {
        let store = Arc::new(SledStore::open(&store_path).unwrap());
        let c = Controller::new(config(d.path()), store).unwrap();
        for i in 1..=5 {
            c.ledger
                .record(vec![AuditEvent::new(
                    "alice (operator)",
                    lockstep_evidence::action::AuditAction::Halt,
                    format!("event {i}"),
                )])
                .await
                .unwrap();
        }
        let ok = c.queries.verify_audit().unwrap();
        assert!(ok.ok && ok.records == 5, "{ok:?}");
    }
    // Offline: someone rewrites what record 3 says.
    {
        let store = SledStore::open(&store_path).unwrap();
        let mut r = store.audit_page(3, usize::MAX).unwrap().remove(0);
        r.detail = "nothing happened".into();
        store.put_audit(&r).unwrap();
        store.flush().unwrap();
    }
    let store = Arc::new(SledStore::open(&store_path).unwrap());
    let c = Arc::new(Controller::new(config(d.path()), store).unwrap());
    // The controller checks its own chain when it starts: an incident, without anyone asking.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let alerts = tokio::spawn(c.alerts.clone().run(c.metrics.alerts.clone(), async {
        let _ = stopped.await;
    }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let incident = loop {
        let list = c.alerts.list();
        if let Some(i) = list.into_iter().find(|i| i.key == "audit") {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "no audit incident");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        incident.title().contains("audit record 3 is broken"),
        "{}",
        incident.title()
    );
    assert_eq!(incident.see(), "lockstep audit verify");
    let _ = stop.send(());
    alerts.await.unwrap();
    let broken = c.queries.verify_audit().unwrap();
    assert!(!broken.ok);
    assert_eq!(broken.first_broken_seq, 3);
    assert!(broken.problem.contains("edited"), "{}", broken.problem);
    // New records still chain on (from the stored head), and the break stays visible.
    c.ledger
        .record(vec![AuditEvent::new(
            "controller",
            lockstep_evidence::action::AuditAction::GateChanged,
            "",
        )])
        .await
        .unwrap();
    assert_eq!(c.queries.verify_audit().unwrap().first_broken_seq, 3);
}
