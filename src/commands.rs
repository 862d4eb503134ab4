//! The CLI's commands other than `serve`: `migrate`, `user create`,
//! `audit verify`, `audit public-key`, `keys rotate` and `keys retire`.
//! Each opens the store the configuration names (or reads the keyring), does
//! one job and reports on stdout.

use std::io::{BufRead, IsTerminal, Write};

use std::path::PathBuf;

use courier_actors::audit::chain::{self, ChainHead, CheckpointKeys, PendingAudit, VerifyReport};
use courier_actors::crypto::{Keyring, MessageCipher};
use courier_actors::durable::store::{NewUser, Role, Store, StoreError};
use courier_protocol::UserId;

use crate::config::Config;
use crate::secrets;
use crate::server::{check_new_account, open_store, passwords, user_created, ServerError};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    // Transparent: the store's message says what failed, once (a prefix
    // here and `#[from]`'s source made anyhow print it twice).
    #[error(transparent)]
    Store(#[from] courier_actors::durable::store::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// `courier migrate`: applies pending migrations.
pub async fn migrate(config: &Config) -> Result<(), CommandError> {
    let store = open_store(config).await?;
    store.migrate().await?;
    println!("migrated the {} store", store.backend());
    Ok(())
}

/// `courier user create`: the password comes from stdin (piped) or a prompt,
/// never from a flag. Held to the policy of every account and audited as
/// `user.create`, like a user created through REST.
pub async fn create_user(
    config: &Config,
    username: &str,
    role: &str,
    email: Option<String>,
) -> Result<UserId, CommandError> {
    let role = Role::parse(role).ok_or_else(|| {
        CommandError::Invalid(format!(
            "unknown role {role:?}; one of super_admin, admin, moderator, user"
        ))
    })?;
    let password = read_password()?;
    check_new_account(config, ("--username", username), ("password", &password))?;
    let store = open_store(config).await?;
    let hash = passwords(config)?
        .hash(password)
        .await
        .map_err(ServerError::from)?;
    let user = store
        .create_user(NewUser {
            id: UserId::new(),
            username: username.to_owned(),
            email,
            password_hash: hash,
            role,
            created_at: courier_actors::now_ms(),
        })
        .await?;
    // As `POST /api/users` records a creation; the actor is the system.
    append_audit(
        &*store,
        PendingAudit::new(None, None, "user.create", user_created(&user)),
    )
    .await?;
    println!(
        "created user {} ({}) with role {}",
        user.username,
        user.id,
        role.as_str()
    );
    Ok(user.id)
}

/// How often [`append_audit`] links its entry anew after another writer.
const AUDIT_APPEND_TRIES: usize = 20;

/// Appends one entry to the audit chain, linked after the stored head. A
/// running broker may append in between (the store then refuses the entry
/// as a `Conflict`): it is linked again after the newer head. The broker's
/// audit actor, in turn, links its next batch after this entry.
pub(crate) async fn append_audit(
    store: &dyn Store,
    event: PendingAudit,
) -> Result<(), CommandError> {
    for _ in 0..AUDIT_APPEND_TRIES {
        let head = ChainHead::after(store.audit_head().await?.as_ref());
        let (records, _) = chain::chain(&head, vec![event.clone()]);
        match store.append_audit(&records).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Invalid(format!(
        "the audit chain moved under {AUDIT_APPEND_TRIES} attempts to append {:?}",
        event.action
    )))
}

fn read_password() -> Result<String, CommandError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(CommandError::Invalid("no password given on stdin".into()));
    }
    Ok(password)
}

/// Where `courier audit verify` finds checkpoints besides the store and the
/// local checkpoint file, and which keys it checks them with.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// `--checkpoints-url`: a receiver of the checkpoint webhook (GET).
    pub checkpoints_url: Option<String>,
    /// `--checkpoints-file`: checkpoints exported elsewhere.
    pub checkpoints_file: Option<PathBuf>,
    /// `--public-key`: verify with these public keys alone (as `courier
    /// audit public-key` prints them); the master keys are not read.
    pub public_keys: Option<String>,
}

