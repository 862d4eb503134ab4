//! PostgreSQL over TLS, as the database URL's `sslmode` and `sslrootcert`
//! ask: `require` against the machine's PostgreSQL, and throwaway clusters
//! made here with `initdb`/`pg_ctl` (`ssl=on` with a server certificate from
//! a CA made with rcgen, or `ssl=off`) for `verify-full` with the right CA
//! (the broker boots on it and stores a message), with a wrong CA, with the
//! wrong host, and `require` against a server without TLS.
//!
//! The clusters need PostgreSQL 15's server binaries; without them the tests
//! print why and skip, except under `CI=true`, where they fail. Under root
//! the cluster runs as the `postgres` user (initdb refuses root).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use courier_actors::durable::store::{self, ChannelKind, Role, StoreError};
use courier_protocol::codec::Encoding;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use sqlx::{Connection, PgConnection};
use support::process::BrokerSpec;
use support::server::{test_config, TestServer};
use tempfile::TempDir;

/// Where Debian puts PostgreSQL 15's server binaries.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A CA made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca"),
        }
    }

    /// Writes the CA's certificate to `path` and returns the path.
    fn write(&self, path: PathBuf) -> PathBuf {
        std::fs::write(&path, self.issuer.pem()).expect("write the CA");
        path
    }

    /// A server certificate for 127.0.0.1 only, and its key, as PEM.
    fn server_certificate(&self) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params
            .distinguished_name
            .push(DnType::CommonName, "courier test database");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, stopped
/// when dropped.
struct Cluster {
    dir: TempDir,
    port: u16,
    /// `Some("postgres")` when this process is root.
    user: Option<&'static str>,
}

impl Cluster {
    /// Makes and starts a cluster; with `tls`, `ssl=on` with a certificate
    /// from `tls`. `None` when it cannot run here outside CI.
    fn start(tls: Option<&Ca>) -> Option<Cluster> {
        let initdb = Path::new(PG_BIN).join("initdb");
        if !initdb.exists() {
            return cannot_run(&format!("{} is missing", initdb.display()));
        }
        let root = run_output("id", &["-u"]).trim() == "0";
        let user = root.then_some("postgres");
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        if let Some(user) = user {
            let uid = run_output("id", &["-u", user]);
            let gid = run_output("id", &["-g", user]);
            std::os::unix::fs::chown(
                dir.path(),
                Some(uid.trim().parse().expect("uid")),
                Some(gid.trim().parse().expect("gid")),
            )
            .expect("hand the cluster's directory to postgres");
        }
        let mut cluster = Cluster { dir, port: 0, user };
        cluster.pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        let mut settings = "listen_addresses = '127.0.0.1'\nfsync = off\n".to_owned();
        if let Some(ca) = tls {
            let (cert, key) = ca.server_certificate();
            cluster.write_owned(&data.join("server.crt"), &cert);
            cluster.write_owned(&data.join("server.key"), &key);
            settings.push_str("ssl = on\n");
        } else {
            settings.push_str("ssl = off\n");
        }
        cluster.write_owned(&data.join("postgresql.auto.conf"), &settings);
        // A port found free may be taken before the postmaster binds it.
        for attempt in 1..=3 {
            cluster.port = free_port();
            let options = format!("-p {} -k {}", cluster.port, cluster.dir.path().display());
            let log = cluster.dir.path().join("log");
            let started = cluster.try_pg(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "start".as_ref(),
                ],
            );
            if started.status.success() {
                return Some(cluster);
            }
            assert!(
                attempt < 3,
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&started.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        unreachable!("the loop returns or panics")
    }

    /// The URL of this cluster's `postgres` database on `host`, with `query`.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }

    /// A file the server reads (its key must be its own, mode 0600).
    fn write_owned(&self, path: &Path, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, contents).expect("write a cluster file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if let Some(user) = self.user {
            let owner = format!("{user}:{user}");
            run_output("chown", &[owner.as_str(), &path.display().to_string()]);
        }
    }

