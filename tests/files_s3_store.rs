//! The S3 test harness (`tests/support/s3.rs`) checked through
//! `object_store`'s `AmazonS3`, the client the attachment store uses
//! (issue 35): every S3 call Courier makes works against the test server as
//! it does against S3, and a server that dies mid-upload leaves a clear
//! error and nothing half-stored.
//!
//! | test | what it checks |
//! |---|---|
//! | `small_object_round_trip` | a 1 KiB PUT; GET whole, by range and by suffix; HEAD; LIST with a prefix; DELETE, then HEAD is `NotFound` and LIST empty |
//! | `multipart_upload_round_trip` | 12 MiB through `WriteMultipart` (parts of 5, 5 and 2 MiB); read back whole and `get_range(1000..2000)`; no part left on disk |
//! | `small_parts_are_refused` | a non-final part under 5 MiB fails the completion (`EntityTooSmall`), as on S3 |
//! | `aborted_multipart_leaves_nothing` | an upload with one part stored, aborted: nothing in LIST, its part gone from disk |
//! | `server_killed_mid_multipart` | SIGKILL after the first part: the upload's error surfaces within the retry bound; after a restart LIST is empty |
//! | `server_killed_mid_put` | SIGKILL while a 128 MiB PUT is being written: an error; after a restart nothing is listed and the partial write is gone |
//! | `default_retry_time_when_server_is_gone` | (ignored: `--ignored --nocapture`) how long the default `RetryConfig` takes to give up on a dead server |
//!
//! A client whose server died gives up after `RetryConfig::max_retries`
//! (10 by default) or `retry_timeout` (3 min), whichever comes first;
//! connection refused is retried with jittered backoff from 100 ms, so the
//! default gives up in about 1.5 to 7 s (rarely up to 40). The tests that
//! kill the server use a bounded [`RetryConfig`] to stay fast.

mod support;

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig, WriteMultipart,
};
use support::s3::S3Server;

const MIB: usize = 1024 * 1024;

/// `len` bytes of a pattern that differs at every offset a range could cut.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect()
}

async fn list(store: &AmazonS3, prefix: Option<&str>) -> Vec<ObjectMeta> {
    let prefix = prefix.map(Path::from);
    store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .expect("list the bucket")
}

/// The server's files whose name contains `needle`.
fn on_disk(server: &S3Server, needle: &str) -> Vec<std::path::PathBuf> {
    server
        .files_on_disk()
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(needle))
        .collect()
}

/// A client that gives up on a dead server quickly: two retries, short
/// backoff, 2 s request timeout.
fn impatient_client(server: &S3Server) -> AmazonS3 {
    server
        .builder()
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(2),
        })
        // with_client_options replaces every client option: allow HTTP again.
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(true)
                .with_timeout(Duration::from_secs(2))
                .with_connect_timeout(Duration::from_secs(1)),
        )
        .build()
        .expect("an impatient S3 client")
}

#[tokio::test]
async fn small_object_round_trip() {
    let server = S3Server::start().await;
    let store = server.client();
    let data = pattern(1024);
    let path = Path::from("small/one.bin");

    store
        .put(&path, PutPayload::from(data.clone()))
        .await
        .expect("put 1 KiB");
    let whole = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&whole[..], &data[..]);
    let range = store.get_range(&path, 100..200).await.unwrap();
    assert_eq!(&range[..], &data[100..200]);
    let suffix = store
        .get_opts(
            &path,
            GetOptions {
                range: Some(GetRange::Suffix(100)),
                ..Default::default()
            },
        )
        .await
        .expect("a suffix range")
        .bytes()
        .await
        .unwrap();
    assert_eq!(&suffix[..], &data[924..]);

    let meta = store.head(&path).await.expect("head");
    assert_eq!(meta.size, 1024);
    assert!(meta.e_tag.is_some(), "HEAD gives an ETag");
    let listed = list(&store, Some("small")).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].location.as_ref(), listed[0].size),
        ("small/one.bin", 1024)
    );
    assert!(list(&store, Some("other")).await.is_empty());
    assert_eq!(on_disk(&server, "courier-test/small/one.bin").len(), 1);

    store.delete(&path).await.expect("delete");
    match store.head(&path).await {
        Err(object_store::Error::NotFound { .. }) => {}
        other => panic!("HEAD after DELETE: {other:?}"),
    }
    assert!(list(&store, None).await.is_empty());
    assert!(on_disk(&server, "courier-test/small/one.bin").is_empty());
}

#[tokio::test]
async fn multipart_upload_round_trip() {
    let server = S3Server::start().await;
    let store = server.client();
    let data = pattern(12 * MIB);
    let path = Path::from("big/twelve.bin");

    let upload = store.put_multipart(&path).await.expect("create the upload");
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * MIB);
    // Written in odd slices, as a stream of encrypted chunks would be.
    for slice in data.chunks(64 * 1024 + 17) {
        writer.write(slice);
        writer.wait_for_capacity(4).await.expect("a part uploaded");
    }
    let put = writer.finish().await.expect("complete the upload");
    // S3's multipart ETag: "<md5 of the part md5s>-<number of parts>".
    assert!(
        put.e_tag.as_deref().is_some_and(|t| t.ends_with("-3\"")),
        "{put:?}"
    );

    let meta = store.head(&path).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    let whole = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert!(whole[..] == data[..], "the 12 MiB read back differ");
    let range = store.get_range(&path, 1000..2000).await.unwrap();
    assert_eq!(&range[..], &data[1000..2000]);
    let listed = list(&store, Some("big")).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].size, data.len() as u64);
    assert!(
        on_disk(&server, ".upload_id-").is_empty(),
        "{:?}",
        server.files_on_disk()
    );
}

