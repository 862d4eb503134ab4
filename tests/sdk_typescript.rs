//! The TypeScript SDK (`sdk/typescript`, issue 33) from `cargo test`.
//!
//! - `npm test` there, against this build's `courier` binary (`COURIER_BIN`):
//!   SIGKILL and restart mid-conversation, an outage past the replay limit,
//!   token refresh, revocation, the heartbeat, the frames fixture. `npm ci`
//!   runs first when `node_modules` is missing or older than
//!   `package-lock.json`.
//! - What the SDK encoded there (`COURIER_FRAMES_OUT`) is decoded here with
//!   `courier_protocol` and compared with the frames of
//!   `test/fixtures/frames.json` (made by `tests/sdk_frames.rs`).
//! - The committed browser bundle (`src/web/assets/courier-client.js`) is
//!   what `npm run bundle` produces from the sources now.
//!
//! Without `node` and `npm` these tests say so and pass, except under
//! `CI=true`, where they fail.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
    time::SystemTime,
};

use courier_protocol::{decode_client, decode_server, Encoding};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sdk() -> PathBuf {
    repo().join("sdk/typescript")
}

/// Whether node and npm can run here; panics under CI=true when they cannot.
fn node_or_skip(test: &str) -> bool {
    let works = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = ["node", "npm"].into_iter().filter(|t| !works(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: {} not found on PATH; the TypeScript SDK's tests need Node 20+ and npm",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true: required)");
    }
    eprintln!("skipped: {why}");
    false
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn fail_with(what: &str, out: &Output) -> ! {
    panic!(
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `npm ci` once per test binary, when node_modules is missing or older than the lock file.
fn install() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return;
    }
    let dir = sdk();
    // npm writes node_modules/.package-lock.json on every install.
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let locked = modified(&dir.join("package-lock.json"));
    if installed.is_none() || installed < locked {
        let out = run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir));
        if !out.status.success() {
            fail_with("npm ci in sdk/typescript", &out);
        }
    }
    *done = true;
}

#[test]
fn the_typescript_sdk_passes_its_tests_against_this_server() {
    if !node_or_skip("sdk_typescript") {
        return;
    }
    install();
    let scratch = tempfile::tempdir().expect("a temp dir");
    let frames_out = scratch.path().join("frames-out.json");
    let out = run(Command::new("npm")
        .arg("test")
        .current_dir(sdk())
        .env("COURIER_BIN", env!("CARGO_BIN_EXE_courier"))
        .env("COURIER_FRAMES_OUT", &frames_out));
    if !out.status.success() {
        fail_with("npm test in sdk/typescript", &out);
    }
    let written = std::fs::read_to_string(&frames_out).unwrap_or_else(|e| {
        panic!(
            "npm test passed but wrote no frames to {} ({e}):\n{}",
            frames_out.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    check_sdk_frames(&serde_json::from_str(&written).expect("the SDK wrote JSON"));
}

/// Every frame the SDK encoded decodes in Rust to the fixture's frame, and
/// every server frame the SDK read says (re-encoded) what the fixture said.
fn check_sdk_frames(sdk_out: &Value) {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(sdk().join("test/fixtures/frames.json")).expect("the fixture"),
    )
    .expect("the fixture is JSON");
    let list = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    let hex_of = |v: &Value| hex::decode(v.as_str().expect("hex")).expect("valid hex");
    let names = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["name"].as_str().unwrap_or("?").to_owned())
            .collect()
    };

    let (want, got) = (list(&fixture, "client"), list(sdk_out, "client"));
    assert_eq!(
        names(&got),
        names(&want),
        "the SDK encoded every client frame of the fixture"
    );
    for (w, g) in want.iter().zip(&got) {
        let name = w["name"].as_str().unwrap_or("?");
        let expected = decode_client(w["json"].to_string().as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{name}: the fixture's own JSON: {e}"));
        let json = g["json"].as_str().expect("the SDK's JSON text");
        let from_json = decode_client(json.as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{name}: Rust cannot decode the SDK's JSON {json}: {e}"));
        assert_eq!(from_json, expected, "{name}: the SDK's JSON");
        let from_msgpack = decode_client(&hex_of(&g["msgpack"]), Encoding::MessagePack)
            .unwrap_or_else(|e| panic!("{name}: Rust cannot decode the SDK's MessagePack: {e}"));
        assert_eq!(from_msgpack, expected, "{name}: the SDK's MessagePack");
    }

    let (want, got) = (list(&fixture, "server"), list(sdk_out, "server"));
    assert_eq!(
        names(&got),
        names(&want),
        "the SDK read every server frame of the fixture"
    );
    for (w, g) in want.iter().zip(&got) {
        let name = w["name"].as_str().unwrap_or("?");
        let expected = decode_server(&hex_of(&w["msgpack"]), Encoding::MessagePack)
            .unwrap_or_else(|e| panic!("{name}: the fixture's own MessagePack: {e}"));
        let read = decode_server(g["wire"].to_string().as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{name}: what the SDK read does not decode: {e}"));
        assert_eq!(
            read, expected,
            "{name}: the SDK read the frame as the server meant it"
        );
    }
}

#[test]
fn the_committed_browser_bundle_is_what_npm_run_bundle_builds() {
    if !node_or_skip("sdk_typescript bundle") {
        return;
    }
    install();
    let scratch = tempfile::tempdir().expect("a temp dir");
    let fresh = scratch.path().join("courier-client.js");
    let out = run(Command::new("node")
        .arg("scripts/bundle.mjs")
        .arg(&fresh)
        .current_dir(sdk()));
    if !out.status.success() {
        fail_with("node scripts/bundle.mjs (npm run bundle)", &out);
    }
    let committed_path = repo().join("src/web/assets/courier-client.js");
    let committed = std::fs::read_to_string(&committed_path).expect("the committed bundle");
    let fresh = std::fs::read_to_string(&fresh).expect("the fresh bundle");
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()))
            + 1;
        panic!(
            "{} is not what `npm run bundle` builds from sdk/typescript/src now (first difference at line {line}); \
             run `npm run bundle` in sdk/typescript and commit the result",
            committed_path.display()
        );
    }
}
