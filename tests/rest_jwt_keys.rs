//! Access tokens signed with a key pair (EdDSA here, configured by
//! `jwt_algorithm` and the PEM key files): the server's own tokens work, and
//! an HS256 token "signed" with the public key — the algorithm-confusion
//! attack — is refused over REST and WebSocket.

mod support;

use base64::Engine;
use courier_actors::durable::store::Role;
use courier_protocol::client::Client;
use support::server::{Backend, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tokens_work_and_hs256_with_the_public_key_is_refused() {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key pair");
    let keys = tempfile::tempdir().expect("tmp");
    let (private, public) = (keys.path().join("jwt.key"), keys.path().join("jwt.pub"));
    std::fs::write(&private, pair.serialize_pem()).expect("write");
    std::fs::write(&public, pair.public_key_pem()).expect("write");
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.jwt_algorithm = "EdDSA".into();
        c.jwt_private_key_file = Some(private.clone());
        c.jwt_public_key_file = Some(public.clone());
    })
    .await
    .expect("server");
    let u = server.user("u", Role::User).await;
    let header = u.token.split('.').next().expect("header");
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("b64");
    assert!(
        String::from_utf8_lossy(&header).contains("EdDSA"),
        "signed with EdDSA"
    );

    let http = reqwest::Client::new();
    let me = format!("{}/api/users/{}", server.http_url(), u.id);
    let ok = http
        .get(&me)
        .bearer_auth(&u.token)
        .send()
        .await
        .expect("http");
    assert_eq!(ok.status().as_u16(), 200);

    // The same claims, HS256, keyed with the public key's PEM text.
    let claims = u.token.split('.').nth(1).expect("claims");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .expect("b64"),
    )
    .expect("json");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
    )
    .expect("forge");
    let refused = http
        .get(&me)
        .bearer_auth(&forged)
        .send()
        .await
        .expect("http");
    assert_eq!(refused.status().as_u16(), 401);
    let mut ws = Client::connect(&server.ws_url()).await.expect("connect");
    assert!(ws
        .authenticate(&forged)
        .await
        .expect("answer")
        .result
        .is_err());
    server.stop().await;
}
