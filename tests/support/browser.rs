//! What the browser tests need before they can run: Node 20 or later,
//! Debian's Chromium, and the locked Node packages of `tests/browser`
//! (installed with `npm ci` when missing). Without Node or Chromium a test
//! prints why and passes, except under `CI=true`, where it fails. Included
//! with `#[path = "support/browser.rs"] mod browser;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the browser and the scripts are.
pub struct Browser {
    /// The Chromium binary (`CHROMIUM`, else `/usr/bin/chromium`).
    pub chromium: String,
    /// `tests/browser`, its packages installed.
    pub dir: PathBuf,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Everything `what` (the test, for messages) needs, or `None` after saying
/// why it cannot run; under CI that is a failure.
pub fn prepare(what: &str) -> Option<Browser> {
    let cannot_run = |why: String| {
        assert!(!in_ci(), "the {what} cannot run under CI=true: {why}");
        eprintln!("skipping the {what}: {why}");
        None
    };
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    match node_major() {
        None => return cannot_run("`node` is not installed (Node 20 or later is needed)".into()),
        Some(major) if major < 20 => {
            return cannot_run(format!("Node {major} is too old (20 or later is needed)"))
        }
        Some(_) => {}
    }
    if !Path::new(&chromium).exists() {
        return cannot_run(format!(
            "{chromium} is not there (Debian: apt-get install chromium)"
        ));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if let Err(why) = install_packages(&dir) {
        return cannot_run(why);
    }
    Some(Browser { chromium, dir })
}

/// Node's major version, `None` when there is no `node`.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// `npm ci` unless the installed packages match the lock file.
fn install_packages(dir: &Path) -> Result<(), String> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = dir
        .join("node_modules/playwright-core/package.json")
        .exists()
        && matches!((modified(&installed), modified(&lock)), (Some(i), Some(l)) if i >= l);
    if fresh {
        return Ok(());
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("npm could not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "npm ci failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
