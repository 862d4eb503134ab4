//! The TOTP second factor (issue 37, docs/identity.md "Second factor
//! (TOTP)"), end to end on both stores: a server booted in-process, driven
//! over REST (and the admin console's sign-in), codes computed here from the
//! otpauth URI the server answers.
//!
//! - enrolment needs the current password; the pending secret changes no
//!   login until a current code confirms it; confirmation answers ten
//!   recovery codes; the secret is sealed in the store and no secret or code
//!   is in the audit chain;
//! - login without a code is 401 `second_factor_required`; a wrong, stale or
//!   replayed code is 401 `second_factor_failed`; a fresh one logs in; a
//!   recovery code works once; failures count towards the lockout;
//! - a role in `totp_required_roles` without a second factor gets a session
//!   that may only enrol (REST 403, WebSocket refused) until it does;
//! - disabling one's own (password + code) and an admin's reset;
//! - `keys rotate` re-seals the secrets and `keys retire` refuses while one
//!   is sealed under the version;
//! - the console's sign-in takes the code.

#[macro_use]
mod support;
#[path = "support/rest.rs"]
mod rest;

use std::time::Duration;

use reqwest::Method;
use rest::{Backend, Rest, Session, PASSWORD, ROOT};
use serde_json::{json, Value};
use totp_rs::Totp;

const STEP: u64 = 30;

fn now_step() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / STEP
}

fn code(totp: &Totp, step: u64) -> String {
    totp.generate(step * STEP).to_string()
}

/// A login with a second factor in `extra`.
async fn login_with(rest: &Rest, username: &str, extra: Value) -> rest::Reply {
    let mut body = json!({"username": username, "password": PASSWORD});
    if let (Some(map), Some(more)) = (body.as_object_mut(), extra.as_object()) {
        map.extend(more.clone());
    }
    rest.call(Method::POST, "/api/auth/login", None, Some(body))
        .await
}

