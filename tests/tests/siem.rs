//! The audit log in the SIEM: a real TLS syslog collector (RFC 5425,
//! octet-counted RFC 5424 messages) receives every sealed audit record in
//! order, across a collector outage and a controller restart, none lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_link::tls::TlsPaths;
use lockstep_proto::identity::OperatorRole;
use lockstep_tests::fleet::{Fleet, FleetSpec};
use tokio::io::AsyncReadExt;

/// (connection number, seq, whole message) in arrival order.
type Received = Arc<Mutex<Vec<(usize, u64, String)>>>;

/// Reads octet-counted frames from one connection.
async fn read_frames(mut conn: impl tokio::io::AsyncRead + Unpin, id: usize, got: Received) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(space) = buf.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&buf[..space]).unwrap().parse().unwrap();
            if buf.len() < space + 1 + len {
                break;
            }
            let msg = String::from_utf8(buf[space + 1..space + 1 + len].to_vec()).unwrap();
            buf.drain(..space + 1 + len);
            let seq = msg
                .split("seq=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no seq in {msg}"));
            got.lock().unwrap().push((id, seq, msg));
        }
    }
}

/// A TLS syslog collector on `listener` with the fleet's server certificate.
fn collector(
    listener: tokio::net::TcpListener,
    paths: TlsPaths,
    got: Received,
    first_id: usize,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(lockstep_link::tls::server_config(&paths).unwrap());
    tokio::spawn(async move {
        let mut id = first_id;
        let mut readers = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, got) = (acceptor.clone(), got.clone());
            id += 1;
            let this = id;
            readers.spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    read_frames(tls, this, got).await;
                }
            });
        }
    })
}

async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn halt(fleet: &Fleet, alice: &TlsPaths, reason: &str) {
    let (code, out) = fleet
        .console(alice, &["halt", "--fleet", "--reason", reason])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
}

/// The highest audit seq the controller has sealed.
async fn last_seq(fleet: &Fleet) -> u64 {
    let records = fleet.audit_records().await.unwrap();
    let last: serde_json::Value = serde_json::from_str(records.last().unwrap()).unwrap();
    last["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_audit_record_reaches_the_collector_in_order_across_an_outage_and_a_restart() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let spec = FleetSpec {
        controller_extra: format!("[siem]\nsyslog_address = \"{at}\"\nsd_id = \"lockstep@64512\"\n"),
        ..FleetSpec::smars(2)
    };
    let mut fleet = Fleet::start(spec).await.unwrap();
    let paths = TlsPaths {
        ca: fleet.pki_dir.join("ca.pem"),
        cert: fleet.pki_dir.join("controller.pem"),
        key: fleet.pki_dir.join("controller.key"),
    };
    let got: Received = Arc::default();
    let first = collector(listener, paths.clone(), got.clone(), 0);
    let alice = fleet.operator("alice", OperatorRole::Operator).unwrap();
    halt(&fleet, &alice, "before the outage").await;
    let want = last_seq(&fleet).await;
    let seen = |upto: u64| {
        let got = got.clone();
        move || (1..=upto).all(|s| got.lock().unwrap().iter().any(|(_, seq, _)| *seq == s))
    };
    wait_until("the first records", seen(want)).await;

    // The collector goes away; records made meanwhile wait in the log.
    first.abort();
    let _ = first.await;
    halt(&fleet, &alice, "during the outage").await;
    let during = last_seq(&fleet).await;
    // The outage is an incident and a metric, not silence.
    let siem_incident = |resolved: bool| {
        let c = fleet.controller.clone();
        move || {
            c.alerts
                .list()
                .iter()
                .any(|i| i.key == "siem" && i.is_resolved() == resolved)
        }
    };
    wait_until("a SIEM incident", siem_incident(false)).await;
    assert_eq!(fleet.controller.metrics.siem_connected.get(), 0);
    let listener = tokio::net::TcpListener::bind(at).await.unwrap();
    let second = collector(listener, paths.clone(), got.clone(), 100);
    wait_until("the records made during the outage", seen(during)).await;
    wait_until("the SIEM incident to resolve", siem_incident(true)).await;
    assert_eq!(fleet.controller.metrics.siem_connected.get(), 1);

    // A restarted controller resumes from its cursor.
    fleet.restart_controller().await.unwrap();
    halt(&fleet, &alice, "after the restart").await;
    let end = last_seq(&fleet).await;
    wait_until("the records after the restart", seen(end)).await;

    let got = got.lock().unwrap().clone();
    // In order on each connection, each seq once per connection; a record
    // sent twice (at most once more after a reconnect) is the same message.
    let mut by_conn: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
    for (conn, seq, _) in &got {
        by_conn.entry(*conn).or_default().push(*seq);
    }
    for (conn, seqs) in &by_conn {
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "connection {conn} not in order: {seqs:?}"
        );
    }
    for seq in 1..=end {
        let copies: Vec<&String> = got.iter().filter(|(_, s, _)| *s == seq).map(|(_, _, m)| m).collect();
        assert!(!copies.is_empty(), "record {seq} never reached the collector");
        let hash = |m: &str| {
            m.split("hash=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        assert!(
            copies.iter().all(|m| hash(m) == hash(copies[0])),
            "record {seq} changed: {copies:?}"
        );
    }
    let reasons = ["before the outage", "during the outage", "after the restart"];
    for r in reasons {
        assert!(
            got.iter()
                .any(|(_, _, m)| m.contains(r) && m.contains("[lockstep@64512 ")),
            "no {r:?}"
        );
    }
    second.abort();
    fleet.shutdown().await.unwrap();
}

