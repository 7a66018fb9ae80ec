//! Attacks and faults the spine must refuse: each leaves the gate CLOSED (or
//! the connection refused) with a clear reason. Real mTLS on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use lockstep_link::tls::TlsPaths;
use lockstep_pki::{self as pki, Subject};
use lockstep_proto::envelope::Signer;
use lockstep_proto::identity::OperatorRole;
use lockstep_proto::pb::{GateState, PinKeyRequest};
use lockstep_tests::fleet::{FleetSpec, agent_client_with, reasons_of, state_of};
use lockstep_tests::knight::Morning;
use time::OffsetDateTime;

/// A 3-host fleet with release 1 approved and every gate OPEN.
async fn open_fleet() -> Morning {
    let m = Morning::start(3).await.unwrap();
    let s = m.step1_release_everywhere().await.unwrap();
    assert_eq!(s.gate_check_exit, 0);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_signature_closes_the_gate() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-02").await.unwrap();
    let forger = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
    let mut env = forger.seal_attestation(&m.fleet.attestation("smars-02", 1_000).unwrap());
    // Claim the real key's id, so the check that fails is the signature itself.
    env.key_id = m.fleet.host_key("smars-02").unwrap().key_id().to_string();
    let err = m.fleet.agent_client("smars-02").unwrap().submit(env).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("signature does not verify"), "{}", err.message());
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-02"), GateState::Closed);
    assert!(reasons_of(&g, "smars-02")[0].contains("last attestation rejected: signature does not verify"));
    assert_eq!(state_of(&g, "smars-01"), GateState::Open, "other hosts unaffected");
    let rec = m
        .fleet
        .wait_audit("attestation.rejected", "signature does not verify")
        .await
        .unwrap();
    assert!(rec.contains("\"host\":\"smars-02\""), "{rec}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_sequence_number_is_refused_and_closes_the_gate() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-01").await.unwrap();
    let key = m.fleet.host_key("smars-01").unwrap();
    let seq = m.fleet.last_seq("smars-01").unwrap() + 1;
    let env = key.seal_attestation(&m.fleet.attestation("smars-01", seq).unwrap());
    let mut client = m.fleet.agent_client("smars-01").unwrap();
    let ok = client.submit(env.clone()).await.unwrap().into_inner();
    assert!(ok.accepted);
    assert_eq!(ok.gate.unwrap().state(), GateState::Open);
    let err = client.submit(env).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        lockstep_proto::reason::of(&err).as_deref(),
        Some(lockstep_proto::reason::REPLAY),
        "the stable reason travels in the status details"
    );
    assert!(
        err.message().contains(&format!(
            "replay: seq {seq} is not greater than the last accepted seq {seq}"
        )),
        "{}",
        err.message()
    );
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-01"), GateState::Closed);
    assert!(reasons_of(&g, "smars-01")[0].contains("replay"));
    m.fleet.wait_audit("attestation.rejected", "replay: seq").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_stream_answers_in_order_and_ends_at_a_replay() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-03").await.unwrap();
    let key = m.fleet.host_key("smars-03").unwrap();
    let seq = m.fleet.last_seq("smars-03").unwrap() + 1;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = m.fleet.agent_client("smars-03").unwrap();
    let mut replies = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for s in [seq, seq + 1] {
        tx.send(key.seal_attestation(&m.fleet.attestation("smars-03", s).unwrap()))
            .await
            .unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        assert!(reply.accepted, "seq {s}");
        assert_eq!(reply.gate.unwrap().state(), GateState::Open);
    }
    let detail = m.fleet.controller.queries.get_host("smars-03", false).unwrap();
    assert_eq!(detail.status.unwrap().last_seq, seq + 1);
    // The same seq again: the stream ends with the status Submit answers.
    tx.send(key.seal_attestation(&m.fleet.attestation("smars-03", seq + 1).unwrap()))
        .await
        .unwrap();
    let err = replies.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        lockstep_proto::reason::of(&err).as_deref(),
        Some(lockstep_proto::reason::REPLAY)
    );
    assert!(err.message().contains("replay: seq"), "{}", err.message());
    assert!(
        replies.message().await.unwrap_or(None).is_none(),
        "nothing after the refusal"
    );
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-03"), GateState::Closed);
    assert!(reasons_of(&g, "smars-03")[0].contains("replay"));
    m.fleet.wait_audit("attestation.rejected", "replay: seq").await.unwrap();
    // A new stream takes the next attestation.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = client
        .attest(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(key.seal_attestation(&m.fleet.attestation("smars-03", seq + 2).unwrap()))
        .await
        .unwrap();
    assert!(replies.message().await.unwrap().unwrap().accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_a_certificate_cannot_attest_for_host_b() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-01").await.unwrap();
    // smars-01's own key and certificate, claiming to be smars-02.
    let key = m.fleet.host_key("smars-01").unwrap();
    let mut a = m.fleet.attestation("smars-02", 10_000).unwrap();
    a.host = "smars-02".into();
    let err = m
        .fleet
        .agent_client("smars-01")
        .unwrap()
        .submit(key.seal_attestation(&a))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("certificate names host smars-01 but the attestation names smars-02"),
        "{}",
        err.message()
    );
    let g = m.fleet.gates().unwrap();
    assert_eq!(
        state_of(&g, "smars-01"),
        GateState::Closed,
        "the impostor's own gate closes"
    );
    assert_eq!(
        state_of(&g, "smars-02"),
        GateState::Open,
        "the victim keeps its own verdict"
    );
    let rec = m
        .fleet
        .wait_audit("attestation.rejected", "but the attestation names smars-02")
        .await
        .unwrap();
    assert!(
        rec.contains("\"host\":\"smars-01\""),
        "recorded against the impostor: {rec}"
    );
}

