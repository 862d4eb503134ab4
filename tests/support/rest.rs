//! REST helpers on top of [`TestServer`]: a server with a known JWT secret
//! and an initial super admin, a `reqwest` client, and calls that return
//! status, headers and JSON body together. Included by the `rest_*` tests
//! with `#[path = "support/rest.rs"] mod rest;` next to `mod support;`.

#![allow(dead_code)]

use std::time::Duration;

use courier::config::{Config, Secret};
use courier_actors::durable::store::{AuditFilter, AuditRecord};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

pub use crate::support::server::{eventually, Backend, TestServer};

/// The JWT secret of test servers, so tests can forge tokens with it.
pub const SECRET: &str = "rest-tests-jwt-secret-0123456789abcdef";
/// The password of every user the helpers create.
pub const PASSWORD: &str = "correct horse battery staple";
/// The initial super admin.
pub const ROOT: &str = "root";
/// The `User-Agent` of the test client.
pub const USER_AGENT: &str = "courier-rest-tests/1";

/// A test server and an HTTP client for it.
pub struct Rest {
    pub server: TestServer,
    pub http: reqwest::Client,
    pub base: String,
}

/// An answer: status, headers and the JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Panics, showing the body, unless the status is `status`.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        self
    }

    /// Panics unless this is an error with `status` and `code`.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(self.status, status, "unexpected answer: {}", self.body);
        assert_eq!(self.code(), code, "unexpected answer: {}", self.body);
        self
    }

    /// `error.code`.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// `error.field`.
    pub fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub username: String,
    pub token: String,
    pub refresh: String,
}

/// Test configuration: a known JWT secret and an initial super admin.
pub fn configure(config: &mut Config) {
    config.jwt_secret = Some(Secret::new(SECRET));
    config.initial_admin_username = Some(ROOT.into());
    config.initial_admin_password = Some(Secret::new(PASSWORD));
}

impl Rest {
    /// A server on `backend`; `None` when PostgreSQL is unreachable outside CI.
    pub async fn start(backend: Backend) -> Option<Rest> {
        Self::start_with(backend, |_| {}).await
    }

    /// A server whose configuration `tweak` adjusts after [`configure`].
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Rest> {
        let server = TestServer::start_with(backend, |c| {
            configure(c);
            tweak(c);
        })
        .await?;
        let base = server.http_url();
        Some(Rest {
            server,
            http: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            base,
        })
    }

    /// Any call. `token` goes in `Authorization: Bearer`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        reply(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// `POST /api/auth/login`, raw.
    pub async fn try_login(&self, username: &str, password: &str) -> Reply {
        self.call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": username, "password": password})),
        )
        .await
    }

    /// Logs in; panics unless it succeeds.
    pub async fn login(&self, username: &str, password: &str) -> Session {
        let reply = self.try_login(username, password).await.expect(200);
        session_of(&reply.body)
    }

    /// The initial super admin, logged in.
    pub async fn root(&self) -> Session {
        self.login(ROOT, PASSWORD).await
    }

    /// Creates a user through `POST /api/users` (as `admin`) and logs in.
    pub async fn user(&self, admin: &Session, username: &str, role: &str) -> Session {
        self.post(
            "/api/users",
            &admin.token,
            json!({"username": username, "password": PASSWORD, "role": role}),
        )
        .await
        .expect(201);
        self.login(username, PASSWORD).await
    }

    /// Sends `text` to `channel` through `POST /api/messages` (201); returns
    /// the message's id.
    pub async fn send(&self, session: &Session, channel: &str, text: &str) -> String {
        let sent = self
            .post(
                "/api/messages",
                &session.token,
                json!({"channelId": channel, "text": text}),
            )
            .await
            .expect(201);
        sent.body["id"].as_str().expect("id").to_owned()
    }

    /// Creates a channel through `POST /api/channels`; returns its id.
    pub async fn channel(&self, owner: &Session, name: &str, kind: &str) -> String {
        let reply = self
            .post(
                "/api/channels",
                &owner.token,
                json!({"name": name, "kind": kind}),
            )
            .await
            .expect(201);
        reply.body["channel"]["id"]
            .as_str()
            .expect("channel id")
            .to_owned()
    }

    /// Adds `user` to `channel` through `POST /api/channels/{id}/members`
    /// (as `owner`).
    pub async fn add_member(&self, owner: &Session, channel: &str, user: &Session) {
        self.post(
            &format!("/api/channels/{channel}/members"),
            &owner.token,
            json!({"userId": user.user_id}),
        )
        .await
        .expect(201);
    }

    /// A WebSocket client of `session`, authenticated and joined to
    /// `channel`.
    pub async fn joined(
        &self,
        session: &Session,
        channel: &str,
    ) -> courier_protocol::client::Client {
        let mut socket = courier_protocol::client::Client::connect(&self.server.ws_url())
            .await
            .expect("connect");
        assert!(socket
            .authenticate(&session.token)
            .await
            .expect("answer")
            .result
            .is_ok());
        socket
            .join(channel.parse().expect("id"), None)
            .await
            .expect("join");
        socket
    }

    /// Audit entries of `action`, once at least `min` exist (the audit
    /// actor appends asynchronously).
    pub async fn audit_entries(&self, action: &str, min: usize) -> Vec<AuditRecord> {
        let store = self.server.app.store.clone();
        let filter = AuditFilter {
            action: Some(action.into()),
            limit: 1000,
            ..AuditFilter::default()
        };
        let mut found = Vec::new();
        eventually(Duration::from_secs(5), async || {
            found = store.list_audit(filter.clone()).await.expect("list audit");
            found.len() >= min
        })
        .await;
        found
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// The tokens and user of a login answer.
pub fn session_of(body: &Value) -> Session {
    Session {
        user_id: body["user"]["id"].as_str().expect("user id").to_owned(),
        username: body["user"]["username"]
            .as_str()
            .expect("username")
            .to_owned(),
        token: body["token"].as_str().expect("token").to_owned(),
        refresh: body["refreshToken"]
            .as_str()
            .expect("refresh token")
            .to_owned(),
    }
}

/// Reads a response into a [`Reply`].
pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply {
        status,
        headers,
        body,
    }
}
