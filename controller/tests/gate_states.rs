//! A `gate check` costs what changed: an unchanged role's check names the
//! gate state already written, a change writes the hosts that changed, and
//! concurrent checks of a role write its state once. The report over those
//! records names every host. Real sled, the controller library, no network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;

use lockstep_controller::audit::operator::Operator;
use lockstep_controller::controller::Controller;
use lockstep_controller::store::audit_reads;
use lockstep_evidence::action::AuditAction;
use lockstep_evidence::chain::AuditRecord;
use lockstep_evidence::facts::{GateChecked, from_facts};
use lockstep_evidence::gate_state::GateState;
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb;

#[path = "fixtures/one_role.rs"]
mod one_role;
use one_role::carol;

fn controller(dir: &Path, hosts: usize) -> std::sync::Arc<Controller> {
    one_role::controller(dir, hosts, "")
}

fn records(c: &Controller) -> Vec<AuditRecord> {
    audit_reads::pages(c.ledger.store(), 0)
        .flat_map(|p| p.unwrap())
        .collect()
}

fn bytes(records: &[AuditRecord]) -> usize {
    records.iter().map(|r| serde_json::to_vec(r).unwrap().len()).sum()
}

fn states(records: &[AuditRecord]) -> Vec<(u64, GateState)> {
    records
        .iter()
        .filter(|r| AuditAction::GateState.is(&r.action))
        .map(|r| (r.seq, from_facts(&r.facts).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_checks_of_a_2000_host_role_cost_a_few_bytes_and_a_change_what_changed() {
    let d = tempfile::tempdir().unwrap();
    let c = controller(d.path(), 2_000);
    let check = || async { c.queries.gate_check_recorded(&carol(), "smars", &[]).await.unwrap() };
    check().await;
    let first = records(&c);
    let store_before = c.ledger.store().size().unwrap().bytes;
    for _ in 0..1_000 {
        check().await;
    }
    let after = records(&c);
    let added = bytes(&after) - bytes(&first);
    assert!(
        added < 2_000 * 1_000,
        "1,000 unchanged checks added {added} bytes of records"
    );
    let grown = c.ledger.store().size().unwrap().bytes.saturating_sub(store_before);
    assert!(grown < 8 << 20, "1,000 unchanged checks grew the store {grown} bytes");
    let written = states(&after);
    assert_eq!(written.len(), 1, "one complete state, named by every check");
    assert_eq!((written[0].1.base, written[0].1.hosts.len()), (0, 2_000));

    // One host halted: the next check writes that host alone.
    let scope = pb::HaltScope {
        scope: Some(pb::halt_scope::Scope::Host("smars-0007".into())),
    };
    let alice = Operator {
        name: "alice".into(),
        role: OperatorRole::Operator,
    };
    c.halts
        .halt(
            &alice,
            pb::HaltRequest {
                scope: Some(scope),
                reason: "test".into(),
                drill: true,
            },
        )
        .await
        .unwrap();
    check().await;
    let now = records(&c);
    let written = states(&now);
    assert_eq!(written.len(), 2);
    let delta = &written[1].1;
    assert_eq!((delta.base, delta.hosts.len()), (written[0].0, 1));
    assert_eq!(delta.hosts[0].host, "smars-0007");
    assert!(
        delta.hosts[0].reasons.iter().any(|r| r.contains("halt")),
        "{:?}",
        delta.hosts[0]
    );

    // The last check's report names every host, from the states.
    let last = now
        .iter()
        .rev()
        .find(|r| AuditAction::GateChecked.is(&r.action))
        .unwrap();
    let facts: GateChecked = from_facts(&last.facts).unwrap();
    assert!(facts.hosts.is_empty() && facts.state.as_ref().unwrap().seq == written[1].0);
    let day = jiff::Timestamp::from_millisecond(last.at_unix_ms)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    let report = lockstep_evidence::report::derive(
        &now,
        &lockstep_evidence::report::Asked {
            role: "smars".into(),
            date: day.date().to_string(),
            time_zone: "UTC".into(),
            at: String::new(),
        },
    )
    .unwrap();
    assert_eq!(
        (report.total_hosts, report.open_hosts),
        (2_000, 0),
        "never-reported hosts are MISSING"
    );
    assert_eq!(report.hosts[7].host, "smars-0007");
    assert!(report.hosts[7].reasons.iter().any(|r| r.contains("halt")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_a_role_write_its_state_once() {
    let d = tempfile::tempdir().unwrap();
    let c = controller(d.path(), 200);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let c = c.clone();
        calls.spawn(async move { c.queries.gate_check_recorded(&carol(), "smars", &[]).await.unwrap() });
    }
    while let Some(answer) = calls.join_next().await {
        assert_eq!(answer.unwrap().gates.len(), 200);
    }
    let all = records(&c);
    let written = states(&all);
    assert_eq!(
        written.len(),
        1,
        "{:?}",
        written.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let checks: Vec<GateChecked> = all
        .iter()
        .filter(|r| AuditAction::GateChecked.is(&r.action))
        .map(|r| from_facts(&r.facts).unwrap())
        .collect();
    assert_eq!(checks.len(), 32);
    assert!(
        checks
            .iter()
            .all(|f| f.state.as_ref().map(|s| s.seq) == Some(written[0].0))
    );
}
