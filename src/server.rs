//! Starting and stopping a Courier server.
//!
//! [`run`] takes a bound listener, the configuration and a shutdown future,
//! so `main` passes SIGINT/SIGTERM and tests pass a oneshot. It resolves the
//! secrets, opens and migrates the store, creates the initial admin, starts
//! the actor tree and serves HTTP and WebSocket on the listener until the
//! shutdown future completes; then it stops accepting, tells every
//! connection, flushes queued writes and the audit chain, closes sockets with
//! 1001 and returns.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_actors::audit::actor::AuditConfig;
use courier_actors::audit::chain::PendingAudit;
use courier_actors::cluster::{Cluster, ClusterError};
use courier_actors::crypto::{Keyring, MessageCipher};
use courier_actors::durable::persistence::PersistenceConfig;
use courier_actors::durable::private_files;
use courier_actors::durable::store::{self, DynStore, NewUser, Role, StoreError, User};
use courier_actors::policy::phi::{PhiDetector, PhiKind};
use courier_actors::realtime::{Limits, Realtime, RealtimeDeps};
use courier_protocol::UserId;
use tokio::net::TcpListener;

use crate::auth::lockout::LoginGuard;
use crate::auth::passwords::{PasswordError, Passwords};
use crate::auth::policy::{self, PolicyError};
use crate::auth::tokens::Tokens;
use crate::auth::SessionAuthenticator;
use crate::config::Config;
use crate::http::{self, App};
use crate::secrets::{self, SecretsError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    // Transparent: the store's message says what failed, once (a prefix
    // here and `#[from]`'s source made anyhow print it twice).
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The configuration as a whole (every problem, production's needs too).
    #[error(transparent)]
    Refused(#[from] crate::config::ConfigError),
    /// A setting breaks the rule every account is held to.
    #[error("{setting}: {rule}")]
    Policy {
        setting: &'static str,
        rule: PolicyError,
    },
    #[error("password hashing: {0}")]
    Passwords(#[from] PasswordError),
    #[error("cannot start the actors: {0}")]
    Actors(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Webhook(#[from] crate::audit_webhook::WebhookError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// How long a starting broker waits for the store's writer lock: a crashed
/// predecessor's session ends within milliseconds, one that is shutting down
/// gracefully within its drain time.
const WRITER_LOCK_WAIT: Duration = Duration::from_secs(15);

/// A started server's parts, before it serves.
pub struct Started {
    pub app: Arc<App>,
    /// This process is the store's only writer while this lives (until
    /// `serve` returns); `None` in a cluster, whose nodes all write (each
    /// channel's `seq` by its owner, the audit chain one append at a time).
    writer: Option<store::WriterLock>,
    keyring_file: Option<PathBuf>,
    /// Set when `tls_cert`/`tls_key` are: connections are TLS-terminated here.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Delivers checkpoints to `audit_checkpoint_webhook`, when set.
    webhook: Option<crate::audit_webhook::WebhookTask>,
}

/// Opens the store named by the configuration (creating the data directory
/// and the SQLite file when needed) and migrates it.
pub async fn open_store(config: &Config) -> Result<DynStore, ServerError> {
    prepare_data_dir(config)?;
    Ok(store::connect_with(&config.database_url(), &config.pool()).await?)
}

/// Creates the data directory 0700, or narrows an existing one (to 0700)
/// and the files Courier keeps in it (to 0600) with a warning for each:
/// its generated secrets and audit checkpoints here, the SQLite files in the
/// store (wherever they are). Other files in it are left alone.
pub fn prepare_data_dir(config: &Config) -> Result<(), ServerError> {
    let dir = &config.data_dir;
    private_files::create_dir_all(dir).map_err(|e| ServerError::DataDir(dir.clone(), e))?;
    private_files::narrow(dir);
    for file in [secrets::JWT_FILE, secrets::KEYRING_FILE] {
        private_files::narrow(&dir.join(file));
    }
    private_files::narrow(&config.checkpoint_file());
    Ok(())
}

/// The password hasher the configuration asks for.
pub fn passwords(config: &Config) -> Result<Passwords, ServerError> {
    Ok(Passwords::new(
        config.argon2_memory_kib,
        config.argon2_iterations,
        config.argon2_parallelism,
        config.argon2_max_concurrent,
    )?)
}

/// Everything before serving: secrets, store, admin, actors.
pub async fn start(config: Config) -> Result<Started, ServerError> {
    crate::telemetry::prometheus();
    config.check(true)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::tls::server_config(cert, key).map_err(|e| ServerError::Config(e.to_string()))?,
        ),
        // `check` refused one without the other.
        _ => None,
    };
    prepare_data_dir(&config)?;
    let secrets = secrets::resolve(&config)?;
    let store = open_store(&config).await?;
    // Before anything reads a `seq` or the audit chain head from the store.
    let (writer, cluster) = match config.cluster() {
        None => (Some(store.lock_writer(WRITER_LOCK_WAIT).await?), None),
        Some(cluster) => (None, Some(Cluster::connect(cluster).await?)),
    };
    let passwords = passwords(&config)?;
    let initial_admin = bootstrap_admin(&config, &*store, &passwords).await?;

    let phi_kinds = config
        .phi_detectors
        .iter()
        .map(|name| {
            name.parse::<PhiKind>()
                .map_err(|_| ServerError::Config(format!("unknown PHI detector {name:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let keyring = Arc::new(secrets.keyring.clone());
    let cipher = Arc::new(MessageCipher::new(secrets.keyring));
    let tokens = Arc::new(tokens(&config, &secrets.jwt_secret)?);
    let (checkpoint_sink, webhook) = match &config.audit_checkpoint_webhook {
        Some(url) => {
            let (tx, task) = crate::audit_webhook::spawn(
                url,
                config.audit_checkpoint_webhook_secret.clone(),
                config.audit_checkpoint_webhook_queue,
            )?;
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let files_config = config.files();
    if files_config.scanner.is_none() && !files_config.require_scanner {
        tracing::warn!(
            "COURIER_FILES_CLAMD_URL is not set: uploads are stored without a virus scan \
             (production refuses them)"
        );
    }
    let objects = courier_actors::files::storage::open(&config.files_store, &config.data_dir)
        .map_err(ServerError::Config)?;
    let files =
        courier_actors::files::Files::new(files_config, objects, store.clone(), cipher.clone());
    let deps = RealtimeDeps {
        store: store.clone(),
        files: files.clone(),
        cipher,
        phi: Arc::new(PhiDetector::new(phi_kinds)),
        authenticator: Arc::new(SessionAuthenticator {
            tokens: tokens.clone(),
            store: store.clone(),
            password_max_age_days: config.password_max_age_days,
            totp_required_roles: config.totp_required_roles(),
        }),
        limits: Limits {
            max_text_bytes: config.max_text_bytes,
            send_per_minute: config.send_per_minute,
            outbound_queue: config.outbound_queue_frames,
            outbound_queue_bytes: config.outbound_queue_bytes,
            auth_timeout: Duration::from_millis(config.auth_timeout_ms),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        },
        persistence: PersistenceConfig {
            batch_max: config
                .persist_batch_max
                .unwrap_or_else(|| store.batch_max()),
            batch_delay: Duration::from_micros(config.persist_batch_delay_us),
            commits_in_flight: config.persist_commits_in_flight,
            queue_capacity: config.persist_queue_capacity,
        },
        audit: AuditConfig {
            queue_capacity: 100_000,
            checkpoint_every: config.audit_checkpoint_every,
            batch_delay: Duration::from_micros(config.audit_batch_delay_us),
            checkpoint_interval: Duration::from_secs(config.audit_checkpoint_interval_secs.max(1)),
            append_timeout: Duration::from_millis(config.audit_append_timeout_ms.max(1)),
            checkpoint_file: config.checkpoint_file(),
            checkpoint_sink,
            keyring,
            linked: cluster.is_some(),
        },
        retention: config.retention(),
        recovery_limit: config.recovery_limit,
        recovery_max_replay: config.recovery_max_replay,
        typing_expiry: Duration::from_millis(config.typing_expiry_ms),
        fanout_coalesce: Duration::from_micros(config.fanout_coalesce_us),
        delivery_flush: Duration::from_secs(config.audit_delivery_flush_secs.max(1)),
        cluster,
        break_glass_sweep: Duration::from_millis(config.break_glass_sweep_ms),
    };
    let realtime = Realtime::start(deps)
        .await
        .map_err(|e| ServerError::Actors(e.to_string()))?;
    if let Some(admin) = initial_admin {
        // Recorded as `POST /api/users` records a creation, the actor being
        // the system (no actor id, no address).
        // Committed before the server serves anyone.
        realtime
            .audit
            .append(PendingAudit::new(
                None,
                None,
                "user.create",
                user_created(&admin),
            ))
            .await
            .map_err(|e| ServerError::Actors(e.to_string()))?;
    }
    realtime.audit.record(PendingAudit::new(
        None,
        None,
        "server.start",
        config.summary(),
    ));
    let rate_limits = crate::runtime_settings::RateLimits::new(&config);
    rate_limits.load(&store, &realtime).await?;
    let app = Arc::new(App {
        rate_limits,
        admission: crate::admission::Admission::new(
            config.max_unauthenticated_per_ip,
            config.max_connections_per_ip,
        ),
        network: crate::network::Network::new(&config)
            .map_err(|e| ServerError::Config(e.to_string()))?,
        started_at: std::time::Instant::now(),
        login_guard: LoginGuard::new(&config),
        config: Arc::new(config),
        store,
        files,
        realtime,
        tokens,
        passwords,
    });
    Ok(Started {
        app,
        writer,
        keyring_file: secrets.keyring_file,
        tls,
        webhook,
    })
}

/// The access-token signer the configuration asks for: HS256 with the JWT
/// secret (the default), or RS256/EdDSA with a key pair from PEM files.
fn tokens(config: &Config, secret: &crate::config::Secret) -> Result<Tokens, ServerError> {
    use crate::auth::tokens::KeyPairAlgorithm;
    let algorithm = match config.jwt_algorithm.as_str() {
        "HS256" => {
            return Ok(Tokens::hs256(
                secret,
                &config.jwt_issuer,
                &config.jwt_audience,
                config.access_token_ttl_secs,
            ))
        }
        "RS256" => KeyPairAlgorithm::Rs256,
        "EdDSA" => KeyPairAlgorithm::EdDsa,
        other => {
            return Err(ServerError::Config(format!(
                "jwt_algorithm must be HS256, RS256 or EdDSA, not {other:?}"
            )))
        }
    };
    let read = |name: &str, path: &Option<PathBuf>| {
        let path = path.as_ref().ok_or_else(|| {
            ServerError::Config(format!(
                "jwt_algorithm {} needs {name}",
                config.jwt_algorithm
            ))
        })?;
        std::fs::read(path)
            .map_err(|e| ServerError::Config(format!("{name} {}: {e}", path.display())))
    };
    let private = read("jwt_private_key_file", &config.jwt_private_key_file)?;
    let public = read("jwt_public_key_file", &config.jwt_public_key_file)?;
    Tokens::key_pair(
        algorithm,
        &private,
        &public,
        &config.jwt_issuer,
        &config.jwt_audience,
        config.access_token_ttl_secs,
    )
    .map_err(|e| ServerError::Config(format!("JWT keys: {e}")))
}

/// Serves on `listener` until `shutdown` completes, then shuts down
/// gracefully. Returns when everything is flushed and closed.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let started = start(config).await?;
    serve(listener, started, shutdown).await
}

/// Serves a started server (see [`run`]).
pub async fn serve(
    listener: TcpListener,
    started: Started,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let app = started.app;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = app.store.backend(), "courier listening");
    let reload = started
        .keyring_file
        .map(|file| tokio::spawn(watch_keyring(file, app.clone())));
    let router = http::router(app.clone());
    let deadlines = crate::accept::Deadlines {
        header: Duration::from_millis(app.config.http_header_timeout_ms),
        body: Duration::from_millis(app.config.http_body_timeout_ms),
        upload: Duration::from_secs(app.config.files_upload_timeout_secs),
    };
    // The accept loop runs as a task on the workers rather than on the
    // thread that called this (`main`'s, outside the workers): there every
    // accept and every finished connection woke that thread, and every
    // connection it spawned crossed back to a worker. In a `JoinSet`, so
    // that dropping this future stops the loop as it did before.
    let mut accepting = tokio::task::JoinSet::new();
    match started.tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            accepting.spawn(crate::accept::serve(listener, router, deadlines, shutdown));
        }
        None => {
            // Frames are small and latency matters: no Nagle delay (the TLS
            // listener sets the same).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            accepting.spawn(crate::accept::serve(listener, router, deadlines, shutdown));
        }
    }
    if let Some(Err(e)) = accepting.join_next().await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    tracing::info!("shutting down: flushing queued writes");
    if let Some(task) = reload {
        task.abort();
    }
    app.realtime.shutdown(Duration::from_secs(5)).await;
    if let Some(webhook) = started.webhook {
        // The drain signed a final checkpoint: let it leave the machine too.
        webhook.finish(Duration::from_secs(5)).await;
    }
    drop(started.writer);
    tracing::info!("shutdown complete");
    Ok(())
}

/// The `details` of a `user.create` audit entry, wherever the user was made.
pub fn user_created(user: &User) -> serde_json::Value {
    serde_json::json!({"userId": user.id, "username": user.username, "role": user.role})
}

/// Holds a new account's username and password to the policy of every
/// account ([`policy`]); a refusal names the setting and the rule.
pub fn check_new_account(
    config: &Config,
    username: (&'static str, &str),
    password: (&'static str, &str),
) -> Result<(), ServerError> {
    policy::username(username.1).map_err(|rule| ServerError::Policy {
        setting: username.0,
        rule,
    })?;
    policy::password(config.password_min_length, password.1, username.1).map_err(|rule| {
        ServerError::Policy {
            setting: password.0,
            rule,
        }
    })
}

/// Creates the initial super admin from configuration on a store with no
/// users, held to the password policy of every account; returns it when
/// it was created.
async fn bootstrap_admin(
    config: &Config,
    store: &dyn store::Store,
    passwords: &Passwords,
) -> Result<Option<User>, ServerError> {
    let (Some(username), Some(password)) = (
        &config.initial_admin_username,
        &config.initial_admin_password,
    ) else {
        return Ok(None);
    };
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    check_new_account(
        config,
        ("initial_admin_username", username),
        ("initial_admin_password", password.expose()),
    )?;
    let hash = passwords.hash(password.expose().to_owned()).await?;
    let user = store
        .create_user(NewUser {
            id: UserId::new(),
            username: username.clone(),
            email: None,
            password_hash: hash,
            role: Role::SuperAdmin,
            created_at: courier_actors::now_ms(),
        })
        .await?;
    tracing::info!(username = %username, "created the initial super admin");
    Ok(Some(user))
}

/// Reloads the keyring file when it changes (after `courier keys rotate`),
/// so a new master key version encrypts new writes at once.
async fn watch_keyring(file: PathBuf, app: Arc<App>) {
    let modified = |f: &PathBuf| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&file);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = modified(&file);
        if now == seen {
            continue;
        }
        seen = now;
        match Keyring::load_file(&file) {
            Ok(ring) => {
                let active = ring.active_version();
                app.realtime.cipher.install(ring);
                tracing::info!(active_version = active, "keyring reloaded");
                let appended = app
                    .realtime
                    .audit
                    .append(PendingAudit::new(
                        None,
                        None,
                        "keys.reload",
                        serde_json::json!({"activeVersion": active}),
                    ))
                    .await;
                if let Err(e) = appended {
                    tracing::error!(error = %e, active_version = active, "the keys.reload audit entry is not durable yet");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "keyring file changed but cannot be read; keeping the old one")
            }
        }
    }
}
