//! Headless Chromium for the admin pages' tests: load a page, let its
//! scripts fetch and draw, and return the DOM it ends with.

use std::process::Command;

use crate::TempDir;

/// The DOM of `url` after its scripts ran (at most 10 s of virtual time:
/// timers and fetches started by then are done).
pub fn chromium_dom(url: &str) -> String {
    let profile = TempDir::new("chromium");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Let the page's fetch finish before the DOM is dumped.
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.str()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
