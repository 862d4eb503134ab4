//! The `courier` binary: parse the command line, load the configuration,
//! and run the server or one of the maintenance commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use courier::backup;
use courier::commands::{self, CommandError};
use courier::config::{Config, ConfigError, Overrides};
use courier::export;
use courier::secrets::SecretsError;
use courier::server::ServerError;
use courier::telemetry;

#[derive(Parser)]
#[command(
    name = "courier",
    version,
    about = "Realtime messaging broker with encryption at rest and an audit chain"
)]
struct Cli {
    /// A TOML configuration file (default: config/default.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the embedded database, generated secrets and audit checkpoints live.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// `sqlite://...` or `postgres://...`.
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP and WebSocket (the default).
    Serve {
        /// The address to listen on.
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
    },
    /// Apply database migrations.
    Migrate,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// The audit chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Master keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Retention: what the next run would do.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Compliance reports.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// One archive of the database, the data directory's keys and
    /// checkpoints, and the local file store's objects (docs/backup.md);
    /// online: the broker may run meanwhile.
    Backup {
        /// The archive to write (it must not exist); created 0600: it holds
        /// the keyring.
        #[arg(long)]
        out: PathBuf,
        /// The directory of `pg_dump` (PostgreSQL; default: found on PATH).
        #[arg(long)]
        pg_bin: Option<PathBuf>,
    },
    /// Put a backup back into an empty data directory and database, check
    /// it and verify the restored audit chain (exit 2 when it does not).
    Restore {
        /// The archive `courier backup` wrote.
        #[arg(long)]
        from: PathBuf,
        /// Replace the data directory's files that exist (stop the broker
        /// first); a PostgreSQL database must be empty all the same.
        #[arg(long)]
        force: bool,
        /// The directory of `pg_restore` (PostgreSQL; default: found on PATH).
        #[arg(long)]
        pg_bin: Option<PathBuf>,
    },
    /// A signed compliance export of a channel or of a patient's channels,
    /// as JSON Lines with `FILE.sig` beside it (docs/export.md); `export
    /// verify FILE` checks one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Export {
        #[command(subcommand)]
        command: Option<ExportCommand>,
        #[command(flatten)]
        args: ExportArgs,
    },
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The channel to export (its id).
    #[arg(long, required_unless_present = "patient", conflicts_with = "patient")]
    channel: Option<courier_protocol::ChannelId>,
    /// The patient whose channels to export (`Patient/123`, `system|value`).
    #[arg(long)]
    patient: Option<String>,
    /// The file to write (it must not exist); the signature goes to FILE.sig.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// The username of whoever takes the export (needs `audit.read`, and
    /// `patients.read` for `--patient`); the audit entry names them.
    #[arg(long, required = true)]
    actor: Option<String>,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Check an export: its signature, its hash, every audit entry against
    /// the stored chain, the chain head; exit 2 on any mismatch.
    Verify {
        /// The export file (its signature is FILE.sig).
        file: PathBuf,
        /// Verify with these public keys alone (`mk1:<hex>`, as `courier
        /// audit public-key` prints them); the master keys are not needed.
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// The accounting of disclosures of a patient, from the audit chain:
    /// every read of their messages, by whom, when, from where; exit 2
    /// when the chain is broken over the window.
    Disclosures {
        /// The patient reference (`Patient/123`, `system|value`).
        #[arg(long)]
        patient: String,
        /// Window start, included: ms since the epoch or RFC 3339 (the epoch).
        #[arg(long)]
        from: Option<String>,
        /// Window end, excluded: ms since the epoch or RFC 3339 (now).
        #[arg(long)]
        to: Option<String>,
        /// JSON Lines (one row a line, then the summary) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// The dry run: per message kind, what the next retention run would
    /// expire and purge, and what legal holds keep; changes nothing.
    Report {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from stdin or a prompt.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long, default_value = "user")]
        role: String,
        #[arg(long)]
        email: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the chain from genesis and check every checkpoint; exit 2
    /// when it was tampered with.
    Verify {
        /// Also check the checkpoints a webhook receiver kept (GET, JSON).
        #[arg(long)]
        checkpoints_url: Option<String>,
        /// Also check checkpoints exported elsewhere (a JSON array, or one
        /// checkpoint per line).
        #[arg(long)]
        checkpoints_file: Option<PathBuf>,
        /// Verify signatures with these public keys alone (`<key id>:<hex>`,
        /// comma-separated, as `courier audit public-key` prints them); the
        /// master keys are not needed.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print the public keys that verify checkpoint signatures.
    PublicKey,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add and activate a new master key version; re-encrypt old rows.
    Rotate,
    /// Remove a master key version no message uses any more.
    Retire {
        #[arg(long)]
        version: u32,
    },
}

/// jemalloc instead of glibc's malloc: connects and disconnects allocate
/// and free many small objects on two threads, and glibc's arenas spent
/// about a tenth of the churn profile in `_int_malloc`, `_int_free` and
/// consolidation. Measured in benches/README.md (eleventh pass): churn
/// connects/s up about 12 %, the idle server's RSS 30 MiB lower, fanout
/// unchanged. mimalloc was tried too and cost 1.5–2 KiB more per idle
/// connection.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The exit status of a configuration that cannot be used, production's
/// missing pieces included (`EX_CONFIG` of sysexits.h). Other failures exit
/// with 1, clap's usage errors with 2, and so does `audit verify` when the
/// chain is tampered with.
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { bind: None });
    let bind = match &command {
        Command::Serve { bind } => *bind,
        _ => None,
    };
    let overrides = Overrides {
        bind,
        data_dir: cli.data_dir,
        database_url: cli.database_url,
    };
    let loaded = match command {
        Command::Serve { .. } => Config::load_to_serve(cli.config.as_deref(), &overrides),
        _ => Config::load(cli.config.as_deref(), &overrides),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => return fail(&e.into()),
    };
    telemetry::init_logging(config.log_format, &config.log_level);
    match run(command, config).await {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

/// Runs one command; its exit status when it did not fail.
async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { .. } => {
            let listener = tokio::net::TcpListener::bind(config.bind)
                .await
                .with_context(|| format!("cannot listen on {}", config.bind))?;
            courier::run(listener, config, shutdown_signal()).await?;
        }
        Command::Migrate => commands::migrate(&config).await?,
        Command::User {
            command:
                UserCommand::Create {
                    username,
                    role,
                    email,
                },
        } => {
            commands::create_user(&config, &username, &role, email).await?;
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    checkpoints_url,
                    checkpoints_file,
                    public_key,
                },
        } => {
            let options = commands::VerifyOptions {
                checkpoints_url,
                checkpoints_file,
                public_keys: public_key,
            };
            let report = commands::audit_verify_with(&config, &options).await?;
            if !report.ok {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Audit {
            command: AuditCommand::PublicKey,
        } => commands::audit_public_key(&config)?,
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            commands::keys_rotate(&config).await?;
        }
        Command::Keys {
            command: KeysCommand::Retire { version },
        } => commands::keys_retire(&config, version).await?,
        Command::Retention {
            command: RetentionCommand::Report { json },
        } => {
            courier::retention_report::run(&config, json).await?;
        }
        Command::Report {
            command:
                ReportCommand::Disclosures {
                    patient,
                    from,
                    to,
                    json,
                },
        } => {
            let request = courier::disclosures_report::Request {
                patient,
                from,
                to,
                json,
            };
            let outcome = courier::disclosures_report::run(&config, &request).await?;
            if matches!(
                outcome,
                courier::disclosures_report::Outcome::Tampered { .. }
            ) {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Backup { out, pg_bin } => {
            backup::backup(&config, &backup::BackupOptions { out, pg_bin }).await?;
        }
        Command::Restore {
            from,
            force,
            pg_bin,
        } => {
            let options = backup::RestoreOptions {
                from,
                force,
                pg_bin,
            };
            if !backup::restore(&config, &options).await?.audit.ok {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Export {
            command: Some(ExportCommand::Verify { file, public_key }),
            ..
        } => {
            let options = export::VerifyOptions {
                file,
                public_keys: public_key,
            };
            if !export::verify(&config, &options).await?.ok {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Export {
            command: None,
            args,
        } => {
            let scope = match (args.channel, args.patient) {
                (Some(channel), _) => export::ExportScope::Channel(channel),
                (None, Some(patient)) => export::ExportScope::Patient(
                    courier_protocol::PatientRef::parse(&patient)
                        .map_err(|e| anyhow::anyhow!("--patient: {e}"))?,
                ),
                (None, None) => anyhow::bail!("--channel or --patient is required"),
            };
            let options = export::ExportOptions {
                scope,
                out: args.out.context("--out is required")?,
                actor: args.actor.context("--actor is required")?,
            };
            export::export(&config, &options).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints why the command failed, once and as one message: each cause
/// only when the message does not already say it, and never a backtrace
/// (which `RUST_BACKTRACE=1` would add to the `Debug` form). Returns the
/// exit status: [`EXIT_CONFIG`] when the configuration is to blame.
fn fail(error: &anyhow::Error) -> ExitCode {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    eprintln!("courier: {message}");
    if error.chain().any(is_config_error) {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

/// Whether an error is the configuration's: invalid values, production
/// without its secrets or TLS, unusable secrets or TLS files.
fn is_config_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let secrets =
        |e: &SecretsError| matches!(e, SecretsError::Missing(_) | SecretsError::Invalid { .. });
    let server = |e: &ServerError| match e {
        ServerError::Config(_) | ServerError::Refused(_) => true,
        ServerError::Secrets(s) => secrets(s),
        _ => false,
    };
    let command = |e: &CommandError| match e {
        CommandError::Server(s) => server(s),
        CommandError::Secrets(s) => secrets(s),
        _ => false,
    };
    if error.is::<ConfigError>() {
        true
    } else if let Some(e) = error.downcast_ref::<ServerError>() {
        server(e)
    } else if let Some(e) = error.downcast_ref::<SecretsError>() {
        secrets(e)
    } else if let Some(e) = error.downcast_ref::<CommandError>() {
        command(e)
    } else if let Some(e) = error.downcast_ref::<backup::BackupError>() {
        match e {
            backup::BackupError::Server(s) => server(s),
            backup::BackupError::Secrets(s) => secrets(s),
            backup::BackupError::Command(c) => command(c),
            _ => false,
        }
    } else if let Some(e) = error.downcast_ref::<export::ExportError>() {
        match e {
            export::ExportError::Server(s) => server(s),
            export::ExportError::Secrets(s) => secrets(s),
            export::ExportError::Command(c) => command(c),
            _ => false,
        }
    } else {
        false
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
