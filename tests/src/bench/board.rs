//! The web board, measured: a gate change reaching a real Chromium's open
//! page, the first render of a 10,000-host board, and 50 boards following
//! one fleet. The page stamps `data-applied` (its own clock) when it has
//! fetched and shown a change; this machine's clocks are one clock.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::bench::Latencies;
use crate::browser::{self, Browser};
use crate::fleet::FleetSpec;
use crate::knight::{BIN, Morning};

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

fn ms(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n.max(0)).unwrap_or(0))
}

pub struct ChangeToPage {
    /// File written on the host → the page showing the new gate.
    pub write_to_page: Latencies,
    /// The controller's `gate.changed` record → the page showing it.
    pub decision_to_page: Latencies,
}

/// A board logged in as alice in Chromium, for a fleet started with a board.
async fn logged_in(m: &Morning, chromium: &std::path::Path) -> anyhow::Result<Browser> {
    let (code, out) = m.fleet.console(&m.alice, &["board", "login"]).await?;
    anyhow::ensure!(code == 0, "board login: {out}");
    let link = out.lines().next().unwrap_or_default().trim().to_string();
    let b = Browser::start(chromium, 1400, 1000).await?;
    b.open_login(&link).await?;
    b.wait_until(
        "a live board",
        "return document.getElementById('feed').innerText.includes('LIVE')",
    )
    .await?;
    Ok(b)
}

/// `changes` gate flips of one host (drift, then back), each timed from the
/// write and from the controller's decision to the page showing it.
pub async fn change_to_page(hosts: usize, changes: usize) -> anyhow::Result<ChangeToPage> {
    let chromium = browser::chromium()?.ok_or_else(|| anyhow::anyhow!("no {}", browser::CHROMIUM))?;
    let spec = FleetSpec {
        board: true,
        scan_interval: Duration::from_secs(300),
        freshness_ttl: Duration::from_secs(600),
        ..FleetSpec::smars(hosts)
    };
    let m = Morning::with_spec(spec).await?;
    m.step1_release_everywhere().await?;
    let b = logged_in(&m, &chromium).await?;
    let host = m.all()[0].clone();
    let one = vec![host.clone()];
    let (mut from_write, mut from_decision) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let want = if i % 2 == 0 { "CLOSED" } else { "OPEN" };
        let before = *m.fleet.controller.ledger.sealed().borrow();
        let written = now_ms();
        if i % 2 == 0 {
            m.fleet.write(&one, BIN, format!("tampered {i}\n").as_bytes())?;
        } else {
            m.install_old(&one)?;
        }
        let js = format!(
            "var r = document.querySelector('tr[data-host=\"{host}\"]'); return !!r && r.dataset.gate === '{want}'"
        );
        b.wait_until(&format!("change {i}: {host} {want}"), &js).await?;
        let applied = b
            .eval("return Number(document.body.dataset.applied || 0)")
            .await?
            .as_i64()
            .unwrap_or(0);
        from_write.push(ms(applied - written));
        let decided = m
            .fleet
            .controller
            .ledger
            .store()
            .audit_page(before + 1, usize::MAX)?
            .into_iter()
            .find(|r| lockstep_evidence::action::AuditAction::GateChanged.is(&r.action) && r.host == host)
            .map(|r| r.at_unix_ms);
        if let Some(at) = decided {
            from_decision.push(ms(applied - at));
        }
        // Each change its own burst for the agent's watcher.
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    b.close().await?;
    m.fleet.shutdown().await?;
    Ok(ChangeToPage {
        write_to_page: Latencies::new(from_write),
        decision_to_page: Latencies::new(from_decision),
    })
}

pub struct FirstRender {
    pub hosts: usize,
    /// Chromium's navigation timing: request sent → page loaded.
    pub load: Latencies,
    /// The controller's answer alone: request sent → last byte (responseEnd − requestStart).
    pub server: Latencies,
    pub bytes: usize,
}

/// `loads` first renders of the fleet page of a `hosts`-host inventory
/// (8 agents report; the rest have never reported, so every one of them
/// is a MISSING host with a reason: the most the page can have to say).
pub async fn first_render(hosts: usize, loads: usize) -> anyhow::Result<FirstRender> {
    let chromium = browser::chromium()?.ok_or_else(|| anyhow::anyhow!("no {}", browser::CHROMIUM))?;
    let base = FleetSpec::smars(hosts);
    let spec = FleetSpec {
        board: true,
        watch_changes: false,
        hooks: false,
        without_agent: (9..=hosts).map(|i| base.host_name(i)).collect(),
        ..base
    };
    let m = Morning::with_spec(spec).await?;
    let b = logged_in(&m, &chromium).await?;
    let board = m.fleet.board_url.clone().unwrap_or_default();
    let (mut load, mut server) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..loads {
        b.client.goto(&format!("{board}/")).await?;
        b.wait_until("the loaded board", "return document.readyState === 'complete'")
            .await?;
        let t = b
            .eval(
                "var n = performance.getEntriesByType('navigation')[0]; \
                 return [n.loadEventEnd - n.requestStart, n.responseEnd - n.requestStart, n.transferSize]",
            )
            .await?;
        let f = |i: usize| t.get(i).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        load.push(Duration::from_secs_f64(f(0) / 1000.0));
        server.push(Duration::from_secs_f64(f(1) / 1000.0));
        bytes = f(2) as usize;
    }
    b.close().await?;
    m.fleet.shutdown().await?;
    Ok(FirstRender {
        hosts,
        load: Latencies::new(load),
        server: Latencies::new(server),
        bytes,
    })
}

