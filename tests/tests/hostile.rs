//! Hostile input to the controller (issue 8, part 3): each is refused with a
//! clear status and leaves an audit record, none opens a gate, and the
//! controller keeps serving everyone else. Real mTLS on 127.0.0.1; the
//! signature, host, replay and certificate cases that the spine already
//! refused are in `refusals.rs` (which also checks their audit records).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use lockstep_link::tls::{self, TlsPaths};
use lockstep_proto::pb::{self, GateState};
use lockstep_tests::fleet::{Fleet, FleetSpec, agent_client_with, reasons_of, state_of};
use lockstep_tests::knight::Morning;

/// A 3-host fleet with small limits (64 KiB messages, 50 entries), release 1
/// approved and every gate OPEN.
async fn open_fleet() -> Morning {
    let mut spec = FleetSpec::smars(3);
    spec.controller_extra = "[limits]\nmax_message_bytes = 65536\nmax_entries = 50\n".into();
    let m = Morning::with_spec(spec).await.unwrap();
    let s = m.step1_release_everywhere().await.unwrap();
    assert_eq!(s.gate_check_exit, 0, "{:?}", s.transcript);
    m
}

fn channel_as(fleet: &Fleet, paths: &TlsPaths) -> lockstep_link::failover::FailoverChannel {
    let config = tls::client_config(paths).unwrap();
    lockstep_link::failover::channel(&fleet.addr.to_string(), "127.0.0.1", config, Duration::from_secs(5)).unwrap()
}

/// Sends `msg` to the Submit method as if it were an envelope: the bytes on
/// the wire are whatever `M` encodes to.
async fn submit_raw<M: prost::Message + Default + Send + Sync + 'static>(
    channel: lockstep_link::failover::FailoverChannel,
    msg: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/lockstep.v1.AgentService/Submit");
    let codec = tonic_prost::ProstCodec::<M, pb::SubmitReply>::default();
    grpc.unary(tonic::Request::new(msg), path, codec).await.unwrap_err()
}