/// `courier audit verify`: recomputes the chain from genesis and checks
/// every checkpoint: in the store, in the checkpoint file, and (with
/// [`audit_verify_with`]) from the sinks its options name. Any signed checkpoint that disagrees with the
/// chain is tampering (`ok: false`).
pub async fn audit_verify(config: &Config) -> Result<VerifyReport, CommandError> {
    audit_verify_with(config, &VerifyOptions::default()).await
}

/// `courier audit verify` with the sinks and keys of `options`.
pub async fn audit_verify_with(
    config: &Config,
    options: &VerifyOptions,
) -> Result<VerifyReport, CommandError> {
    let invalid = |e: String| CommandError::Invalid(e);
    let public = match &options.public_keys {
        Some(text) => Some(chain::parse_public_keys(text).map_err(invalid)?),
        None => None,
    };
    let keyring = match &public {
        Some(_) => None,
        None => Some(secrets::resolve(config)?.keyring),
    };
    let keys = match (&public, &keyring) {
        (Some(public), _) => CheckpointKeys::Public(public),
        (None, Some(keyring)) => CheckpointKeys::Keyring(keyring),
        (None, None) => unreachable!("one of the two is read above"),
    };
    let mut more = Vec::new();
    if let Some(url) = &options.checkpoints_url {
        let fetched = crate::audit_webhook::fetch_checkpoints(
            url,
            config.audit_checkpoint_webhook_secret.as_ref(),
        )
        .await
        .map_err(|e| invalid(e.to_string()))?;
        more.extend(fetched);
    }
    if let Some(path) = &options.checkpoints_file {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let listed = crate::audit_webhook::parse_checkpoint_list(&bytes)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        more.extend(listed);
    }
    let store = open_store(config).await?;
    let file = config.checkpoint_file();
    let report = chain::verify_store_with(&*store, &keys, Some(&file), more)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| CommandError::Invalid(e.to_string()))?
    );
    Ok(report)
}

/// `courier audit public-key`: the public key of every keyring version's
/// checkpoint signing key, one `<key id>:<hex>` line each, for auditors who
/// verify checkpoints without any secret (`audit verify --public-key`).
pub fn audit_public_key(config: &Config) -> Result<(), CommandError> {
    let keyring = secrets::resolve(config)?.keyring;
    for version in keyring.versions() {
        let key = keyring
            .checkpoint_signing_key(version)
            .map_err(|e| CommandError::Invalid(e.to_string()))?;
        println!(
            "{}",
            chain::public_key_line(&Keyring::checkpoint_key_id(version), &key.verifying_key())
        );
    }
    Ok(())
}

/// `courier keys rotate`: adds a master key version, makes it active (a
/// running server reloads the keyring file within seconds), then
/// re-encrypts every older row in batches, reporting progress.
pub async fn keys_rotate(config: &Config) -> Result<u32, CommandError> {
    let secrets = secrets::resolve(config)?;
    let file = secrets.keyring_file.ok_or_else(|| {
        CommandError::Invalid(
            "key rotation needs the keyring in a file (COURIER_KEYRING_FILE); \
             with COURIER_MASTER_KEYS, add a version there and restart"
                .into(),
        )
    })?;
    let ring = secrets
        .keyring
        .with_new_version()
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    let active = ring.active_version();
    secrets::write_private(&file, &ring.to_spec())?;
    println!("master key version {active} is active for new writes");
    let store = open_store(config).await?;
    let cipher = MessageCipher::new(ring);
    let total: u64 = {
        let mut n = 0;
        for v in cipher.keyring().versions() {
            if v != active {
                n += store.count_key_version(v).await?;
            }
        }
        n
    };
    let mut done = reencrypt_all(&*store, &cipher, active, total).await?;
    let mut rewrapped = rewrap_all(&*store, &cipher, active).await?;
    let mut resealed = reseal_patient_refs(&*store, &cipher, active).await?;
    let mut reasons = reseal_grant_reasons(&*store, &cipher, active).await?;
    let mut totp = reseal_totp_secrets(&*store, &cipher, active).await?;
    // A running server picks the new keyring file up within two seconds;
    // until then it may still write under the old version. Sweep once more
    // after that window so that nothing is left behind.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    done += reencrypt_all(&*store, &cipher, active, total).await?;
    rewrapped += rewrap_all(&*store, &cipher, active).await?;
    resealed += reseal_patient_refs(&*store, &cipher, active).await?;
    reasons += reseal_grant_reasons(&*store, &cipher, active).await?;
    totp += reseal_totp_secrets(&*store, &cipher, active).await?;
    println!("re-encrypted {done} messages");
    println!("re-wrapped the keys of {rewrapped} files");
    println!("re-sealed and re-tagged {resealed} patient references");
    println!("re-sealed the reasons of {reasons} break-glass grants");
    println!("re-sealed {totp} TOTP secrets");
    println!("rotation complete: every message uses key version {active}");
    Ok(active)
}