/// TLS material for `host` signed by a CA the controller does not trust, or
/// by the fleet CA with the given validity.
fn rogue_identity(
    m: &Morning,
    dir: &std::path::Path,
    other_ca: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> TlsPaths {
    let (ca_cert, ca_key) = if other_ca {
        let ca_dir = dir.join("rogue-ca");
        pki::init(&ca_dir, Duration::from_secs(3600)).unwrap();
        (ca_dir.join("ca.pem"), ca_dir.join("ca.key"))
    } else {
        m.fleet.ca_paths()
    };
    let issued = pki::issue_pem(
        &std::fs::read_to_string(ca_cert).unwrap(),
        &std::fs::read_to_string(ca_key).unwrap(),
        &Subject::Agent {
            host: "smars-01".into(),
        },
        not_before,
        not_after,
    )
    .unwrap();
    let (cert, key) = (dir.join("rogue.pem"), dir.join("rogue.key"));
    std::fs::write(&cert, issued.cert_pem).unwrap();
    pki::write_private(&key, issued.key_pem.as_bytes()).unwrap();
    TlsPaths {
        ca: m.fleet.ca_paths().0,
        cert,
        key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_or_out_of_date_are_refused_at_the_handshake() {
    let m = open_fleet().await;
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let cases = [
        ("another CA", true, now - hour, now + hour),
        ("expired", false, now - 3 * hour, now - hour),
        ("not yet valid", false, now + hour, now + 3 * hour),
    ];
    for (name, other_ca, nb, na) in cases {
        let sub = dir.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(&sub).unwrap();
        let paths = rogue_identity(&m, &sub, other_ca, nb, na);
        let mut client = agent_client_with(m.fleet.addr, &paths).unwrap();
        // Re-pinning smars-01's own key would succeed if the request reached
        // the controller's logic; any error here is the TLS layer refusing.
        let real_key = m.fleet.host_key("smars-01").unwrap().public_key().to_vec();
        let err = client
            .pin_key(PinKeyRequest { public_key: real_key })
            .await
            .unwrap_err();
        // In TLS 1.3 the client finishes its side before the server judges its
        // certificate, so the refusal arrives as a closed connection or an
        // alert: a transport failure whose code varies with timing.
        assert!(
            matches!(
                err.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
            ),
            "{name}: {err:?}"
        );
    }
    let g = m.fleet.gates().unwrap();
    assert!(
        g.gates.iter().all(|g| g.state() == GateState::Open),
        "nothing changed: {g:?}"
    );
    // Each refused handshake is in the audit log with the reason.
    // (A certificate from another CA with the same CA name fails on the
    // issuer's signature.)
    for why in ["BadSignature", "certificate expired", "certificate not valid yet"] {
        let rec = m.fleet.wait_audit("connection.refused", why).await.unwrap();
        assert!(rec.contains("peer 127.0.0.1"), "{rec}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificate_cannot_attest_and_agent_certificate_cannot_use_the_console() {
    let m = open_fleet().await;
    let alice = m.fleet.operator("alice", OperatorRole::Approver).unwrap();
    let mut as_operator = agent_client_with(m.fleet.addr, &alice).unwrap();
    let err = as_operator
        .submit(
            m.fleet
                .host_key("smars-01")
                .unwrap()
                .seal_attestation(&m.fleet.attestation("smars-01", 99_999).unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("only agent certificates may attest"),
        "{}",
        err.message()
    );

    let agent_tls = m.fleet.host("smars-01").unwrap().config.controller.tls.clone();
    let err = m.fleet.console(&agent_tls, &["hosts"]).await.unwrap_err().to_string();
    assert!(err.contains("console requests need an operator certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_person_rule_and_roles_are_enforced() {
    let m = open_fleet().await;
    let carol = m.fleet.operator("carol", OperatorRole::Approver).unwrap();
    let viewer = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    let propose = ["release", "propose", "--role", "smars", "--from-host", "smars-01"];
    let err = m.fleet.console(&viewer, &propose).await.unwrap_err().to_string();
    assert!(
        err.contains("vic has role viewer; this needs the operator role"),
        "{err}"
    );

    let (code, out) = m.fleet.console(&carol, &propose).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let err = m
        .fleet
        .console(&carol, &["release", "approve", "2"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("two-person rule: carol proposed release 2 and cannot also approve it"),
        "{err}"
    );
    // alice is an operator, not an approver.
    let err = m
        .fleet
        .console(&m.alice, &["release", "approve", "2"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("alice has role operator; this needs the approver role"),
        "{err}"
    );
    let (code, out) = m.fleet.console(&m.bob, &["release", "approve", "2"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    // Release numbers only go forward: release 1 cannot be re-approved.
    let err = m
        .fleet
        .console(&m.bob, &["release", "approve", "1"])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already approved"), "{err}");
    let (_, list) = m
        .fleet
        .console(&viewer, &["release", "list", "--role", "smars"])
        .await
        .unwrap();
    assert!(list.contains("superseded") && list.contains("active"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_host_closes_after_its_ttl() {
    let spec = FleetSpec {
        freshness_ttl: Duration::from_millis(1500),
        scan_interval: Duration::from_millis(300),
        ..FleetSpec::smars(3)
    };
    let mut m = Morning::with_spec(spec).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    m.fleet.stop_agent("smars-03").await.unwrap();
    let g = m
        .fleet
        .wait_for("smars-03 to go stale", |g| state_of(g, "smars-03") == GateState::Closed)
        .await
        .unwrap();
    let reasons = reasons_of(&g, "smars-03");
    assert!(
        reasons[0].starts_with("stale: last attestation accepted"),
        "{reasons:?}"
    );
    assert!(reasons[0].contains("freshness TTL is 1s"), "{reasons:?}");
    // The others keep reporting and stay open.
    assert_eq!(
        state_of(&g, "smars-01"),
        GateState::Open,
        "{:?}",
        reasons_of(&g, "smars-01")
    );
    let (code, out) = m
        .fleet
        .console(&m.bob, &["gate", "check", "--role", "smars"])
        .await
        .unwrap();
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("smars-03 CLOSED (stale)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_attestation_key_cannot_replace_the_pinned_one() {
    let m = open_fleet().await;
    let other = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
    let err = m
        .fleet
        .agent_client("smars-01")
        .unwrap()
        .pin_key(PinKeyRequest {
            public_key: other.public_key().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("enrolled with attestation key"),
        "{}",
        err.message()
    );
}

/// A call the authorization table refuses is refused before its handler
/// and audited exactly once (one `console.denied`, no `request.refused`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_audited_once() {
    let m = open_fleet().await;
    let viewer = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    let err = m
        .fleet
        .console(&viewer, &["halt", "--fleet", "--reason", "not mine to throw"])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("vic has role viewer; this needs the operator role"),
        "{err:#}"
    );
    let agent_tls = m.fleet.host("smars-01").unwrap().config.controller.tls.clone();
    m.fleet.console(&agent_tls, &["halts"]).await.unwrap_err();
    m.fleet
        .wait_audit("console.denied", "ListHalts: console requests need")
        .await
        .unwrap();
    // Counted refusals are written in windows: write the current one now.
    lockstep_controller::audit::refusals::flush(&m.fleet.controller.refusals, &m.fleet.controller.ledger).await;
    let records = m.fleet.audit_records().await.unwrap();
    let denied = |needle: &str| {
        records
            .iter()
            .filter(|r| r.contains("console.denied") && r.contains(needle))
            .count()
    };
    assert_eq!(denied("Halt: vic has role viewer"), 1, "{records:#?}");
    assert_eq!(denied("ListHalts: console requests need an operator certificate"), 1);
    assert!(!records.iter().any(|r| r.contains("request.refused")), "{records:#?}");
    assert!(
        m.fleet
            .gates()
            .unwrap()
            .gates
            .iter()
            .all(|g| !g.reasons.iter().any(|r| r.text.contains("halt")))
    );
}
