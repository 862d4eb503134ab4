//! Native TLS end to end: a CA and a server certificate made at test time,
//! `https://` REST calls and a `wss://` WebSocket verified against that CA,
//! plain TCP refused on the TLS port, and the start-up checks of the TLS
//! configuration.

#[path = "support/rest.rs"]
mod rest;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use courier::config::{Config, Environment};
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rest::{Backend, Rest, PASSWORD, ROOT};
use serde_json::{json, Value};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// The name the server certificate is issued for.
const HOST: &str = "courier.test";

/// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`: a CA, and a server
/// certificate for [`HOST`] and 127.0.0.1 signed by it. Returns the CA's PEM.
fn make_certificates(dir: &Path) -> String {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Courier test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");

    let mut params = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params.distinguished_name.push(DnType::CommonName, HOST);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("certificate");

    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
    ca.pem()
}

async fn tls_server(certs: &Path) -> Rest {
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    Rest::start_with(Backend::Sqlite, move |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await
    .expect("server")
}

fn https_client(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .resolve(HOST, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_end_to_end() {
    let certs = tempfile::tempdir().expect("dir");
    let ca_pem = make_certificates(certs.path());
    let api = tls_server(certs.path()).await;
    let addr = api.server.addr;
    let https = https_client(&ca_pem, addr);
    let base = format!("https://{HOST}:{}", addr.port());

    let health = https
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("https request");
    assert_eq!(health.status(), 200);
    let login = https
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": ROOT, "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    let login = rest::reply(login).await.expect(200);
    let session = rest::session_of(&login.body);
    let channels = https
        .get(format!("{base}/api/channels"))
        .bearer_auth(&session.token)
        .send()
        .await
        .expect("channels");
    assert_eq!(channels.status(), 200);
    // The client address still reaches the sessions through TLS.
    let sessions = api
        .server
        .app
        .store
        .list_sessions(session.user_id.parse().expect("id"))
        .await
        .expect("sessions");
    assert_eq!(sessions[0].ip.as_deref(), Some("127.0.0.1"));

    // wss:// on the same port, verified against the test CA.
    let mut roots = RootCertStore::empty();
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca der");
    roots.add(ca_der).expect("add root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("wss://{HOST}:{}/ws", addr.port()), tls)
            .await
            .expect("wss upgrade");
    assert_eq!(response.status(), 101);
    ws.send(Message::text(
        json!({"type": "authenticate", "token": session.token, "ref": 1}).to_string(),
    ))
    .await
    .expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("readable");
    let answer: Value = serde_json::from_str(answer.to_text().expect("text")).expect("json");
    assert_eq!(answer["type"], "authentication_response");
    assert_eq!(answer["success"], true, "{answer}");
    let _ = ws.close(None).await;

    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .resolve(HOST, addr)
        .build()
        .expect("client");
    assert!(untrusting
        .get(format!("{base}/health"))
        .send()
        .await
        .is_err());
    // Plain HTTP on the TLS port gets nothing.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    assert!(plain
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .is_err());
    // A failed handshake does not stop the listener.
    let again = https
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("https again");
    assert_eq!(again.status(), 200);
    api.stop().await;
}

/// `Strict-Transport-Security` on every answer of a TLS server, `/api` or
/// not (`tests/edge_hardening.rs` checks its absence without TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_only_with_tls() {
    let certs = tempfile::tempdir().expect("dir");
    let ca_pem = make_certificates(certs.path());
    let api = tls_server(certs.path()).await;
    let https = https_client(&ca_pem, api.server.addr);
    let base = format!("https://{HOST}:{}", api.server.addr.port());
    for path in ["/health", "/metrics", "/api/channels", "/api/no-such-thing"] {
        let answer = https
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("https request");
        let hsts = answer.headers().get("strict-transport-security");
        assert_eq!(
            hsts.and_then(|v| v.to_str().ok()),
            Some("max-age=63072000; includeSubDomains"),
            "{path} {}",
            answer.status()
        );
        assert_eq!(
            answer
                .headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{path}"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn tls_configuration_is_checked_at_start() {
    let certs = tempfile::tempdir().expect("dir");
    make_certificates(certs.path());
    let start = |tweak: Box<dyn FnOnce(&mut Config)>| async move {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("courier.db").display());
        let mut config = support::server::test_config(&dir, url);
        rest::configure(&mut config);
        tweak(&mut config);
        courier::server::start(config)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");

    let (c, k) = (cert.clone(), key.clone());
    assert!(start(Box::new(move |c2| {
        c2.tls_cert = Some(c);
        c2.tls_key = Some(k);
    }))
    .await
    .is_ok());
    let c = cert.clone();
    let only_cert = start(Box::new(move |c2| c2.tls_cert = Some(c)))
        .await
        .expect_err("refused");
    assert!(only_cert.contains("together"), "{only_cert}");
    let (c, k) = (cert.clone(), certs.path().join("missing.pem"));
    let missing = start(Box::new(move |c2| {
        c2.tls_cert = Some(c);
        c2.tls_key = Some(k);
    }))
    .await
    .expect_err("refused");
    assert!(missing.contains("missing.pem"), "{missing}");
    let (c, k) = (cert.clone(), cert.clone());
    let not_a_key = start(Box::new(move |c2| {
        c2.tls_cert = Some(c);
        c2.tls_key = Some(k);
    }))
    .await
    .expect_err("refused");
    assert!(not_a_key.contains("cert.pem"), "{not_a_key}");
    // Production on plain TCP needs trusted_proxies (a TLS-terminating proxy).
    let plain = start(Box::new(|c2| c2.env = Environment::Production))
        .await
        .expect_err("refused");
    assert!(plain.contains("TLS"), "{plain}");
}