    fn pg(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.try_pg(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs one of PostgreSQL's programs as the cluster's user.
    fn try_pg(&self, program: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
        let program = Path::new(PG_BIN).join(program);
        let mut cmd = match self.user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL program")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.try_pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

fn cannot_run<T>(why: &str) -> Option<T> {
    assert!(!in_ci(), "the TLS cluster tests cannot run in CI: {why}");
    eprintln!("skipping: {why}");
    None
}

fn run_output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?} failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Whether every session the store opened (application_name `courier`)
/// on the database of `admin_url` is encrypted, and there is one at least.
async fn store_sessions_use_tls(admin_url: &str, database: &str) -> bool {
    let mut admin = PgConnection::connect(admin_url).await.expect("admin");
    let encrypted: Option<bool> = sqlx::query_scalar(
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.datname = $1 AND a.application_name = 'courier'",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .expect("read pg_stat_ssl");
    let _ = admin.close().await;
    encrypted == Some(true)
}

/// The message of a store that failed to open for TLS's sake.
async fn tls_refusal(url: &str) -> String {
    match store::connect(url).await {
        Err(StoreError::Tls(why)) => why,
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("the store opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_the_machines_postgresql_is_encrypted() {
    let Some(url) = support::fresh_postgres_url().await else {
        return;
    };
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("SHOW ssl");
    let _ = admin.close().await;
    let database = url.rsplit('/').next().unwrap_or_default();
    let database = database.split('?').next().unwrap_or_default().to_owned();
    let separator = if url.contains('?') { '&' } else { '?' };
    if ssl == "on" {
        let store = store::connect(&format!("{url}{separator}sslmode=require"))
            .await
            .expect("sslmode=require opens the store");
        store.ping().await.expect("ping");
        assert!(store_sessions_use_tls(&url, &database).await);
        drop(store);
    } else {
        // This machine's PostgreSQL has no TLS: a cluster of our own has.
        eprintln!("the PostgreSQL at DATABASE_URL has ssl off: using a TLS cluster");
        let Some(cluster) = Cluster::start(Some(&Ca::new("Courier test CA"))) else {
            return;
        };
        let store = store::connect(&cluster.url("127.0.0.1", "sslmode=require"))
            .await
            .expect("sslmode=require opens the store");
        store.ping().await.expect("ping");
        assert!(store_sessions_use_tls(&cluster.url("127.0.0.1", ""), "postgres").await);
    }
    support::release_postgres_db(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_clusters_ca_boots_the_broker_and_stores_a_message() {
    let ca = Ca::new("Courier test CA");
    let Some(cluster) = Cluster::start(Some(&ca)) else {
        return;
    };
    let certs = tempfile::tempdir().expect("dir");
    let ca_file = ca.write(certs.path().join("db-ca.pem"));
    let url = cluster.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", ca_file.display()),
    );

    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start_config(test_config(&dir, url.clone()), dir, None).await;
    let alice = server.user("alice", Role::User).await;
    let channel = server
        .channel("ward-7", ChannelKind::Public, &alice, &[])
        .await;
    let mut client = server.client(&alice, Encoding::MessagePack).await;
    let sent = client
        .send_text(channel, "over TLS")
        .await
        .expect("the send is acked");
    assert_eq!(sent.seq, 1);
    let stored = server
        .app
        .store
        .messages_after(channel, 0, 10)
        .await
        .expect("read back");
    assert_eq!(stored.len(), 1, "the message is in the database");
    assert!(
        store_sessions_use_tls(&cluster.url("127.0.0.1", "sslmode=disable"), "postgres").await,
        "the broker's sessions are encrypted"
    );
    let _ = client.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_host_is_refused_naming_the_cause_once() {
    let ca = Ca::new("Courier test CA");
    let Some(cluster) = Cluster::start(Some(&ca)) else {
        return;
    };
    let certs = tempfile::tempdir().expect("dir");
    let wrong = Ca::new("Some other CA").write(certs.path().join("other-ca.pem"));
    let right = ca.write(certs.path().join("db-ca.pem"));

    let query = format!("sslmode=verify-full&sslrootcert={}", wrong.display());
    let why = tls_refusal(&cluster.url("127.0.0.1", &query)).await;
    assert!(
        why.contains(&format!("not trusted by sslrootcert={}", wrong.display())),
        "{why}"
    );
    // libpq's rule: `require` with a root certificate verifies the chain.
    let query = format!("sslmode=require&sslrootcert={}", wrong.display());
    let why = tls_refusal(&cluster.url("127.0.0.1", &query)).await;
    assert!(why.contains("not trusted by sslrootcert="), "{why}");

    let query = format!("sslmode=verify-full&sslrootcert={}", right.display());
    let why = tls_refusal(&cluster.url("localhost", &query)).await;
    assert!(
        why.contains("not issued for the host localhost (sslmode=verify-full)"),
        "{why}"
    );

    let missing = certs.path().join("missing.pem");
    let query = format!("sslmode=verify-full&sslrootcert={}", missing.display());
    let why = tls_refusal(&cluster.url("127.0.0.1", &query)).await;
    assert!(
        why.contains(&format!("cannot read sslrootcert={}", missing.display())),
        "{why}"
    );

    // The CLI commands open the store the same way, and say it once.
    let query = format!("sslmode=verify-full&sslrootcert={}", wrong.display());
    let data = tempfile::tempdir().expect("dir");
    let spec = BrokerSpec::new(data.path(), &cluster.url("127.0.0.1", &query));
    for command in [&["migrate"][..], &["audit", "verify"][..]] {
        let out = spec.cli(command).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command:?} succeeded: {stderr}");
        assert_eq!(
            stderr.matches("not trusted by sslrootcert=").count(),
            1,
            "{command:?} names the cause once:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_fails_clearly() {
    let Some(cluster) = Cluster::start(None) else {
        return;
    };
    let why = tls_refusal(&cluster.url("127.0.0.1", "sslmode=require")).await;
    assert_eq!(why, "the server does not support TLS but sslmode=require");
    let why = tls_refusal(&cluster.url("127.0.0.1", "sslmode=verify-full")).await;
    assert_eq!(
        why,
        "the server does not support TLS but sslmode=verify-full"
    );
    // `prefer` (the default) and `disable` go on in the clear.
    for query in ["sslmode=prefer", "sslmode=disable", ""] {
        let store = store::connect(&cluster.url("127.0.0.1", query))
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e}"));
        store.ping().await.expect("ping");
    }
}
