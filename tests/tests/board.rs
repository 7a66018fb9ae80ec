//! The fleet board in a real headless Chromium (Debian's, driven by
//! ChromeDriver over WebDriver) against a real controller and 8 real
//! agents: log in with a one-time link, watch a drifting host close without
//! a reload, halt from the page, and what a viewer, a forger, a used link
//! and a revoked session get.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use lockstep_proto::identity::OperatorRole;
use lockstep_tests::browser::{self, Browser};
use lockstep_tests::fleet::FleetSpec;
use lockstep_tests::knight::{BIN, Morning};

/// The form token of a page (the halt form and every other form carry it).
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

fn cookie_of(head: &str) -> String {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a session cookie");
    let value = line.split_once(':').unwrap().1.trim();
    value.split(';').next().unwrap().to_string()
}

/// The ids of the first `n` audit events `/events` sends after `last_id`.
async fn events_after(ca: &std::path::Path, board: &str, cookie: &str, last_id: u64, n: usize) -> Vec<u64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let authority = board.trim_start_matches("https://");
    let mut roots = rustls::RootCertStore::empty();
    for c in lockstep_link::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let request =
        format!("GET /events HTTP/1.1\r\nHost: {authority}\r\nCookie: {cookie}\r\nLast-Event-ID: {last_id}\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(tls).lines();
    let mut ids = Vec::new();
    let mut audit = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while ids.len() < n {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the feed went quiet")
            .unwrap()
            .expect("the feed ended");
        let line = line.trim();
        if line.starts_with("event:") {
            audit = line.ends_with("audit");
        } else if let Some(id) = line.strip_prefix("id:").filter(|_| audit) {
            ids.push(id.trim().parse().unwrap());
        }
    }
    ids
}