/// Re-encrypts every message not on `active`, in batches, with progress;
/// each message's search tokens are made again under `active` with it.
async fn reencrypt_all(
    store: &dyn courier_actors::durable::store::Store,
    cipher: &MessageCipher,
    active: u32,
    total: u64,
) -> Result<u64, CommandError> {
    let mut done = 0u64;
    loop {
        let batch = store.messages_not_on_key(active, 500).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let mut rows = Vec::with_capacity(batch.len());
        for m in &batch {
            let row = cipher.reencrypt(m).map_err(|e| {
                CommandError::Invalid(format!(
                    "message {} cannot be decrypted ({e}); rotation stopped",
                    m.id
                ))
            })?;
            rows.push(row);
        }
        store.store_reencrypted(&rows).await?;
        done += rows.len() as u64;
        println!("re-encrypted {done}/{total}");
    }
}

/// Re-wraps every file key not on `active` (the content is not touched:
/// each file has a key of its own, wrapped by the master key).
async fn rewrap_all(
    store: &dyn courier_actors::durable::store::Store,
    cipher: &MessageCipher,
    active: u32,
) -> Result<u64, CommandError> {
    let mut done = 0u64;
    loop {
        let batch = store.files_not_on_key(active, 500).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let mut rows = Vec::with_capacity(batch.len());
        for f in &batch {
            let scope = courier_actors::files::key_scope(f.owner_id, f.channel_id);
            let key = cipher.rewrap_file_key(f.id, scope, &f.key).map_err(|e| {
                CommandError::Invalid(format!(
                    "the key of file {} cannot be unwrapped ({e}); rotation stopped",
                    f.id
                ))
            })?;
            rows.push((f.id, key));
        }
        store.store_rewrapped(&rows).await?;
        done += rows.len() as u64;
        println!("re-wrapped {done} file keys");
    }
}

/// Re-seals and re-tags, under `active`, every patient reference of a
/// message or channel sealed under another version, so lookups keep
/// finding them once the old version is retired.
async fn reseal_patient_refs(
    store: &dyn courier_actors::durable::store::Store,
    cipher: &MessageCipher,
    active: u32,
) -> Result<u64, CommandError> {
    use courier_actors::durable::store::PatientSeal;
    let mut done = 0u64;
    loop {
        let batch = store.patient_refs_not_on_key(active, 500).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let mut rows = Vec::with_capacity(batch.len());
        for old in batch {
            let owner = old.owner.ref_owner();
            let sealed = cipher
                .open_patient_ref(owner, &old.sealed)
                .and_then(|r| PatientSeal::new(cipher, owner, &r))
                .map_err(|e| {
                    CommandError::Invalid(format!(
                        "the patient reference of {:?} cannot be opened ({e}); rotation stopped",
                        old.owner
                    ))
                })?;
            rows.push((old, sealed));
        }
        store.store_resealed_refs(&rows).await?;
        done += rows.len() as u64;
        println!("re-sealed {done} patient references");
    }
}