/// Enrols and confirms `who`: the app's view of the secret, the step the
/// confirmation used, the recovery codes and the enrolment answer.
async fn enrol(rest: &Rest, who: &Session) -> (Totp, u64, Vec<String>, Value) {
    let enrolment = rest
        .post(
            "/api/auth/totp/enroll",
            &who.token,
            json!({"currentPassword": PASSWORD}),
        )
        .await
        .expect(200);
    let uri = enrolment.body["otpauthUri"].as_str().expect("uri");
    let totp = Totp::from_url(uri).expect("an otpauth URI an app reads");
    let step = now_step();
    let confirmed = rest
        .post(
            "/api/auth/totp/confirm",
            &who.token,
            json!({"code": code(&totp, step)}),
        )
        .await
        .expect(200);
    let codes: Vec<String> = confirmed.body["recoveryCodes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    (totp, step, codes, enrolment.body)
}

/// The text of every audit entry.
async fn audit_text(rest: &Rest) -> String {
    let filter = courier_actors::durable::store::AuditFilter {
        limit: 10_000,
        ..Default::default()
    };
    let entries = rest
        .server
        .app
        .store
        .list_audit(filter)
        .await
        .expect("audit");
    entries
        .iter()
        .map(|e| e.details.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn enrolment_confirmation_and_login(backend: Backend) {
    let Some(rest) = Rest::start_with(backend, |c| c.lockout_threshold = 100).await else {
        return;
    };
    let root = rest.root().await;
    let alice = rest.user(&root, "alice", "user").await;

    // The current password is required.
    rest.post(
        "/api/auth/totp/enroll",
        &alice.token,
        json!({"currentPassword": "not the password"}),
    )
    .await
    .expect_error(403, "forbidden");
    rest.post("/api/auth/totp/enroll", &alice.token, json!({}))
        .await
        .expect_error(400, "invalid_frame");
    // Nothing pending yet.
    rest.post(
        "/api/auth/totp/confirm",
        &alice.token,
        json!({"code": "123456"}),
    )
    .await
    .expect_error(409, "conflict");

    let pending = rest
        .post(
            "/api/auth/totp/enroll",
            &alice.token,
            json!({"currentPassword": PASSWORD}),
        )
        .await
        .expect(200);
    let uri = pending.body["otpauthUri"].as_str().expect("uri");
    assert!(uri.starts_with("otpauth://totp/Courier:alice?"), "{uri}");
    assert!(pending.body["qrCode"]
        .as_str()
        .expect("qr")
        .starts_with("data:image/png;base64,"));
    let secret = pending.body["secret"].as_str().expect("secret").to_owned();
    let totp = Totp::from_url(uri).expect("otpauth");
    // Pending: logins are unchanged.
    rest.login("alice", PASSWORD).await;
    // A wrong code does not confirm it.
    let wrong = rest
        .post(
            "/api/auth/totp/confirm",
            &alice.token,
            json!({"code": code(&totp, now_step() + 5)}),
        )
        .await
        .expect_error(400, "invalid_frame");
    assert_eq!(wrong.field(), "code");
    let step = now_step();
    let confirmed = rest
        .post(
            "/api/auth/totp/confirm",
            &alice.token,
            json!({"code": code(&totp, step)}),
        )
        .await
        .expect(200);
    let codes: Vec<String> = confirmed.body["recoveryCodes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    rest.post(
        "/api/auth/totp/confirm",
        &alice.token,
        json!({"code": code(&totp, step)}),
    )
    .await
    .expect_error(409, "conflict");
    rest.post(
        "/api/auth/totp/enroll",
        &alice.token,
        json!({"currentPassword": PASSWORD}),
    )
    .await
    .expect_error(409, "conflict");

    // Sealed at rest.
    let alice_id = alice.user_id.parse().expect("id");
    let stored = rest
        .server
        .app
        .store
        .totp_secret(alice_id)
        .await
        .expect("read")
        .expect("row");
    assert!(stored.is_active());
    let raw = totp.secret().to_vec();
    assert!(!stored
        .sealed
        .ciphertext
        .windows(raw.len())
        .any(|w| w == &raw[..]));

    // Logins.
    login_with(&rest, "alice", json!({}))
        .await
        .expect_error(401, "second_factor_required");
    login_with(&rest, "alice", json!({"totpCode": "000000x"}))
        .await
        .expect_error(401, "second_factor_failed");
    // The code the confirmation used is spent.
    login_with(&rest, "alice", json!({"totpCode": code(&totp, step)}))
        .await
        .expect_error(401, "second_factor_failed");
    // Stale: four steps back.
    login_with(&rest, "alice", json!({"totpCode": code(&totp, step - 4)}))
        .await
        .expect_error(401, "second_factor_failed");
    let fresh = code(&totp, step + 1);
    let ok = login_with(&rest, "alice", json!({"totpCode": fresh}))
        .await
        .expect(200);
    assert_eq!(ok.body["secondFactorEnrolmentRequired"], false);
    // Replayed, and an earlier step after a later one.
    login_with(&rest, "alice", json!({"totpCode": fresh}))
        .await
        .expect_error(401, "second_factor_failed");
    login_with(&rest, "alice", json!({"totpCode": code(&totp, step)}))
        .await
        .expect_error(401, "second_factor_failed");
    // The wrong password still answers the one 401, whatever the code.
    rest.call(
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"username": "alice", "password": "nope", "totpCode": fresh})),
    )
    .await
    .expect_error(401, "auth_failed");
    // Both kinds at once.
    login_with(
        &rest,
        "alice",
        json!({"totpCode": fresh, "recoveryCode": codes[0]}),
    )
    .await
    .expect_error(400, "invalid_frame");

    // Recovery codes: once each, whatever their spelling.
    let loose = codes[0].replace('-', " ").to_uppercase();
    login_with(&rest, "alice", json!({"recoveryCode": loose}))
        .await
        .expect(200);
    login_with(&rest, "alice", json!({"recoveryCode": codes[0]}))
        .await
        .expect_error(401, "second_factor_failed");
    let used = rest.audit_entries("auth.recovery_code.used", 1).await;
    assert_eq!(used[0].details["left"], 9);

    // Audited, never with the secret or a code.
    rest.audit_entries("auth.totp.enrolled", 1).await;
    let failed = rest.audit_entries("auth.second_factor.failed", 5).await;
    assert!(failed.iter().any(|e| e.details["reason"] == "replayed"));
    assert!(failed.iter().any(|e| e.details["reason"] == "failed"));
    let text = audit_text(&rest).await;
    assert!(!text.contains(&secret));
    for c in &codes {
        assert!(!text.contains(c.as_str()), "a recovery code in the audit");
    }
    assert!(!text.contains(&fresh));
    let metrics = rest.metrics().await;
    assert!(metrics.contains("courier_auth_second_factor_total{result=\"replayed\"}"));

    // Disabling: password and a code (here a recovery code).
    rest.call(
        Method::DELETE,
        "/api/auth/totp",
        Some(&alice.token),
        Some(json!({"currentPassword": PASSWORD, "recoveryCode": "nope-nope-nope-nope"})),
    )
    .await
    .expect_error(403, "forbidden");
    rest.call(
        Method::DELETE,
        "/api/auth/totp",
        Some(&alice.token),
        Some(json!({"currentPassword": PASSWORD, "recoveryCode": codes[1]})),
    )
    .await
    .expect(204);
    rest.login("alice", PASSWORD).await;
    let disabled = rest.audit_entries("auth.totp.disabled", 1).await;
    assert_eq!(disabled[0].details["by"], "self");
    rest.stop().await;
}

