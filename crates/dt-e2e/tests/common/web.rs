//! Browser tests: Debian's `chromium` driven by `playwright-core` scripts in tests/web.
//! A script reads its settings from `DT_WEB_TEST` (JSON) and prints one JSON line per check
//! (`{"check": NAME, ...}`); the Rust test asserts on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// Fail with what to do when the browser or playwright-core is missing.
pub fn require_browser() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: run scripts/install-deps.sh"
    );
    assert!(
        web_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/install-deps.sh (npm ci in {})",
        web_dir().display()
    );
}

/// The checks a script printed, by name.
pub fn checks(stdout: &str) -> HashMap<String, Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["check"].as_str()?.to_string(), v)))
        .collect()
}

/// Run `script` (in tests/web) with `config`; its checks, and its whole output for messages.
/// The script must have finished (a `done` check).
pub fn run_browser(script: &str, config: &Value) -> (HashMap<String, Value>, String) {
    require_browser();
    let out = Command::new("node")
        .arg(script)
        .current_dir(web_dir())
        .env("DT_WEB_TEST", config.to_string())
        .output()
        .expect("run node (install Node.js: scripts/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("-- node stdout:\n{stdout}\n-- node stderr:\n{stderr}");
    assert!(out.status.success(), "the browser script broke\n{ctx}");
    let c = checks(&stdout);
    assert!(c.contains_key("done"), "{ctx}");
    (c, ctx)
}

/// Where a test's screenshots go: docs/screenshots with `DEVTRUST_UPDATE_SCREENSHOTS=1`,
/// else `scratch`.
pub fn screenshots(scratch: &Path) -> PathBuf {
    if std::env::var_os("DEVTRUST_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        scratch.join("screenshots")
    }
}
