//! Debian's headless Chromium, for tests that need a page rendered by a
//! real browser. It is found at its fixed path only (nothing is ever
//! downloaded); `.ci/run` installs the package.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser, or why a test cannot run: under CI its absence is a
/// failure (`.ci/run` installs it); on a developer's machine the test says
/// what to install and passes over the browser part.
pub fn chromium() -> anyhow::Result<Option<PathBuf>> {
    let path = PathBuf::from(CHROMIUM);
    if path.exists() {
        return Ok(Some(path));
    }
    anyhow::ensure!(
        std::env::var_os("CI").is_none(),
        "{CHROMIUM} is missing: .ci/run installs Debian's chromium package"
    );
    eprintln!("skipping the browser check: install Debian's chromium ({CHROMIUM}) to run it");
    Ok(None)
}

/// The flags every run needs here: headless, no sandbox (tests run as
/// root), and nothing that reaches for the network.
fn base(browser: &Path, profile: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The DOM of `page` (a file) after Chromium has parsed and laid it out.
pub fn dump_dom(browser: &Path, page: &Path) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let out = base(browser, profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .context("running chromium --dump-dom")?;
    anyhow::ensure!(
        out.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A PNG of `page` at `width`×`height` CSS pixels, written to `png`.
pub fn screenshot(browser: &Path, page: &Path, png: &Path, width: u32, height: u32) -> anyhow::Result<()> {
    let profile = tempfile::tempdir()?;
    let out = base(browser, profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", page.display()))
        .output()
        .context("running chromium --screenshot")?;
    anyhow::ensure!(
        out.status.success() && png.exists(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Where a test keeps a screenshot: `LOCKSTEP_SCREENSHOTS` (relative to
/// the repository; `docs/images` refreshes the documentation's pictures),
/// else target/screenshots.
pub fn screenshot_path(name: &str) -> anyhow::Result<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = match std::env::var_os("LOCKSTEP_SCREENSHOTS") {
        Some(d) => repo.join(d),
        None => repo.join("target/screenshots"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(name))
}

/// Where Debian's `chromium-driver` package puts ChromeDriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless Chromium driven over WebDriver by ChromeDriver, both from
/// their Debian paths. Dropping it ends both.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and a browser through it.
    pub async fn start(chromium: &Path, width: u32, height: u32) -> anyhow::Result<Self> {
        let port = crate::ports::free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {CHROMEDRIVER} (Debian's chromium-driver; .ci/run installs it)"))?;
        let profile = tempfile::tempdir()?;
        let caps = serde_json::json!({
            "browserName": "chrome",
            // The board's certificate is signed by the fleet CA, which this browser does not know.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            anyhow::bail!("capabilities are not an object");
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "chromedriver not ready yet");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!("cannot start Chromium through ChromeDriver at {url}: {e}"),
            }
        };
        Ok(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Evaluates `js` (a function body) in the page and returns its value.
    pub async fn eval(&self, js: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.client.execute(js, Vec::new()).await?)
    }

    /// Polls `js` (a function body returning a boolean) until it is true, up to 15 s.
    /// A script error (an element not there yet: the page still loading
    /// after a redirect) is "not yet", reported if it is still so at the end.
    /// Opens a board login link and presses its page's button (a GET of
    /// the link spends nothing).
    pub async fn open_login(&self, link: &str) -> anyhow::Result<()> {
        self.client.goto(link).await?;
        self.client
            .find(fantoccini::Locator::Css("#login button"))
            .await?
            .click()
            .await?;
        Ok(())
    }

    pub async fn wait_until(&self, what: &str, js: &str) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut last_error: Option<anyhow::Error>;
        loop {
            match self.eval(js).await {
                Ok(v) if v.as_bool() == Some(true) => return Ok(()),
                Ok(_) => last_error = None,
                Err(e) => last_error = Some(e),
            }
            if std::time::Instant::now() > deadline {
                let text = self.eval("return document.body ? document.body.innerText : ''").await?;
                let error = last_error.map_or(String::new(), |e| format!(" (the script failed: {e})"));
                anyhow::bail!(
                    "timed out waiting for {what}{error}; the page says:\n{}",
                    text.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// A PNG of the window, written to `png`.
    pub async fn screenshot(&self, png: &Path) -> anyhow::Result<()> {
        let bytes = self.client.screenshot().await?;
        std::fs::write(png, bytes).with_context(|| format!("writing {}", png.display()))
    }

    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTPS request to the board as a script (not a browser) would send
/// it, trusting the fleet CA: for forged requests. Returns the status, the
/// headers and the body.
pub async fn https(
    ca: &Path,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    let rest = url.strip_prefix("https://").context("not an https:// URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let raw = https_bytes(ca, url, request.as_bytes()).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status in the answer")?;
    Ok((status, head.to_string(), body.to_string()))
}

/// Sends `request` as it is (malformed ones too) over TLS to the board at
/// `url`'s authority, trusting the fleet CA; returns all it answered
/// before closing.
pub async fn https_bytes(ca: &Path, url: &str, request: &[u8]) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("https://").context("not an https:// URL")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in lockstep_link::tls::load_certs(ca)? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(lockstep_link::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request).await?;
    let mut raw = Vec::new();
    // A server that closes without close_notify still said what it said.
    let _ = tls.read_to_end(&mut raw).await;
    Ok(raw)
}