async fn failures_count_towards_the_lockout(backend: Backend) {
    let Some(rest) = Rest::start_with(backend, |c| c.lockout_threshold = 3).await else {
        return;
    };
    let root = rest.root().await;
    let bob = rest.user(&root, "bob", "user").await;
    let (totp, step, _, _) = enrol(&rest, &bob).await;
    for _ in 0..3 {
        login_with(&rest, "bob", json!({"totpCode": code(&totp, step + 7)}))
            .await
            .expect_error(401, "second_factor_failed");
    }
    // Locked out: even the right code gets the one 401.
    login_with(&rest, "bob", json!({"totpCode": code(&totp, step + 1)}))
        .await
        .expect_error(401, "auth_failed");
    rest.audit_entries("auth.lockout", 1).await;
    rest.stop().await;
}

async fn required_roles_restrict_sessions_to_enrolment(backend: Backend) {
    let Some(rest) = Rest::start_with(backend, |c| {
        c.totp_required_roles = Some(vec!["admin".into()]);
    })
    .await
    else {
        return;
    };
    let root = rest.root().await;
    rest.post(
        "/api/users",
        &root.token,
        json!({"username": "ada", "password": PASSWORD, "role": "admin"}),
    )
    .await
    .expect(201);
    let login = rest.try_login("ada", PASSWORD).await.expect(200);
    assert_eq!(login.body["secondFactorEnrolmentRequired"], true);
    let ada = rest::session_of(&login.body);
    let refused = rest.get("/api/users", &ada.token).await.expect(403);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("second factor"),
        "{}",
        refused.body
    );
    // Nor over the WebSocket.
    let mut socket = courier_protocol::client::Client::connect(&rest.server.ws_url())
        .await
        .expect("connect");
    let answer = socket.authenticate(&ada.token).await.expect("answer");
    assert!(answer.result.is_err());
    // Enrolment is open to it, and lifts the restriction at once.
    let (totp, step, _, _) = enrol(&rest, &ada).await;
    rest.get("/api/users", &ada.token).await.expect(200);
    login_with(&rest, "ada", json!({}))
        .await
        .expect_error(401, "second_factor_required");
    let again = login_with(&rest, "ada", json!({"totpCode": code(&totp, step + 1)}))
        .await
        .expect(200);
    assert_eq!(again.body["secondFactorEnrolmentRequired"], false);
    // The super admin's role is not in the list.
    rest.get("/api/users", &root.token).await.expect(200);
    rest.stop().await;
}

