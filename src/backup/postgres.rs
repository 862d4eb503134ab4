//! PostgreSQL's side of a backup: `pg_dump` and `pg_restore` run as child
//! processes, and the two questions asked of the database directly (its
//! schema version; whether a restore's target is empty).
//!
//! The tools are looked up in `--pg-bin DIR` when given, else on `PATH`;
//! they must be of the server's major version or newer (`pg_dump` refuses an
//! older one's server). The database URL is passed as libpq's connection
//! URI without its password, which goes in `PGPASSWORD`: a password on the
//! command line would show in `ps`. A tool that fails leaves its stderr in
//! the error; a half-written dump is removed with the staging directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::{Connection, PgConnection};

use super::BackupError;

/// The schema version and the connection, as the backup and restore use.
pub(crate) async fn connect(url: &str) -> Result<PgConnection, BackupError> {
    PgConnection::connect(url)
        .await
        .map_err(|e| BackupError::Database(format!("cannot connect to PostgreSQL: {e}")))
}

/// The highest migration applied (0 before any).
pub(crate) async fn schema_version(conn: &mut PgConnection) -> Result<i64, BackupError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(0);
    }
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0)::BIGINT FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// The tables (`schema.table`) of the database outside PostgreSQL's own
/// schemas: a restore goes only into a database without any.
pub(crate) async fn user_tables(conn: &mut PgConnection) -> Result<Vec<String>, BackupError> {
    Ok(sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
           AND table_schema NOT LIKE 'pg_toast%' AND table_schema NOT LIKE 'pg_temp%'
         ORDER BY 1 LIMIT 5",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// `pg_dump --format=custom` of `url` into `out`.
pub(crate) async fn dump(url: &str, pg_bin: Option<&Path>, out: &Path) -> Result<(), BackupError> {
    let mut cmd = command("pg_dump", pg_bin, url)?;
    cmd.arg("--format=custom").arg("--file").arg(out);
    run(cmd, "pg_dump").await
}

/// `pg_restore` of the dump `file` into `url`, in one transaction (a
/// failure leaves the database as it was), without the dumped owners and
/// privileges (the restoring role owns everything).
pub(crate) async fn restore(
    url: &str,
    pg_bin: Option<&Path>,
    file: &Path,
) -> Result<(), BackupError> {
    let mut cmd = command("pg_restore", pg_bin, url)?;
    cmd.args([
        "--single-transaction",
        "--exit-on-error",
        "--no-owner",
        "--no-acl",
    ])
    .arg(file);
    run(cmd, "pg_restore").await
}

/// The tool's command: its path, `--dbname` with the URL less its password,
/// `PGPASSWORD` when the URL had one.
fn command(
    tool: &str,
    pg_bin: Option<&Path>,
    url: &str,
) -> Result<tokio::process::Command, BackupError> {
    let program = find(tool, pg_bin)?;
    let mut parsed = url::Url::parse(url)
        .map_err(|e| BackupError::Invalid(format!("the database URL cannot be parsed: {e}")))?;
    let password = parsed.password().map(percent_decode);
    let _ = parsed.set_password(None);
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("--no-password")
        .arg(format!("--dbname={parsed}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    Ok(cmd)
}

/// A URL's percent-encoded part as its bytes say (`%40` is `@`); a `%` not
/// followed by two hex digits stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a tool to its end; its stderr is the error when it fails.
async fn run(mut cmd: tokio::process::Command, tool: &str) -> Result<(), BackupError> {
    let output = cmd
        .output()
        .await
        .map_err(|e| BackupError::Tool(format!("{tool} could not be started: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(BackupError::Tool(format!(
        "{tool} failed ({}): {}",
        output.status,
        stderr.trim()
    )))
}

/// `tool` in `pg_bin`, else the first on `PATH`.
fn find(tool: &str, pg_bin: Option<&Path>) -> Result<PathBuf, BackupError> {
    if let Some(dir) = pg_bin {
        let path = dir.join(tool);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(BackupError::Tool(format!(
                "{tool} is not in --pg-bin {}",
                dir.display()
            )))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            BackupError::Tool(format!(
                "{tool} is not on PATH: install PostgreSQL's client tools, of the server's \
                 major version or newer (Debian: postgresql-client-15), or name their \
                 directory with --pg-bin DIR"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_goes_to_the_environment_not_the_arguments() {
        let dir = tempfile::tempdir().expect("tmp");
        let tool = dir.path().join("pg_dump");
        std::fs::write(&tool, "").expect("write");
        let cmd = command(
            "pg_dump",
            Some(dir.path()),
            "postgres://courier:s%40cret+1@db.internal:5433/courier?sslmode=require",
        )
        .expect("command");
        let std = cmd.as_std();
        let args: Vec<_> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.contains(
                &"--dbname=postgres://courier@db.internal:5433/courier?sslmode=require".to_owned()
            ),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a.contains("cret")), "{args:?}");
        let env: Vec<_> = std.get_envs().collect();
        assert!(
            env.iter()
                .any(|(k, v)| *k == "PGPASSWORD" && *v == Some("s@cret+1".as_ref())),
            "{env:?}"
        );
        let missing = find("pg_restore", Some(dir.path())).expect_err("not there");
        assert!(missing.to_string().contains("--pg-bin"), "{missing}");
    }
}