/// Re-seals, under `active`, the reason of every break-glass grant sealed
/// under another version, so the review queue still opens them once the old
/// version is retired.
async fn reseal_grant_reasons(
    store: &dyn courier_actors::durable::store::Store,
    cipher: &MessageCipher,
    active: u32,
) -> Result<u64, CommandError> {
    use courier_actors::durable::store::BreakGlassGrant;
    let mut done = 0u64;
    for g in store.list_grants(false).await? {
        if g.reason_key_version == active {
            continue;
        }
        let sealed = cipher
            .reseal(
                g.channel_id,
                BreakGlassGrant::reason_message_id(g.id),
                0,
                g.reason_key_version,
                &g.reason_nonce,
                &g.reason_ciphertext,
            )
            .map_err(|e| {
                CommandError::Invalid(format!(
                    "the reason of break-glass grant {} cannot be opened ({e}); rotation stopped",
                    g.id
                ))
            })?;
        if store
            .reseal_grant_reason(g.id, g.reason_key_version, &sealed)
            .await?
        {
            done += 1;
        }
    }
    Ok(done)
}

/// Re-seals, under `active`, every TOTP secret sealed under another
/// version, so second factors keep working once the old version is retired.
async fn reseal_totp_secrets(
    store: &dyn courier_actors::durable::store::Store,
    cipher: &MessageCipher,
    active: u32,
) -> Result<u64, CommandError> {
    let mut done = 0u64;
    loop {
        let batch = store.totp_secrets_not_on_key(active, 500).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let mut moved = 0u64;
        for s in &batch {
            let sealed = cipher
                .reseal_totp_secret(s.user_id, &s.sealed)
                .map_err(|e| {
                    CommandError::Invalid(format!(
                        "the TOTP secret of user {} cannot be opened ({e}); rotation stopped",
                        s.user_id
                    ))
                })?;
            if store
                .reseal_totp_secret(s.user_id, s.sealed.key_version, &sealed)
                .await?
            {
                moved += 1;
            }
        }
        done += moved;
        println!("re-sealed {done} TOTP secrets");
    }
}

/// `courier keys retire --version N`: removes a version from the keyring
/// file, only when no stored message uses it.
pub async fn keys_retire(config: &Config, version: u32) -> Result<(), CommandError> {
    let secrets = secrets::resolve(config)?;
    let file = secrets
        .keyring_file
        .ok_or_else(|| CommandError::Invalid("retiring needs the keyring in a file".into()))?;
    let store = open_store(config).await?;
    let in_use = store.count_key_version(version).await?;
    if in_use > 0 {
        return Err(CommandError::Invalid(format!(
            "{in_use} messages still use key version {version}; run `courier keys rotate` first"
        )));
    }
    let refs = store.count_patient_ref_version(version).await?;
    if refs > 0 {
        return Err(CommandError::Invalid(format!(
            "{refs} patient references are still sealed under key version {version}; \
             run `courier keys rotate` first"
        )));
    }
    let reasons = store
        .list_grants(false)
        .await?
        .iter()
        .filter(|g| g.reason_key_version == version)
        .count();
    if reasons > 0 {
        return Err(CommandError::Invalid(format!(
            "{reasons} break-glass reasons are still sealed under key version {version}; \
             run `courier keys rotate` first"
        )));
    }
    let tokens = store.count_search_tokens_on_key(version).await?;
    if tokens > 0 {
        return Err(CommandError::Invalid(format!(
            "{tokens} search tokens are still keyed under version {version}; \
             run `courier keys rotate` first"
        )));
    }
    let totp = store.count_totp_key_version(version).await?;
    if totp > 0 {
        return Err(CommandError::Invalid(format!(
            "{totp} TOTP secrets are still sealed under key version {version}; \
             run `courier keys rotate` first"
        )));
    }
    let files = store.count_file_key_version(version).await?;
    if files > 0 {
        return Err(CommandError::Invalid(format!(
            "{files} files still have their key wrapped under version {version}; \
             run `courier keys rotate` first"
        )));
    }
    let mut ring: Keyring = secrets.keyring;
    ring.retire(version)
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    secrets::write_private(&file, &ring.to_spec())?;
    println!("retired key version {version}");
    Ok(())
}