#[test]
fn production_requires_a_second_factor_of_admins_unless_configured() {
    use courier::config::{Config, Environment};
    use courier_actors::durable::store::Role;
    let production = Config {
        env: Environment::Production,
        ..Config::default()
    };
    assert_eq!(
        production.totp_required_roles(),
        [Role::SuperAdmin, Role::Admin]
    );
    assert!(Config::default().totp_required_roles().is_empty());
    let none = Config {
        env: Environment::Production,
        totp_required_roles: Some(Vec::new()),
        ..Config::default()
    };
    assert!(none.totp_required_roles().is_empty());
    let wrong = Config {
        totp_required_roles: Some(vec!["admins".into()]),
        totp_issuer: "a:b".into(),
        ..Config::default()
    };
    let problems = wrong.check(false).expect_err("refused").to_string();
    assert!(problems.contains("totp_required_roles"), "{problems}");
    assert!(problems.contains("totp_issuer"), "{problems}");
}

async fn an_admin_resets_a_lost_second_factor(backend: Backend) {
    let Some(rest) = Rest::start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let carol = rest.user(&root, "carol", "user").await;
    let dave = rest.user(&root, "dave", "user").await;
    enrol(&rest, &carol).await;
    let path = format!("/api/users/{}/totp", carol.user_id);
    rest.delete(&path, &dave.token)
        .await
        .expect_error(403, "forbidden");
    rest.delete(&format!("/api/users/{}/totp", root.user_id), &root.token)
        .await
        .expect_error(409, "conflict");
    rest.delete(&path, &root.token).await.expect(204);
    rest.delete(&path, &root.token)
        .await
        .expect_error(404, "not_found");
    rest.login("carol", PASSWORD).await;
    let reset = rest.audit_entries("auth.totp.disabled", 1).await;
    assert_eq!(reset[0].details["by"], "admin");
    assert_eq!(reset[0].details["userId"], carol.user_id.as_str());
    rest.stop().await;
}

async fn rotation_reseals_secrets(backend: Backend) {
    let Some(rest) = Rest::start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let erin = rest.user(&root, "erin", "user").await;
    let (totp, step, _, _) = enrol(&rest, &erin).await;
    let config = rest.server.app.config.clone();
    let refused = courier::commands::keys_retire(&config, 1)
        .await
        .expect_err("retired a version a TOTP secret is sealed under");
    assert!(refused.to_string().contains("TOTP"), "{refused}");
    assert_eq!(
        courier::commands::keys_rotate(&config)
            .await
            .expect("rotate"),
        2
    );
    let id = erin.user_id.parse().expect("id");
    let stored = rest.server.app.store.totp_secret(id).await.expect("read");
    assert_eq!(stored.expect("row").sealed.key_version, 2);
    courier::commands::keys_retire(&config, 1)
        .await
        .expect("retire version 1");
    assert!(
        rest::eventually(Duration::from_secs(10), async || !rest
            .server
            .app
            .realtime
            .cipher
            .keyring()
            .contains(1))
        .await,
        "version 1 is gone from the running server"
    );
    let fresh = code(&totp, now_step().max(step + 1));
    login_with(&rest, "erin", json!({"totpCode": fresh}))
        .await
        .expect(200);
    rest.stop().await;
}

async fn the_console_sign_in_takes_the_code(backend: Backend) {
    let Some(rest) = Rest::start(backend).await else {
        return;
    };
    let root = rest.root().await;
    let (totp, step, _, _) = enrol(&rest, &root).await;
    let sign_in = |body: Value| {
        let rest = &rest;
        async move {
            rest::reply(
                rest.http
                    .post(format!("{}/admin/session", rest.base))
                    .json(&body)
                    .send()
                    .await
                    .expect("request"),
            )
            .await
        }
    };
    sign_in(json!({"username": ROOT, "password": PASSWORD}))
        .await
        .expect_error(401, "second_factor_required");
    let signed = sign_in(json!({
        "username": ROOT, "password": PASSWORD, "totpCode": code(&totp, step + 1)
    }))
    .await
    .expect(200);
    assert_eq!(signed.body["secondFactorEnrolled"], true);
    assert_eq!(signed.body["secondFactorEnrolmentRequired"], false);
    rest.stop().await;
}

both_backends!(
    enrolment_confirmation_and_login,
    failures_count_towards_the_lockout,
    required_roles_restrict_sessions_to_enrolment,
    an_admin_resets_a_lost_second_factor,
    rotation_reseals_secrets,
    the_console_sign_in_takes_the_code,
);