pub struct ManyBoards {
    pub boards: usize,
    pub changes: usize,
    /// Gate decision → a board holding a fresh page that shows it, every board and change.
    pub decision_to_fresh: Latencies,
    /// The bench process's CPU (controller and every board client together) per change.
    pub cpu_per_change: Duration,
}

/// A board as a script: follows `/events` and, on each event, fetches the
/// fleet page's live part again, as the page's script does. Sends the
/// time each fetched part first showed `host` as `want` for change `n`.
async fn follower(
    ca: std::path::PathBuf,
    board: String,
    cookie: String,
    host: String,
    saw: tokio::sync::mpsc::UnboundedSender<(usize, i64)>,
    mut expect: tokio::sync::watch::Receiver<(usize, &'static str)>,
) -> anyhow::Result<()> {
    let rest = board.trim_start_matches("https://").to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in lockstep_link::tls::load_certs(&ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&rest).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(
        format!("GET /events HTTP/1.1\r\nHost: {rest}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut lines = BufReader::new(tls).lines();
    let row = format!("data-host=\"{host}\" data-gate=\"");
    let mut shown = usize::MAX;
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if !(line.starts_with("event:") && (line.contains("gates") || line.contains("audit"))) {
            continue;
        }
        let (n, want) = *expect.borrow_and_update();
        if shown == n {
            continue;
        }
        let headers = [("Cookie", cookie.as_str()), ("x-lockstep-fragment", "1")];
        let (_, _, page) = browser::https(&ca, &format!("{board}/"), "GET", &headers, "").await?;
        if page.contains(&format!("{row}{want}\"")) {
            shown = n;
            let _ = saw.send((n, now_ms()));
        }
    }
    Ok(())
}

/// `boards` boards (each a session of its own, following the feed and
/// fetching the page as a browser's script would) while one host's gate
/// flips `changes` times.
pub async fn many_boards(boards: usize, changes: usize) -> anyhow::Result<ManyBoards> {
    let spec = FleetSpec {
        board: true,
        scan_interval: Duration::from_secs(300),
        freshness_ttl: Duration::from_secs(600),
        ..FleetSpec::smars(8)
    };
    let m = Morning::with_spec(spec).await?;
    m.step1_release_everywhere().await?;
    let board = m.fleet.board_url.clone().unwrap_or_default();
    let ca = m.fleet.pki_dir.join("ca.pem");
    let host = m.all()[0].clone();
    let (saw_tx, mut saw_rx) = tokio::sync::mpsc::unbounded_channel();
    let (expect_tx, expect_rx) = tokio::sync::watch::channel((usize::MAX, "OPEN"));
    let mut followers = tokio::task::JoinSet::new();
    for _ in 0..boards {
        let (code, out) = m.fleet.console(&m.alice, &["board", "login"]).await?;
        anyhow::ensure!(code == 0, "board login: {out}");
        let link = out.lines().next().unwrap_or_default().trim().to_string();
        let (_, head, _) = browser::https(&ca, &link, "POST", &[], "").await?;
        let cookie = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("set-cookie: ")
                    .or_else(|| l.strip_prefix("Set-Cookie: "))
            })
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| anyhow::anyhow!("no session cookie in {head}"))?
            .to_string();
        followers.spawn(follower(
            ca.clone(),
            board.clone(),
            cookie,
            host.clone(),
            saw_tx.clone(),
            expect_rx.clone(),
        ));
    }
    // Every board connected: wait for each to have had its first ping's worth of time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let one = vec![host.clone()];
    let cpu_start = cpu_time();
    let mut samples = Vec::new();
    for n in 0..changes {
        let want = if n % 2 == 0 { "CLOSED" } else { "OPEN" };
        let before = *m.fleet.controller.ledger.sealed().borrow();
        expect_tx.send_replace((n, want));
        if n % 2 == 0 {
            m.fleet.write(&one, BIN, format!("tampered {n}\n").as_bytes())?;
        } else {
            m.install_old(&one)?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = 0;
        let mut times = Vec::new();
        while got < boards {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, saw_rx.recv()).await {
                Ok(Some((k, at))) if k == n => {
                    got += 1;
                    times.push(at);
                }
                Ok(Some(_)) => {}
                _ => anyhow::bail!("change {n}: only {got} of {boards} boards showed it within 20 s"),
            }
        }
        let decided = m
            .fleet
            .controller
            .ledger
            .store()
            .audit_page(before + 1, usize::MAX)?
            .into_iter()
            .find(|r| lockstep_evidence::action::AuditAction::GateChanged.is(&r.action) && r.host == host)
            .map(|r| r.at_unix_ms)
            .unwrap_or(0);
        samples.extend(times.into_iter().map(|at| ms(at - decided)));
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let cpu = cpu_time().saturating_sub(cpu_start);
    followers.abort_all();
    m.fleet.shutdown().await?;
    Ok(ManyBoards {
        boards,
        changes,
        decision_to_fresh: Latencies::new(samples),
        cpu_per_change: cpu / u32::try_from(changes.max(1)).unwrap_or(1),
    })
}

/// This process's user + system CPU time so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
