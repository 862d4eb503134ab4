//! Where sealed objects live: an [`ObjectStore`] chosen by URL.
//!
//! | `COURIER_FILES_STORE` | store |
//! |---|---|
//! | empty (default) | a local directory, `<data dir>/files` (0700) |
//! | `file:///abs/path` | a local directory |
//! | `s3://bucket[/prefix]` | Amazon S3 or an S3-compatible server |
//! | `gs://bucket[/prefix]` | Google Cloud Storage |
//! | `az://container[/prefix]` | Azure Blob Storage |
//!
//! Credentials, region and endpoint come from each provider's standard
//! environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...;
//! `GOOGLE_SERVICE_ACCOUNT`; `AZURE_STORAGE_ACCOUNT_NAME`, ...), read by
//! `object_store`'s builders, never by Courier's configuration. Objects are
//! named `f/<file id>`: the name says nothing about the file and grants
//! nothing (the content is sealed, its key is not in the object store).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, RetryConfig};
use url::Url;

use courier_protocol::FileId;

/// Retries of a cloud store: a few, within 15 s, so that an upload to a
/// store that went away fails with a clear answer in seconds rather than
/// object_store's default of up to three minutes.
fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(15),
        ..RetryConfig::default()
    }
}

/// An object store and, when it is a local directory, where.
pub struct Objects {
    pub store: Arc<dyn ObjectStore>,
    /// The local store's directory: objects written there are made 0600
    /// (`object_store` creates them under the umask).
    pub local_dir: Option<PathBuf>,
}

/// Opens the object store `url` names (see the module doc); `data_dir`
/// holds the default local one.
pub fn open(url: &str, data_dir: &Path) -> Result<Objects, String> {
    if url.is_empty() {
        return local(&data_dir.join("files"));
    }
    let parsed = Url::parse(url).map_err(|e| format!("files store URL {url:?}: {e}"))?;
    let prefix = parsed.path().trim_matches('/').to_owned();
    let bucket = parsed.host_str().unwrap_or_default();
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "file" => return local(Path::new(parsed.path())),
        "s3" => Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry())
                .build()
                .map_err(|e| format!("S3 store {url:?}: {e}"))?,
        ),
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry())
                .build()
                .map_err(|e| format!("GCS store {url:?}: {e}"))?,
        ),
        "az" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry())
                .build()
                .map_err(|e| format!("Azure store {url:?}: {e}"))?,
        ),
        other => {
            return Err(format!(
                "files store URL scheme {other:?} is not one of file, s3, gs, az"
            ))
        }
    };
    if bucket.is_empty() {
        return Err(format!("files store URL {url:?} names no bucket"));
    }
    let store = if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    Ok(Objects {
        store,
        local_dir: None,
    })
}

/// A local directory, created 0700.
fn local(dir: &Path) -> Result<Objects, String> {
    crate::durable::private_files::create_dir_all(dir)
        .map_err(|e| format!("files directory {}: {e}", dir.display()))?;
    // fsync before an upload is answered: a file acked is on disk, as its
    // row is.
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| format!("files directory {}: {e}", dir.display()))?
        .with_fsync(true);
    Ok(Objects {
        store: Arc::new(store),
        local_dir: Some(dir.to_path_buf()),
    })
}

/// The object key of a new file.
pub fn object_key(file: FileId) -> String {
    format!("f/{}", file.0.hyphenated())
}

/// An object key as `object_store` takes it.
pub fn path(object_key: &str) -> object_store::path::Path {
    object_store::path::Path::from(object_key)
}