#[tokio::test]
async fn small_parts_are_refused() {
    let server = S3Server::start().await;
    let store = server.client();
    let path = Path::from("small-parts/x.bin");
    let mut upload = store.put_multipart(&path).await.unwrap();
    upload
        .put_part(PutPayload::from(pattern(MIB)))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(pattern(MIB)))
        .await
        .unwrap();
    let err = upload
        .complete()
        .await
        .expect_err("a 1 MiB part before the last is refused");
    assert!(err.to_string().contains("EntityTooSmall"), "{err}");
    assert!(list(&store, None).await.is_empty());
}

#[tokio::test]
async fn aborted_multipart_leaves_nothing() {
    let server = S3Server::start().await;
    let store = server.client();
    let path = Path::from("aborted/x.bin");
    let upload = store.put_multipart(&path).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * MIB);
    writer.write(&pattern(6 * MIB));
    // The first 5 MiB are a stored part; the last MiB is still buffered.
    writer.wait_for_capacity(0).await.unwrap();
    assert_eq!(
        on_disk(&server, ".upload_id-").len(),
        1,
        "{:?}",
        server.files_on_disk()
    );

    writer.abort().await.expect("abort the upload");
    assert!(list(&store, None).await.is_empty());
    assert!(matches!(
        store.head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
    assert!(
        on_disk(&server, ".upload_id-").is_empty(),
        "{:?}",
        server.files_on_disk()
    );
}

#[tokio::test]
async fn server_killed_mid_multipart() {
    let mut server = S3Server::start().await;
    let store = impatient_client(&server);
    let path = Path::from("crash/multipart.bin");
    let mut upload = store.put_multipart(&path).await.unwrap();
    upload
        .put_part(PutPayload::from(pattern(5 * MIB)))
        .await
        .expect("the first part");

    // The second part is on its way when the server dies.
    let second = upload.put_part(PutPayload::from(pattern(5 * MIB)));
    let in_flight = tokio::spawn(second);
    server.kill().await;
    let killed = Instant::now();
    let second = in_flight.await.unwrap();
    let err = match second {
        Err(e) => e,
        Ok(()) => upload
            .complete()
            .await
            .expect_err("completing against a dead server fails"),
    };
    let took = killed.elapsed();
    eprintln!("the upload failed {took:?} after the kill: {err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    let message = err.to_string();
    assert!(message.contains("retries"), "{message}");

    server.restart().await;
    let store = server.client();
    assert!(list(&store, None).await.is_empty());
    assert!(matches!(
        store.head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn server_killed_mid_put() {
    let mut server = S3Server::start().await;
    let store = impatient_client(&server);
    let path = Path::from("crash/put.bin");
    let payload = PutPayload::from(vec![0x5a; 128 * MIB]);
    let put = {
        let store = store.clone();
        let path = path.clone();
        tokio::spawn(async move { store.put(&path, payload).await })
    };
    // Kill once the server is writing the body (its temporary file grows).
    let deadline = Instant::now() + Duration::from_secs(10);
    let writing = loop {
        let growing = on_disk(&server, ".tmp.")
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        if growing || put.is_finished() || Instant::now() > deadline {
            break growing;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(writing, "never saw the 128 MiB PUT being written");
    server.kill().await;
    let killed = Instant::now();
    let err = put
        .await
        .unwrap()
        .expect_err("a PUT cut off by the server's death fails");
    eprintln!(
        "the PUT failed {:?} after the kill: {err}",
        killed.elapsed()
    );

    server.restart().await;
    let store = server.client();
    assert!(list(&store, None).await.is_empty());
    assert!(on_disk(&server, "crash/put.bin").is_empty());
    // s3s-fs removes writes left unfinished when it starts.
    assert!(
        on_disk(&server, ".tmp.").is_empty(),
        "{:?}",
        server.files_on_disk()
    );
}

/// How long `object_store`'s default retries take to give up on a server
/// that is gone (connection refused). Not part of the normal run: it can
/// take tens of seconds.
#[tokio::test]
#[ignore = "a measurement: cargo test --test files_s3_store -- --ignored --nocapture"]
async fn default_retry_time_when_server_is_gone() {
    let mut server = S3Server::start().await;
    let store = server.client();
    let path = Path::from("gone.bin");
    store
        .put(&path, PutPayload::from(pattern(1024)))
        .await
        .unwrap();
    server.kill().await;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let err = store.head(&path).await.expect_err("the server is gone");
        times.push(started.elapsed());
        eprintln!("HEAD gave up after {:?}: {err}", started.elapsed());
    }
    for _ in 0..3 {
        let started = Instant::now();
        let err = store
            .put(&path, PutPayload::from(pattern(1024)))
            .await
            .expect_err("the server is gone");
        eprintln!("PUT gave up after {:?}: {err}", started.elapsed());
    }
    eprintln!("HEAD: {times:?}");
}
