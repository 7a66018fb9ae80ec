//! Alerts and metrics, end to end: a real controller over mTLS posts to a
//! real HTTP webhook receiver; `/metrics` is read over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::time::Duration;

use lockstep_agent::state;
use lockstep_proto::envelope::Signer;
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::Attestation;
use lockstep_tests::collectors::webhook::{WebhookSink, http_get};
use lockstep_tests::fleet::FleetSpec;
use lockstep_tests::knight::Morning;
use serde_json::Value;

/// A 3-host fleet alerting to `sink`, with release 1 approved, every gate
/// OPEN, and the alerts of getting there already delivered.
async fn alerting_fleet(sink: &WebhookSink) -> (Morning, usize) {
    let spec = FleetSpec {
        controller_extra: format!(
            "[alerts]\nwebhook = \"{}\"\ngroup_wait = \"1s\"\ngroup_wait_max = \"60s\"\n",
            sink.url()
        ),
        ..FleetSpec::smars(3)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    assert_eq!(m.step1_release_everywhere().await.unwrap().gate_check_exit, 0);
    let before = sink.settle(Duration::from_millis(2500)).await;
    (m, before)
}

fn with_key<'a>(alerts: &'a [Value], key: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["key"] == key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_identical_rejections_are_one_alert_with_their_count() {
    let sink = WebhookSink::start().await.unwrap();
    let (mut m, before) = alerting_fleet(&sink).await;
    // The first delivery is refused: the alert must still arrive, once.
    sink.refuse("rejected:smars", 1);
    m.fleet.stop_agent("smars-02").await.unwrap();
    let real = state::attestation_key(&m.fleet.host("smars-02").unwrap().config.state_dir).unwrap();
    let forger = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
    let mut client = m.fleet.agent_client("smars-02").unwrap();
    for seq in 0..1000u64 {
        let mut env = forger.seal_attestation(&Attestation {
            host: "smars-02".into(),
            role: "smars".into(),
            seq: 1_000_000 + seq,
            measured_at_unix_ms: lockstep_proto::now_unix_ms(),
            digest: vec![0; 32],
            ..Default::default()
        });
        env.key_id = real.key_id().to_string();
        let err = client.submit(env).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    sink.wait_for(before, Duration::from_secs(30), |a| {
        !with_key(a, "rejected:smars").is_empty()
    })
    .await
    .unwrap();
    // Long enough for any second alert (grouping wait 1s, retry backoff).
    sink.settle(Duration::from_secs(3)).await;
    let new: Vec<Value> = sink.received().into_iter().skip(before).collect();
    let rejected = with_key(&new, "rejected:smars");
    assert_eq!(rejected.len(), 1, "one alert, not a storm: {new:#?}");
    assert_eq!(new.len(), 1, "nothing else happened: {new:#?}");
    let a = rejected[0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["count"], 1000, "{a:#}");
    assert_eq!(a["hosts"], serde_json::json!(["smars-02"]));
    assert_eq!(a["title"], "attestations rejected on 1 of 3 smars hosts");
    let text = a["text"].as_str().unwrap();
    for needle in [
        "smars-02",
        "signature does not verify",
        "lockstep audit --host smars-02",
        "lockstep alerts ack",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert_eq!(sink.refused(), 1, "the first delivery was refused and retried");

    // The console lists it until someone with the operator role acknowledges it.
    let viewer = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    let (code, out) = m.fleet.console(&viewer, &["alerts"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("attestations rejected on 1 of 3 smars hosts") && out.contains("1000"),
        "{out}"
    );
    let id = a["incident"].as_u64().unwrap().to_string();
    let denied = m.fleet.console(&viewer, &["alerts", "ack", &id]).await.unwrap_err();
    assert!(denied.to_string().contains("needs the operator role"), "{denied}");
    let op = m.fleet.operator("olga", OperatorRole::Operator).unwrap();
    let (code, out) = m.fleet.console(&op, &["alerts", "ack", &id]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stays listed until every host recovers"), "{out}");
    let (_, audit) = m.fleet.console(&viewer, &["audit"]).await.unwrap();
    assert!(audit.contains("incident.acknowledged"), "{audit}");
    assert!(audit.contains("console.denied"), "{audit}");
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_flip_is_exactly_one_alert_and_its_recovery_one_more() {
    let sink = WebhookSink::start().await.unwrap();
    let (m, before) = alerting_fleet(&sink).await;
    let host = vec!["smars-03".to_string()];
    m.install_new(&host).unwrap();
    m.fleet.settle(&host).await.unwrap();
    sink.wait_for(before, Duration::from_secs(15), |a| !a.is_empty())
        .await
        .unwrap();
    sink.settle(Duration::from_secs(3)).await;
    let new: Vec<Value> = sink.received().into_iter().skip(before).collect();
    assert_eq!(new.len(), 1, "exactly one alert: {new:#?}");
    let a = &new[0];
    assert_eq!(a["status"], "firing");
    assert_eq!(a["key"], "drift:smars:release-1");
    assert_eq!(a["title"], "release 1 missing on 1 of 3 smars hosts");
    assert_eq!(a["see"], "lockstep diff smars-03 --release");
    assert!(a["detail"].as_str().unwrap().starts_with("smars-03: drift:"), "{a:#}");

    // Back to the release: one resolution, and the incident waits for an ack.
    m.install_old(&host).unwrap();
    m.fleet.settle(&host).await.unwrap();
    let more = sink
        .wait_for(before + 1, Duration::from_secs(15), |a| !a.is_empty())
        .await
        .unwrap();
    sink.settle(Duration::from_secs(3)).await;
    let all: Vec<Value> = sink.received().into_iter().skip(before).collect();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(more[0]["status"], "resolved");
    assert_eq!(more[0]["incident"], a["incident"]);
    // Each notification is also an audit record (what the SIEM forwards),
    // carrying the same words the webhook sent.
    for (status, sent) in [("firing", a), ("resolved", &more[0])] {
        let record = m
            .fleet
            .wait_audit(&format!("incident.{status}"), "release 1 missing on 1 of 3 smars hosts")
            .await
            .unwrap();
        let record: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(record["detail"], sent["text"], "{record:#}");
        let facts: Value = serde_json::from_str(record["facts"].as_str().unwrap()).unwrap();
        assert_eq!(facts["id"], a["incident"]);
    }
    let op = m.fleet.operator("olga", OperatorRole::Operator).unwrap();
    let (_, out) = m.fleet.console(&op, &["alerts"]).await.unwrap();
    assert!(out.contains("RESOLVED, unacknowledged"), "{out}");
    let id = a["incident"].as_u64().unwrap().to_string();
    let (code, out) = m.fleet.console(&op, &["alerts", "ack", &id]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let (_, out) = m.fleet.console(&op, &["alerts"]).await.unwrap();
    assert!(
        !out.contains("release 1 missing"),
        "closed once resolved and acknowledged: {out}"
    );
    m.fleet.shutdown().await.unwrap();
}

/// Parses the Prometheus text exposition strictly enough to catch a broken
/// page: every sample is `name{labels} value`, every family is declared.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut declared = Vec::new();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line:?}"
            );
        }
        assert!(
            declared.iter().any(|d| name.starts_with(d.as_str())),
            "sample of an undeclared family: {line:?}"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_what_happens() {
    let m = Morning::start(3).await.unwrap();
    assert_eq!(m.step1_release_everywhere().await.unwrap().gate_check_exit, 0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The controller's /metrics as the daemon serves it (its sidecars).
    let controller = m.fleet.controller.clone();
    let render: lockstep_daemon::metrics_endpoint::Render = std::sync::Arc::new(move || controller.metrics_text());
    let sidecars = lockstep_daemon::service::Sidecars::start(Some((listener, render)), "test");

    let (status, content_type, body) = http_get(addr, "/metrics").await.unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let first = parse_metrics(&body);
    assert_eq!(first[r#"lockstep_hosts{role="smars",state="open"}"#], 3.0, "{body}");
    assert_eq!(first[r#"lockstep_hosts{role="smars",state="closed"}"#], 0.0);
    let accepted = r#"lockstep_attestations_total{result="accepted",reason=""}"#;
    assert!(first[accepted] >= 3.0, "{body}");
    assert!(first["lockstep_verify_seconds_count"] >= 3.0);
    assert!(first["lockstep_store_seconds_count"] >= 3.0);
    assert_eq!(first["lockstep_connected_agents"], 3.0, "{body}");
    assert_eq!(first["lockstep_store_quota_bytes"], 0.0, "sled has no quota");
    // The store's size is read every 30 s (a fresh sled store may read 0
    // before its first segment is written).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    loop {
        let (_, _, body) = http_get(addr, "/metrics").await.unwrap();
        if parse_metrics(&body)["lockstep_store_bytes"] > 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store's size is not watched: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(first[r#"lockstep_last_attestation_age_seconds{host="smars-01",role="smars"}"#] < 30.0);

    // A drifted host and a forged attestation move their series.
    let host = vec!["smars-03".to_string()];
    m.install_new(&host).unwrap();
    m.fleet.settle(&host).await.unwrap();
    let forger = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
    let env = forger.seal_attestation(&Attestation {
        host: "smars-01".into(),
        role: "smars".into(),
        seq: 9_999_999,
        measured_at_unix_ms: lockstep_proto::now_unix_ms(),
        digest: vec![0; 32],
        ..Default::default()
    });
    m.fleet.agent_client("smars-01").unwrap().submit(env).await.unwrap_err();
    let (_, _, body) = http_get(addr, "/metrics").await.unwrap();
    let later = parse_metrics(&body);
    assert_eq!(
        later[r#"lockstep_attestations_total{result="rejected",reason="signature"}"#], 1.0,
        "{body}"
    );
    assert!(later[accepted] > first[accepted], "accepted counter moved");
    assert!(later[r#"lockstep_hosts{role="smars",state="closed"}"#] >= 1.0, "{body}");

    // The agent's own metrics, served the way `lockstep-agent run` serves them.
    let agent_metrics = m.fleet.host("smars-03").unwrap().metrics.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = listener.local_addr().unwrap();
    let render: lockstep_daemon::metrics_endpoint::Render = std::sync::Arc::new(move || agent_metrics.render());
    tokio::spawn(lockstep_daemon::metrics_endpoint::serve(
        listener,
        render,
        std::future::pending(),
    ));
    let (_, _, body) = http_get(agent_addr, "/metrics").await.unwrap();
    let agent = parse_metrics(&body);
    assert!(agent["lockstep_agent_scan_seconds_count"] >= 2.0, "{body}");
    assert!(agent["lockstep_agent_files_measured"] >= 1.0, "{body}");
    assert!(
        agent[r#"lockstep_agent_reports_total{result="accepted"}"#] >= 2.0,
        "{body}"
    );
    let last = agent["lockstep_agent_last_successful_report_timestamp_seconds"];
    #[allow(clippy::cast_precision_loss)]
    let now = lockstep_proto::now_unix_ms() as f64 / 1000.0;
    assert!(now - last < 30.0 && last > 0.0, "last report {last}, now {now}");
    sidecars.stop().await;
    m.fleet.shutdown().await.unwrap();
}
