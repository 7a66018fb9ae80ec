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

async fn login_link(m: &Morning, who: &lockstep_proto::tls::TlsPaths) -> String {
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
    b.client.goto(&link).await.unwrap();
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
    let (status, _, body) = browser::https(&ca, &link, "GET", &[], "").await.unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("already used"), "{body}");

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
    let (status, head, _) = browser::https(&ca, &vic_link, "GET", &[], "").await.unwrap();
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
            tokio::spawn(async move { browser::https(&ca, &link, "GET", &[], "").await.unwrap() })
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
    assert_eq!(m.fleet.controller.board_sessions.list().len(), 1);

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
    assert!(m.fleet.controller.board_sessions.list().is_empty());
    let (status, _, _) = browser::https(&ca, &format!("{board}/"), "GET", &[("Cookie", &cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 401, "a logged-out cookie still opens the board");
    m.fleet.wait_audit("board.login", "alice").await.unwrap();
    m.fleet.wait_audit("board.logout", "alice").await.unwrap();
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