/// Sends `msg` on an Attest stream as if it were an envelope; the status
/// that ends the stream.
async fn attest_raw<M: prost::Message + Default + Send + Sync + 'static>(
    channel: lockstep_link::failover::FailoverChannel,
    msg: M,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/lockstep.v1.AgentService/Attest");
    let codec = tonic_prost::ProstCodec::<M, pb::SubmitReply>::default();
    let request = tonic::Request::new(tokio_stream::iter(vec![msg]));
    match grpc.streaming(request, path, codec).await {
        Ok(replies) => replies.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversize_messages_end_the_attestation_stream_audited() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-02").await.unwrap();
    let paths = m.fleet.host("smars-02").unwrap().config.controller.tls.clone();

    let err = attest_raw(channel_as(&m.fleet, &paths), pb::ApproveReleaseRequest { number: 5 }).await;
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(err.message().contains("failed to decode"), "{}", err.message());
    let huge = pb::Envelope {
        payload: vec![0x5a; 256 * 1024],
        ..Default::default()
    };
    let err = attest_raw(channel_as(&m.fleet, &paths), huge).await;
    assert!(
        matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("too large"), "{}", err.message());

    // Stream errors travel in trailers: the stream's handler counts them.
    let decode = m.fleet.wait_audit("request.refused", "failed to decode").await.unwrap();
    assert!(decode.contains("\"host\":\"smars-02\""), "{decode}");
    assert!(decode.contains("AgentService/Attest"), "{decode}");
    let large = m.fleet.wait_audit("request.refused", "too large").await.unwrap();
    assert!(large.contains("AgentService/Attest"), "{large}");
    // Nothing was accepted: the host's last attestation is the agent's.
    let status = m
        .fleet
        .controller
        .queries
        .get_host("smars-02", false)
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.last_seq, m.fleet.last_seq("smars-02").unwrap());
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversize_requests_are_refused_audited_and_open_nothing() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-01").await.unwrap();
    let paths = m.fleet.host("smars-01").unwrap().config.controller.tls.clone();
    let before = m.fleet.gates().unwrap();

    // Not an Envelope: field 1 is a varint where the envelope has bytes.
    let err = submit_raw(channel_as(&m.fleet, &paths), pb::ApproveReleaseRequest { number: 5 }).await;
    assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");
    assert!(err.message().contains("failed to decode"), "{}", err.message());

    // Over the message limit: refused before it is decoded.
    let huge = pb::Envelope {
        payload: vec![0x5a; 256 * 1024],
        ..Default::default()
    };
    let err = submit_raw(channel_as(&m.fleet, &paths), huge).await;
    assert!(
        matches!(err.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("too large"), "{}", err.message());

    // A well-formed envelope whose payload is garbage, signed by the real key.
    let key = m.fleet.host_key("smars-01").unwrap();
    let garbage = key.seal(b"\xff\xff\xff not protobuf".to_vec());
    let err = m
        .fleet
        .agent_client("smars-01")
        .unwrap()
        .submit(garbage)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // The audit log names each, with the host whose certificate sent it.
    let decode = m.fleet.wait_audit("request.refused", "failed to decode").await.unwrap();
    assert!(decode.contains("\"host\":\"smars-01\""), "{decode}");
    assert!(decode.contains("AgentService/Submit"), "{decode}");
    m.fleet.wait_audit("request.refused", "too large").await.unwrap();
    m.fleet.wait_audit("attestation.rejected", "smars-01").await.unwrap();

    // Nothing was accepted from any of it; the other hosts are untouched.
    let after = m.fleet.gates().unwrap();
    assert_ne!(
        state_of(&after, "smars-01"),
        GateState::Open,
        "a malformed payload left the gate open"
    );
    for h in ["smars-02", "smars-03"] {
        assert_eq!(state_of(&after, h), state_of(&before, h), "{h}");
    }
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_entries_and_a_future_timestamp_are_rejected_and_audited() {
    let mut m = open_fleet().await;
    m.fleet.stop_agent("smars-02").await.unwrap();
    let key = m.fleet.host_key("smars-02").unwrap();
    let mut client = m.fleet.agent_client("smars-02").unwrap();

    let mut a = m
        .fleet
        .attestation("smars-02", m.fleet.last_seq("smars-02").unwrap() + 1)
        .unwrap();
    let template = a.entries[0].clone();
    a.entries = (0..51)
        .map(|i| pb::Entry {
            path: format!("/opt/smars/extra-{i:03}").into_bytes(),
            ..template.clone()
        })
        .collect();
    a.digest = lockstep_proto::digest::digest(&a.entries).to_vec();
    let err = client.submit(key.seal_attestation(&a)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("51 entries"), "{}", err.message());
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-02"), GateState::Closed);
    m.fleet.wait_audit("attestation.rejected", "51 entries").await.unwrap();

    let mut a = m
        .fleet
        .attestation("smars-02", m.fleet.last_seq("smars-02").unwrap() + 2)
        .unwrap();
    a.measured_at_unix_ms += 3_600_000; // an hour ahead; skew allowed is 30 s
    let err = client.submit(key.seal_attestation(&a)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("clock"), "{}", err.message());
    let g = m.fleet.gates().unwrap();
    assert_eq!(state_of(&g, "smars-02"), GateState::Closed);
    assert!(
        reasons_of(&g, "smars-02")[0].contains("clock"),
        "{:?}",
        reasons_of(&g, "smars-02")
    );
    m.fleet.wait_audit("attestation.rejected", "clock").await.unwrap();
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_and_a_revoked_host_are_refused_and_audited() {
    let mut m = open_fleet().await;
    // No client certificate: the TLS layer lets it through for enrollment,
    // every lockstep call says why it is refused.
    let ca = m.fleet.ca_paths().0;
    let config = tls::enroll_client_config(&ca).unwrap();
    let channel =
        lockstep_link::failover::channel(&m.fleet.addr.to_string(), "127.0.0.1", config, Duration::from_secs(5))
            .unwrap();
    let mut anonymous = pb::agent_service_client::AgentServiceClient::new(channel);
    let err = anonymous.submit(pb::Envelope::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("client certificate"), "{}", err.message());
    let rec = m.fleet.wait_audit("request.refused", "Unauthenticated").await.unwrap();
    assert!(rec.contains("no lockstep identity"), "{rec}");

    // A revoked host: its certificate is CA-valid, its calls are refused.
    m.fleet.stop_agent("smars-03").await.unwrap();
    let (code, out) = m
        .fleet
        .console(&m.alice, &["host", "revoke", "smars-03", "--reason", "decommissioned"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    let key = m.fleet.host_key("smars-03").unwrap();
    let a = m
        .fleet
        .attestation("smars-03", m.fleet.last_seq("smars-03").unwrap() + 1)
        .unwrap();
    let err = m
        .fleet
        .agent_client("smars-03")
        .unwrap()
        .submit(key.seal_attestation(&a))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{}", err.message());
    let rec = m.fleet.wait_audit("request.refused", "revoked").await.unwrap();
    assert!(rec.contains("\"host\":\"smars-03\""), "{rec}");
    assert_eq!(state_of(&m.fleet.gates().unwrap(), "smars-03"), GateState::Closed);
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_does_not_lock_out_the_fleet() {
    let mut m = open_fleet().await;
    // 400 connections from another address that never start TLS: more than
    // the per-address handshake limit.
    let mut silent = Vec::new();
    for _ in 0..400 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(m.fleet.addr).await.unwrap());
    }
    // A real host still gets its attestation through, well inside the
    // time the silent handshakes hold their slots (5 s).
    m.fleet.stop_agent("smars-01").await.unwrap();
    let key = m.fleet.host_key("smars-01").unwrap();
    let a = m
        .fleet
        .attestation("smars-01", m.fleet.last_seq("smars-01").unwrap() + 1)
        .unwrap();
    let mut client = m.fleet.agent_client("smars-01").unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(3), client.submit(key.seal_attestation(&a)))
        .await
        .expect("a flood from another address held up a real host")
        .unwrap()
        .into_inner();
    assert!(reply.accepted);
    assert_eq!(reply.gate.unwrap().state(), GateState::Open);
    // The flood is in the audit log as counted records, not one per socket.
    let rec = m
        .fleet
        .wait_audit("connection.refused", "handshakes in flight from this address")
        .await
        .unwrap();
    assert!(rec.contains("peer 127.0.0.2"), "{rec}");
    let timed_out = m
        .fleet
        .wait_audit("connection.refused", "not finished within")
        .await
        .unwrap();
    assert!(
        timed_out.contains("times in"),
        "counted, not one record each: {timed_out}"
    );
    let records = m.fleet.audit_records().await.unwrap();
    let flood_records = records.iter().filter(|r| r.contains("127.0.0.2")).count();
    assert!(flood_records < 20, "{flood_records} audit records for one flood");
    drop(silent);
    m.fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_stream_does_not_stall_the_others() {
    let m = open_fleet().await;
    // smars-03's certificate opens its directive stream and never reads it.
    let paths = m.fleet.host("smars-03").unwrap().config.controller.tls.clone();
    let mut stuck = agent_client_with(m.fleet.addr, &paths).unwrap();
    let unread = stuck.directives(pb::DirectivesRequest::default()).await.unwrap();
    // Forty gate changes for everyone: far more than the stream buffers.
    for i in 0..20 {
        let reason = format!("drill {i}");
        let (code, out) = m
            .fleet
            .console(&m.alice, &["halt", "--fleet", "--reason", &reason])
            .await
            .unwrap();
        assert_eq!(code, 0, "{out}");
        let (code, out) = m
            .fleet
            .console(&m.alice, &["resume", "--fleet", "--reason", &reason])
            .await
            .unwrap();
        assert_eq!(code, 0, "{out}");
    }
    // The hosts that read their streams followed every change and are OPEN.
    let hosts = ["smars-01".to_string(), "smars-02".to_string()];
    m.fleet
        .wait_local(&hosts, 0, "gates open after the drill")
        .await
        .unwrap();
    let g = m.fleet.gates().unwrap();
    assert!(g.gates.iter().all(|g| g.state() == GateState::Open), "{g:?}");
    drop(unread);
    m.fleet.shutdown().await.unwrap();
}
