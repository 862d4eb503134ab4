//! Resolving the secrets the server needs: the JWT signing secret and the
//! master keyring.
//!
//! Each comes from configuration first (`COURIER_JWT_SECRET`,
//! `COURIER_MASTER_KEYS` or `COURIER_KEYRING_FILE`). In development a missing
//! secret is generated once into the data directory (mode 0600) and reused on
//! the next start; in production the server refuses to start and names every
//! missing secret. Values never reach logs or error messages.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use courier_actors::crypto::Keyring;
use courier_actors::durable::private_files;

use crate::config::{Config, Environment, Secret};

/// The resolved secrets.
pub struct Secrets {
    /// HS256 signing secret of access tokens.
    pub jwt_secret: Secret,
    /// Master keys, by version; the active one encrypts new messages.
    pub keyring: Keyring,
    /// Where the keyring lives when it is a file (so `keys rotate` can write it).
    pub keyring_file: Option<PathBuf>,
}

/// Why the secrets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// Production without the named secrets.
    #[error("refusing to start in production without: {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    /// A secret is present but unusable (the message never contains it).
    #[error("invalid {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    /// The data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The generated files, in the data directory.
pub(crate) const JWT_FILE: &str = "jwt_secret";
pub(crate) const KEYRING_FILE: &str = "keyring";

/// Resolves both secrets as described in the module docs.
pub fn resolve(config: &Config) -> Result<Secrets, SecretsError> {
    let production = config.env == Environment::Production;
    let mut missing = Vec::new();

    let jwt_secret = match &config.jwt_secret {
        Some(s) if s.expose().len() < 32 => {
            return Err(SecretsError::Invalid {
                name: "COURIER_JWT_SECRET",
                reason: "must be at least 32 characters".into(),
            })
        }
        Some(s) => Some(s.clone()),
        None if production => {
            missing.push("COURIER_JWT_SECRET");
            None
        }
        None => Some(Secret::new(load_or_generate(
            &config.data_dir.join(JWT_FILE),
            "COURIER_JWT_SECRET",
            || {
                let bytes: [u8; 48] = rand::random();
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
            },
        )?)),
    };

    let (keyring, keyring_file) = if let Some(spec) = &config.master_keys {
        let ring = Keyring::parse(spec.expose()).map_err(|e| SecretsError::Invalid {
            name: "COURIER_MASTER_KEYS",
            reason: e.to_string(),
        })?;
        (Some(ring), None)
    } else if let Some(path) = &config.keyring_file {
        let ring = Keyring::load_file(path).map_err(|e| SecretsError::Invalid {
            name: "COURIER_KEYRING_FILE",
            reason: e.to_string(),
        })?;
        (Some(ring), Some(path.clone()))
    } else if production {
        missing.push("COURIER_MASTER_KEYS or COURIER_KEYRING_FILE");
        (None, None)
    } else {
        let path = config.data_dir.join(KEYRING_FILE);
        let spec = load_or_generate(&path, "COURIER_MASTER_KEYS", || {
            Keyring::generate().to_spec()
        })?;
        let ring = Keyring::parse(&spec).map_err(|e| SecretsError::Invalid {
            name: "generated keyring file",
            reason: e.to_string(),
        })?;
        (Some(ring), Some(path))
    };

    match (jwt_secret, keyring) {
        (Some(jwt_secret), Some(keyring)) if missing.is_empty() => Ok(Secrets {
            jwt_secret,
            keyring,
            keyring_file,
        }),
        _ => Err(SecretsError::Missing(missing)),
    }
}

/// Reads a generated secret, or generates and writes it (mode 0600).
fn load_or_generate(
    path: &Path,
    name: &str,
    generate: impl FnOnce() -> String,
) -> Result<String, SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        private_files::create_dir_all(dir).map_err(io)?;
    }
    let value = generate();
    write_private(path, &value).map_err(io)?;
    tracing::warn!(
        file = %path.display(),
        "DEVELOPMENT ONLY: {name} is not set; generated one into the data directory. \
         Set it explicitly (and COURIER_ENV=production) before handling real data."
    );
    Ok(value)
}

/// Writes a file readable by its owner only (0600, whatever the umask).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut file = private_files::open(
        path,
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
    )?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_every_missing_secret() {
        let config = Config {
            env: Environment::Production,
            data_dir: tempfile::tempdir().expect("tmp").keep(),
            ..Config::default()
        };
        let err = resolve(&config).err().expect("must refuse");
        let text = err.to_string();
        assert!(text.contains("COURIER_JWT_SECRET"), "{text}");
        assert!(text.contains("COURIER_MASTER_KEYS"), "{text}");
    }

    #[test]
    fn development_generates_once_and_reuses() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let first = resolve(&config).expect("generated");
        let second = resolve(&config).expect("reused");
        assert_eq!(first.jwt_secret, second.jwt_secret);
        assert_eq!(first.keyring.to_spec(), second.keyring.to_spec());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(JWT_FILE))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
