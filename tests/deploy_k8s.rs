//! The Kubernetes manifests of `deploy/k8s/` are valid and say what
//! docs/operations.md says: `kubernetes-validate --strict` (PyPI; it ships
//! the schemas, so it runs offline) accepts every file; the workloads probe
//! `/health` for liveness and `/ready` for readiness on the container's
//! port, run as non-root on a read-only root file system with the data
//! directory on a volume; and every variable the ConfigMap, the Secret
//! example and the workloads set is a real `COURIER_*` setting (a key of
//! `config/default.toml`). Without kubernetes-validate the schema check
//! fails under `CI=true` and is skipped with a message otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "the manifests are missing: {files:?}");
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every setting, as its variable: the keys of `config/default.toml`
/// (set or commented out, `# key = ...`), which a test of src/config.rs
/// holds to the built-in defaults.
fn courier_variables() -> BTreeSet<String> {
    let text = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"));
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim();
            let (key, _) = line.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .then(|| format!("COURIER_{}", key.to_ascii_uppercase()))
        })
        .collect()
}

/// The `COURIER_*` names a manifest sets: data keys of a ConfigMap or a
/// Secret (`KEY: value` under `data:`/`stringData:`) and `- name:` entries
/// of `env:`.
fn variables_set(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("- ").trim();
            let name = match line.strip_prefix("name:") {
                Some(value) => value.trim(),
                None => line.split_once(':')?.0.trim(),
            };
            name.starts_with("COURIER_").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn every_variable_is_a_real_setting() {
    let known = courier_variables();
    assert!(
        known.contains("COURIER_DATABASE_URL") && known.contains("COURIER_DB_MAX_CONNECTIONS"),
        "the settings were not read from config/default.toml"
    );
    let mut checked = 0;
    for file in manifests() {
        for name in variables_set(&read(&file)) {
            assert!(
                known.contains(&name),
                "{}: {name} is no Courier setting",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} variables found in the manifests"
    );
    assert!(!known.contains("COURIER_NO_SUCH_SETTING"));
}

/// The lines of the block that starts at the line containing `key` (more
/// indented than it), joined.
fn block_after(text: &str, key: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim_start().starts_with(key))?;
    let indent = lines[start].len() - lines[start].trim_start().len();
    let block: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .copied()
        .collect();
    Some(block.join("\n"))
}

#[test]
fn workloads_probe_health_and_ready_and_run_locked_down() {
    let mut workloads = 0;
    for file in manifests() {
        let text = read(&file);
        if !(text.contains("kind: Deployment") || text.contains("kind: StatefulSet")) {
            continue;
        }
        workloads += 1;
        let name = file.display();
        let liveness = block_after(&text, "livenessProbe:").expect("a liveness probe");
        assert!(
            liveness.contains("path: /health"),
            "{name}: liveness on /health"
        );
        assert!(liveness.contains("port: http"), "{name}: on the named port");
        let readiness = block_after(&text, "readinessProbe:").expect("a readiness probe");
        assert!(
            readiness.contains("path: /ready"),
            "{name}: readiness on /ready"
        );
        assert!(
            text.contains("containerPort: 8080"),
            "{name}: port 8080 (COURIER_BIND)"
        );
        for needed in [
            "runAsNonRoot: true",
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            "mountPath: /var/lib/courier",
            "configMapRef:",
            "secretRef:",
            "resources:",
        ] {
            assert!(text.contains(needed), "{name}: missing {needed}");
        }
    }
    assert_eq!(workloads, 2, "the Deployment and the SQLite StatefulSet");
    let secret = read(&k8s_dir().join("secret.example.yaml"));
    for line in secret.lines().filter(|l| l.trim().starts_with("COURIER_")) {
        assert!(
            line.contains("REPLACE_ME"),
            "the example Secret holds placeholders only: {line}"
        );
    }
}

#[test]
fn kubernetes_validate_accepts_every_manifest() {
    let files = manifests();
    let output = match Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
    {
        Ok(output) => output,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("kubernetes-validate is needed under CI=true (pip install kubernetes-validate): {e}")
        }
        Err(e) => {
            eprintln!(
                "skipping the schema check: kubernetes-validate not found ({e}); pip install kubernetes-validate"
            );
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "kubernetes-validate refused a manifest:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = stdout.matches(" passed ").count();
    assert_eq!(passed, files.len(), "one pass per manifest:\n{stdout}");
}
