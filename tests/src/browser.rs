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