/// Which stock collector a SIEM test runs.
#[derive(Clone, Copy)]
enum Stock {
    Rsyslog(lockstep_tests::collectors::rsyslog::Driver),
    SyslogNg,
}

/// A stock collector from Debian's packages, configured as they ship
/// (rsyslog gtls: TLS 1.2 at most; rsyslog ossl; syslog-ng), a private
/// instance on loopback: every record arrives with its structured data
/// parsed, across a `kill -9` of the collector during which the lag metric
/// counts what waits; a 9,000-character halt reason arrives as one message
/// cut where it says, and line breaks and tabs arrive escaped one way.
async fn a_stock_collector_gets_every_record(stock: Stock) {
    use lockstep_tests::collectors::syslog::Collector;
    use lockstep_tests::collectors::{rsyslog, syslog_ng};
    let port = lockstep_tests::ports::free_port().unwrap();
    let spec = FleetSpec {
        controller_extra: format!("[siem]\nsyslog_address = \"127.0.0.1:{port}\"\nsd_id = \"lockstep@64512\"\n"),
        ..FleetSpec::smars(1)
    };
    let fleet = Fleet::start(spec).await.unwrap();
    let paths = TlsPaths {
        ca: fleet.pki_dir.join("ca.pem"),
        cert: fleet.pki_dir.join("controller.pem"),
        key: fleet.pki_dir.join("controller.key"),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut collector = match stock {
        Stock::Rsyslog(driver) => rsyslog::start(dir.path(), port, driver, &paths, "lockstep@64512"),
        Stock::SyslogNg => syslog_ng::start(dir.path(), port, &paths, "lockstep@64512"),
    }
    .unwrap();
    let alice = fleet.operator("alice", OperatorRole::Operator).unwrap();
    halt(&fleet, &alice, "line one\nline two\tafter a tab").await;
    let first = last_seq(&fleet).await;
    fn has(collector: &Collector, upto: u64) -> bool {
        let seen: std::collections::BTreeSet<u64> = collector.received().iter().map(|(s, _)| *s).collect();
        (1..=upto).all(|s| seen.contains(&s))
    }
    wait_until("the collector to write the first records", || has(&collector, first)).await;

    // The collector killed: records made meanwhile wait, and the lag says so.
    collector.kill();
    halt(&fleet, &alice, &"x".repeat(9_000)).await;
    let during = last_seq(&fleet).await;
    let c = fleet.controller.clone();
    wait_until("the lag metric above 0 during the outage", move || {
        c.metrics.siem_lag.get() > 0 && c.metrics.siem_connected.get() == 0
    })
    .await;
    collector.restart().unwrap();
    wait_until("the collector to write the records made during the outage", || {
        has(&collector, during)
    })
    .await;
    let c = fleet.controller.clone();
    wait_until("the lag back to 0", move || c.metrics.siem_lag.get() == 0).await;

    let received = collector.received();
    let text_of = |needle: &str| {
        received
            .iter()
            .find(|(_, m)| m.contains(needle))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no message with {needle:?}: {received:?}"))
    };
    let escaped = text_of("line one");
    assert!(escaped.contains("line one\\nline two\\tafter a tab"), "{escaped}");
    let long = text_of("xxxxxxxx");
    assert!(
        long.contains("more bytes: the whole record is in `lockstep audit export`]"),
        "{long}"
    );
    assert!(long.len() < 4_096, "{}", long.len());
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_rsyslog_with_gnutls_gets_every_record() {
    a_stock_collector_gets_every_record(Stock::Rsyslog(lockstep_tests::collectors::rsyslog::Driver::Gtls)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_rsyslog_with_openssl_gets_every_record() {
    a_stock_collector_gets_every_record(Stock::Rsyslog(lockstep_tests::collectors::rsyslog::Driver::Ossl)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_syslog_ng_gets_every_record() {
    a_stock_collector_gets_every_record(Stock::SyslogNg).await;
}
