//! A Courier server booted in-process on port 0 for integration tests, with
//! helpers to make users, channels and authenticated WebSocket clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use courier::config::Config;
use courier::http::App;
use courier::server::{self, Started};
use courier_actors::durable::store::{
    Channel, ChannelKind, ChannelRole, Member, NewUser, Role, Session, WriteOp,
};
use courier_protocol::client::Client;
use courier_protocol::codec::Encoding;
use courier_protocol::{ChannelId, SessionId, UserId};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which store a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    pub dir: TempDir,
    pg_url: Option<String>,
}

/// A user with a live session and an access token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: UserId,
    pub username: String,
    pub session_id: SessionId,
    pub token: String,
}

/// A configuration for tests: a temporary data directory, cheap argon2,
/// limits high enough not to get in the way.
pub fn test_config(dir: &TempDir, database_url: String) -> Config {
    Config {
        data_dir: dir.path().to_path_buf(),
        database_url: Some(database_url),
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        send_per_minute: 1_000_000,
        rest_per_15min: 1_000_000,
        auth_per_15min: 1_000_000,
        // The load tests open thousands of sockets from 127.0.0.1.
        max_unauthenticated_per_ip: 1_000_000,
        max_connections_per_ip: 1_000_000,
        register_per_hour: 1_000_000,
        ..Config::default()
    }
}

impl TestServer {
    /// Starts a server; `None` when the backend is PostgreSQL and it is
    /// unreachable outside CI (in CI that panics instead).
    pub async fn start(backend: Backend) -> Option<TestServer> {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after `tweak` adjusts its configuration.
    pub async fn start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut Config),
    ) -> Option<TestServer> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (url, pg_url) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("courier.db").display()),
                None,
            ),
            Backend::Postgres => {
                let url = super::fresh_postgres_url().await?;
                (url.clone(), Some(url))
            }
        };
        let mut config = test_config(&dir, url);
        tweak(&mut config);
        Some(Self::start_config(config, dir, pg_url).await)
    }

    /// Starts a server with exactly this configuration.
    pub async fn start_config(config: Config, dir: TempDir, pg_url: Option<String>) -> TestServer {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_config_at(config, dir, pg_url, loopback).await
    }

    /// [`TestServer::start_config`] listening on `bind` (`[::1]:0` for IPv6).
    pub async fn start_config_at(
        config: Config,
        dir: TempDir,
        pg_url: Option<String>,
        bind: SocketAddr,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let started: Started = server::start(config).await.expect("server starts");
        let app = started.app.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            server::serve(listener, started, shutdown)
                .await
                .expect("server runs");
        });
        TestServer {
            addr,
            app,
            shutdown: Some(tx),
            task: Some(task),
            dir,
            pg_url,
        }
    }

    /// The PostgreSQL database this server uses (`None` on SQLite).
    pub fn pg_url(&self) -> Option<&str> {
        self.pg_url.as_deref()
    }

    /// `ws://.../ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://...`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A user with a session and a token, made directly in the store.
    pub async fn user(&self, username: &str, role: Role) -> TestUser {
        let store = &self.app.store;
        let user = store
            .create_user(NewUser {
                id: UserId::new(),
                username: username.to_owned(),
                email: None,
                password_hash: "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
                role,
                created_at: courier_actors::now_ms(),
            })
            .await
            .expect("create user");
        let session = self.session_for(user.id).await;
        let (token, _) = self.app.tokens.issue(user.id, session).expect("token");
        TestUser {
            id: user.id,
            username: user.username,
            session_id: session,
            token,
        }
    }

    /// A new valid session of a user.
    pub async fn session_for(&self, user: UserId) -> SessionId {
        let now = courier_actors::now_ms();
        let session = Session {
            id: SessionId::new(),
            user_id: user,
            token_hash: format!("{:064x}", rand_u128()),
            created_at: now,
            expires_at: now + 3_600_000,
            ip: None,
            user_agent: None,
            valid: true,
            kind: courier_actors::durable::store::SessionKind::Api,
            last_seen_at: None,
        };
        let id = session.id;
        self.app
            .store
            .create_session(session)
            .await
            .expect("session");
        id
    }

    /// A channel owned by `owner` with `members` as plain members.
    pub async fn channel(
        &self,
        name: &str,
        kind: ChannelKind,
        owner: &TestUser,
        members: &[&TestUser],
    ) -> ChannelId {
        let now = courier_actors::now_ms();
        let channel = Channel {
            id: ChannelId::new(),
            name: name.to_owned(),
            description: None,
            kind,
            created_by: owner.id,
            created_at: now,
            direct_key: None,
            archived_at: None,
            patient_ref: None,
            patient_tag: None,
        };
        let id = channel.id;
        let member = |user: UserId, role| Member {
            channel_id: id,
            user_id: user,
            role,
            joined_at: now,
            last_read_seq: 0,
            last_delivered_seq: 0,
        };
        self.app
            .store
            .create_channel(channel, member(owner.id, ChannelRole::Owner))
            .await
            .expect("create channel");
        for m in members {
            self.app
                .realtime
                .persistence
                .write(WriteOp::UpsertMember(member(m.id, ChannelRole::Member)))
                .await
                .expect("add member");
        }
        id
    }

    /// A connected, authenticated client.
    pub async fn client(&self, user: &TestUser, encoding: Encoding) -> Client {
        let mut client = Client::builder(self.ws_url())
            .encoding(encoding)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect");
        let response = client
            .authenticate(&user.token)
            .await
            .expect("authenticate");
        assert!(
            response.result.is_ok(),
            "authentication refused: {response:?}"
        );
        client
    }

    /// Shuts down gracefully and starts again on the same database and data
    /// directory, with the same configuration (a restart).
    pub async fn restart(mut self) -> TestServer {
        let pg_url = self.pg_url.take();
        self.stop_in_place().await;
        let config = (*self.app.config).clone();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("dir"));
        Self::start_config(config, dir, pg_url).await
    }

    /// Shuts down gracefully and waits for it.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        if let Some(url) = self.pg_url.take() {
            super::release_postgres_db(&url).await;
        }
    }
}

fn rand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