async fn login_link(m: &Morning, who: &lockstep_link::tls::TlsPaths) -> String {
    let (code, out) = m.fleet.console(who, &["board", "login"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    out.lines().next().unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_follows_the_fleet_in_a_real_browser() {
    let Some(chromium) = browser::chromium().unwrap() else {
        return;
    };
    let spec = FleetSpec {
        board: true,
        ..FleetSpec::smars(8)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    m.step1_release_everywhere().await.unwrap();
    let board = m.fleet.board_url.clone().unwrap();
    let ca = m.fleet.pki_dir.join("ca.pem");
    let b = Browser::start(&chromium, 1400, 1000).await.unwrap();

    // Not logged in: the board says how to log in.
    b.client.goto(&board).await.unwrap();
    b.wait_until(
        "the login hint",
        "return document.body.innerText.includes('lockstep board login')",
    )
    .await
    .unwrap();

    // A one-time link logs the browser in as alice; the board shows 8/8 OPEN.
    let link = login_link(&m, &m.alice).await;
    b.open_login(&link).await.unwrap();
    b.wait_until(
        "8/8 OPEN",
        "var x = document.querySelector('.banner[data-role=smars]'); return !!x && x.innerText.includes('smars: 8/8 OPEN on release 1')",
    )
    .await
    .unwrap();
    b.wait_until(
        "a live feed",
        "return document.getElementById('feed').innerText.includes('LIVE')",
    )
    .await
    .unwrap();
    let cookies = b.client.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|c| c.name() == "lockstep_session").unwrap();
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");

    // The same link again is refused (it opened a session already).
    b.open_login(&link).await.unwrap();
    b.wait_until(
        "the used link refused",
        "var w = document.getElementById('why'); return !!w && w.innerText.includes('already used')",
    )
    .await
    .unwrap();
    b.client.goto(&format!("{board}/")).await.unwrap();

    // A file changed on one host: that host turns CLOSED on the open page,
    // naming the file, without a reload.
    b.eval("window.lockstepMarker = 'no reload'; return true")
        .await
        .unwrap();
    m.install_new(&["smars-08".to_string()]).unwrap();
    b.wait_until(
        "smars-08 CLOSED naming the file",
        &format!(
            "var r = document.querySelector('tr[data-host=\"smars-08\"]'); return !!r && r.dataset.gate === 'CLOSED' && r.innerText.includes('{BIN}')"
        ),
    )
    .await
    .unwrap();
    assert_eq!(b.eval("return window.lockstepMarker").await.unwrap(), "no reload");
    b.wait_until(
        "7/8",
        "return document.querySelector('.banner[data-role=smars]').innerText.includes('7/8 OPEN')",
    )
    .await
    .unwrap();
    b.screenshot(&browser::screenshot_path("board-drift.png").unwrap())
        .await
        .unwrap();

    // A viewer's page has no halt control, and a forged POST is refused and audited.
    let vic = m.fleet.operator("vic", OperatorRole::Viewer).unwrap();
    let vic_link = login_link(&m, &vic).await;
    let (status, head, _) = browser::https(&ca, &vic_link, "POST", &[], "").await.unwrap();
    assert_eq!(status, 303, "{head}");
    let vic_cookie = cookie_of(&head);
    let (status, _, page) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &vic_cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("smars-08") && !page.contains("halt-form") && !page.contains("HALT"),
        "{page}"
    );
    let form = format!("csrf={}&kind=fleet&scope=&reason=forged&confirm=FLEET", csrf_of(&page));
    let post = |cookie: Option<String>, body: String| {
        let (ca, url) = (ca.clone(), format!("{board}/halt"));
        async move {
            let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded".to_string())];
            if let Some(c) = cookie {
                headers.push(("Cookie", c));
            }
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            browser::https(&ca, &url, "POST", &headers, &body).await.unwrap()
        }
    };
    let (status, _, body) = post(Some(vic_cookie.clone()), form.clone()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("vic has role viewer; this needs the operator role"),
        "{body}"
    );
    let (status, _, _) = post(None, form.clone()).await;
    assert_eq!(status, 401);
    let denied = m.fleet.wait_audit("board.denied", "vic (viewer)").await.unwrap();
    assert!(denied.contains("board Halt"), "{denied}");
    m.fleet.wait_audit("board.denied", "unauthenticated").await.unwrap();
    // A real cross-site form carries none of our fields: refused before the
    // form is read, and audited all the same; so is a form that cannot be read.
    let (status, _, body) = browser::https(
        &ca,
        &format!("{board}/halt"),
        "POST",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &vic_cookie),
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        "kind=fleet&reason=csrf&confirm=FLEET",
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    let denied = m
        .fleet
        .wait_audit("board.denied", "a cross-site request")
        .await
        .unwrap();
    assert!(denied.contains("vic (viewer)"), "{denied}");
    let olga = m.fleet.operator("olga", OperatorRole::Operator).unwrap();
    let olga_link = login_link(&m, &olga).await;
    let (status, head, _) = browser::https(&ca, &olga_link, "POST", &[], "").await.unwrap();
    assert_eq!(status, 303, "{head}");
    let olga_cookie = cookie_of(&head);
    let (status, _, body) = browser::https(
        &ca,
        &format!("{board}/ack"),
        "POST",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &olga_cookie),
        ],
        "id=not-a-number",
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let denied = m
        .fleet
        .wait_audit("board.denied", "a form that cannot be read")
        .await
        .unwrap();
    assert!(denied.contains("olga (operator)"), "{denied}");
    assert!(m.fleet.controller.halts.list(false).is_empty(), "a refused halt halted");

    // A halt from the page, confirmed by typing the role: every gate closes,
    // the agents get it, and it is in the audit tail.
    b.client.goto(&format!("{board}/")).await.unwrap();
    b.wait_until("the kill switch", "return !!document.getElementById('halt-form')")
        .await
        .unwrap();
    b.eval(
        "document.querySelector('details.killswitch').open = true; \
         var f = document.getElementById('halt-form'); \
         f.kind.value = 'role'; f.scope.value = 'smars'; f.reason.value = 'runaway orders on NYSE'; \
         f.confirm.value = 'smars'; return true",
    )
    .await
    .unwrap();
    b.client
        .find(fantoccini::Locator::Css("#halt-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        "0/8 and the halt banner",
        "var x = document.querySelector('.banner[data-role=smars]'); return !!x && x.innerText.includes('0/8 OPEN') && document.body.innerText.includes('HALTED')",
    )
    .await
    .unwrap();
    m.fleet
        .wait_local(&m.all(), 1, "every agent's local gate to close")
        .await
        .unwrap();
    b.screenshot(&browser::screenshot_path("board-halt.png").unwrap())
        .await
        .unwrap();
    b.client.goto(&format!("{board}/audit")).await.unwrap();
    b.wait_until(
        "the halt in the audit tail",
        "var t = document.getElementById('audit'); return !!t && t.innerText.includes('runaway orders on NYSE') && t.innerText.includes('alice (operator)')",
    )
    .await
    .unwrap();

    // A revoked session stops receiving updates.
    let (code, out) = m.fleet.console(&m.alice, &["board", "sessions"]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let id = out
        .lines()
        .find(|l| l.contains("alice"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    b.client.goto(&format!("{board}/")).await.unwrap();
    b.wait_until(
        "a live feed",
        "return document.getElementById('feed').innerText.includes('LIVE')",
    )
    .await
    .unwrap();
    let (code, out) = m.fleet.console(&m.alice, &["board", "revoke", &id]).await.unwrap();
    assert_eq!(code, 0, "{out}");
    b.wait_until(
        "the session's end",
        "return document.getElementById('feed').innerText.includes('SESSION ENDED')",
    )
    .await
    .unwrap();
    let (code, out) = m
        .fleet
        .console(&m.alice, &["resume", "--role", "smars", "--reason", "fixed"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    m.fleet.wait_audit("resume", "fixed").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let still = b
        .eval("return document.querySelector('.banner[data-role=smars]').innerText")
        .await
        .unwrap();
    assert!(
        still.as_str().unwrap().contains("0/8 OPEN"),
        "a revoked page still updated: {still}"
    );
    m.fleet.wait_audit("board.revoked", &id).await.unwrap();
    b.close().await.unwrap();
    m.fleet.shutdown().await.unwrap();
}

/// One link, opened by 16 clients at once over the real listener, opens
/// exactly one session; logging out ends it, and both are in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_link_opens_one_session_however_many_open_it_at_once() {
    let spec = FleetSpec {
        board: true,
        ..FleetSpec::smars(2)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let board = m.fleet.board_url.clone().unwrap();
    let ca = m.fleet.pki_dir.join("ca.pem");
    let link = login_link(&m, &m.alice).await;
    let opens: Vec<_> = (0..16)
        .map(|_| {
            let (ca, link) = (ca.clone(), link.clone());
            tokio::spawn(async move { browser::https(&ca, &link, "POST", &[], "").await.unwrap() })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut cookie = String::new();
    for o in opens {
        let (status, head, _) = o.await.unwrap();
        if status == 303 {
            cookie = cookie_of(&head);
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 303).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 15, "{statuses:?}");
    assert_eq!(m.fleet.controller.board_sessions.list().await.unwrap().len(), 1);

    // The session's page, then its logout (with the page's form token).
    let (status, _, page) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let body = format!("csrf={}", csrf_of(&page));
    let headers = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, head, _) = browser::https(&ca, &format!("{board}/logout"), "POST", &headers, &body)
        .await
        .unwrap();
    assert_eq!(status, 303, "{head}");
    assert!(head.contains("Max-Age=0"), "the cookie is not cleared: {head}");
    assert!(m.fleet.controller.board_sessions.list().await.unwrap().is_empty());
    let (status, _, _) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 401, "a logged-out cookie still opens the board");
    m.fleet.wait_audit("board.login", "alice").await.unwrap();
    m.fleet.wait_audit("board.logout", "alice").await.unwrap();

    // A page that reconnects with Last-Event-ID gets every record after it, in order.
    let link = login_link(&m, &m.alice).await;
    let (_, head, _) = browser::https(&ca, &link, "POST", &[], "").await.unwrap();
    let cookie = cookie_of(&head);
    let sealed = *m.fleet.controller.ledger.sealed().borrow();
    let from = sealed - 5;
    let ids = events_after(&ca, &board, &cookie, from, 5).await;
    assert_eq!(ids, ((from + 1)..=sealed).collect::<Vec<_>>());

    // The releases page counts the hosts that already match a proposed
    // release, and offers approval only to an approver.
    let args = [
        "release",
        "propose",
        "--role",
        "smars",
        "--from-host",
        "smars-01",
        "--note",
        "rc1",
    ];
    let (code, out) = m.fleet.console(&m.alice, &args).await.unwrap();
    assert_eq!(code, 0, "{out}");
    let (status, _, page) = browser::https(&ca, &format!("{board}/releases"), "GET", &[("Cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("2 of 2") && page.contains("rc1"), "{page}");
    assert!(
        !page.contains("action=\"/approve\""),
        "an operator was offered approval: {page}"
    );
    // A session that does not exist cannot be revoked, and says how to find one.
    let err = m
        .fleet
        .console(&m.alice, &["board", "revoke", "nosuchsession"])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lockstep board sessions"), "{err}");
    m.fleet.shutdown().await.unwrap();
}

/// A link not opened within its life is refused over the real listener,
/// and says so (the paused-clock test in controller/tests/clock.rs checks
/// the edge to the millisecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_login_link_is_refused() {
    let spec = FleetSpec {
        board: true,
        board_login_ttl: Some(std::time::Duration::from_millis(300)),
        ..FleetSpec::smars(1)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let ca = m.fleet.pki_dir.join("ca.pem");
    let stale = login_link(&m, &m.alice).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (status, _, body) = browser::https(&ca, &stale, "POST", &[], "").await.unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("expired"), "{body}");
    m.fleet.wait_audit("board.login_refused", "expired").await.unwrap();
    assert!(m.fleet.controller.board_sessions.list().await.unwrap().is_empty());
    m.fleet.shutdown().await.unwrap();
}

/// Opening a login link (a GET: what a chat's or a mail's link preview
/// does) spends nothing: it shows the button that does. A POST from another
/// site is refused, audited, and spends nothing either (no login CSRF); the
/// real login after both still works, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previewed_login_link_still_logs_in_and_a_cross_site_post_does_not() {
    let spec = FleetSpec {
        board: true,
        ..FleetSpec::smars(1)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let ca = m.fleet.pki_dir.join("ca.pem");
    let link = login_link(&m, &m.alice).await;
    for _ in 0..3 {
        let (status, head, page) = browser::https(&ca, &link, "GET", &[], "").await.unwrap();
        assert_eq!(status, 200, "{head}");
        assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
        assert!(page.contains("method=\"post\"") && page.contains("Log in"), "{page}");
        assert!(head.to_ascii_lowercase().contains("cache-control: no-store"), "{head}");
    }
    assert!(m.fleet.controller.board_sessions.list().await.unwrap().is_empty());
    let (status, _, body) = browser::https(
        &ca,
        &link,
        "POST",
        &[("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    m.fleet
        .wait_audit("board.login_refused", "the link was not spent")
        .await
        .unwrap();
    let (status, head, _) = browser::https(&ca, &link, "POST", &[], "").await.unwrap();
    assert_eq!(status, 303, "{head}");
    assert!(!cookie_of(&head).is_empty());
    let (status, _, body) = browser::https(&ca, &link, "POST", &[], "").await.unwrap();
    assert_eq!(status, 403, "a link logs in once: {body}");
    assert_eq!(m.fleet.controller.board_sessions.list().await.unwrap().len(), 1);
    m.fleet.shutdown().await.unwrap();
}

/// One client (127.0.0.2) opens 600 TLS connections to the board and
/// keeps them idle: it holds at most its own share, the rest are refused
/// and audited as `connection.refused`, and another client's page still
/// loads. Then malformed requests: hyper's own answers carry the security
/// headers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_idle_connections_do_not_stop_anothers_page() {
    let spec = FleetSpec {
        board: true,
        ..FleetSpec::smars(1)
    };
    let m = Morning::with_spec(spec).await.unwrap();
    let board = m.fleet.board_url.clone().unwrap();
    let ca = m.fleet.pki_dir.join("ca.pem");
    let authority: std::net::SocketAddr = board.trim_start_matches("https://").parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in lockstep_link::tls::load_certs(&ca).unwrap() {
        roots.add(c).unwrap();
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut held = Vec::new();
    for _ in 0..600 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let Ok(tcp) = socket.connect(authority).await else {
            continue;
        };
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        if let Ok(tls) = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
        {
            held.push(tls);
        }
    }
    assert!(held.len() >= 128, "the attacker's own share: {}", held.len());
    // Another client's page, while all of them are held.
    for _ in 0..3 {
        let (status, _, body) = browser::https(&ca, &format!("{board}/board.css"), "GET", &[], "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    m.fleet
        .wait_audit("connection.refused", "board connections are open from this address")
        .await
        .unwrap();
    drop(held);
    // Requests hyper refuses before any layer of ours sees them still get
    // the board's security headers.
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let head_of = |bytes| format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(bytes));
    // 200 KB arrives whole within hyper's read buffer: refused by the
    // board's head limit, not by a buffer that happened to fill first.
    for (request, status) in [
        ("GET /\x01 HTTP/1.1\r\n\r\n".to_string(), "400"),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), "400"),
        (long_uri, "414"),
        (head_of(200_000), "431"),
        (head_of(500_000), "431"),
    ] {
        let raw = browser::https_bytes(&ca, &board, request.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(answer.starts_with(&format!("http/1.1 {status} ")), "{answer}");
        for header in [
            "content-security-policy: default-src 'none'",
            "x-content-type-options: nosniff",
            "strict-transport-security: max-age=31536000",
            "referrer-policy: same-origin",
            "cache-control: no-store",
        ] {
            assert!(answer.contains(header), "{status} without {header}: {answer}");
        }
    }
    m.fleet.shutdown().await.unwrap();
}
