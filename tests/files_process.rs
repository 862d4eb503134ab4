//! Attachments through the real `courier` binary (issue 35): a 50 MiB file
//! streamed in and out while the broker's resident memory is sampled (it
//! must stay far below the file's size: nothing holds a whole file), and
//! the S3-compatible store (`support::s3`, s3s-fs): a round trip with no
//! plaintext on the store's disk, and the store killed mid-upload, which
//! answers `unavailable` and leaves nothing half-stored.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use object_store::ObjectStore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::clamd::ClamdServer;
use support::process::{Broker, BrokerSpec};
use support::s3::S3Server;

const ADMIN: &str = "root";
const PASSWORD: &str = "correct horse battery staple";
const MIB: usize = 1024 * 1024;

/// A broker with clamd, an admin's token and a channel of theirs.
struct Node {
    broker: Broker,
    http: reqwest::Client,
    token: String,
    channel: String,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(clamd: &ClamdServer, env: Vec<(String, String)>) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/courier.db", dir.path().display());
        let mut spec = BrokerSpec::new(dir.path(), &url)
            .with("COURIER_FILES_CLAMD_URL", clamd.url())
            .with("COURIER_INITIAL_ADMIN_USERNAME", ADMIN)
            .with("COURIER_INITIAL_ADMIN_PASSWORD", PASSWORD);
        for (k, v) in env {
            spec = spec.with(&k, v);
        }
        let broker = spec.start().await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let login: Value = http
            .post(format!("{}/api/auth/login", broker.http_url()))
            .json(&json!({"username": ADMIN, "password": PASSWORD}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login body");
        let token = login["token"].as_str().expect("token").to_owned();
        let created: Value = http
            .post(format!("{}/api/channels", broker.http_url()))
            .bearer_auth(&token)
            .json(&json!({"name": "imaging", "kind": "private"}))
            .send()
            .await
            .expect("channel")
            .json()
            .await
            .expect("channel body");
        let channel = created["channel"]["id"].as_str().expect("id").to_owned();
        Node {
            broker,
            http,
            token,
            channel,
            _dir: dir,
        }
    }

    /// Uploads `len` bytes (a PNG header, then pseudo-random bytes made
    /// from `seed`), streamed in 256 KiB pieces, each after `pause`.
    async fn upload(&self, len: usize, seed: u8, pause: Duration) -> reqwest::Result<(u16, Value)> {
        let pieces =
            futures_util::stream::iter(0..len.div_ceil(256 * 1024)).then(move |i| async move {
                tokio::time::sleep(pause).await;
                let start = i * 256 * 1024;
                let end = (start + 256 * 1024).min(len);
                Ok::<_, std::io::Error>(piece(seed, start..end))
            });
        let response = self
            .http
            .post(format!(
                "{}/api/channels/{}/attachments?name=scan.png",
                self.broker.http_url(),
                self.channel
            ))
            .bearer_auth(&self.token)
            .header("content-length", len.to_string())
            .body(reqwest::Body::wrap_stream(pieces))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Downloads a file, returning its length and SHA-256.
    async fn download(&self, id: &str) -> (u64, Vec<u8>) {
        let response = self
            .http
            .get(format!("{}/api/files/{id}/content", self.broker.http_url()))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), 200);
        let mut body = response.bytes_stream();
        let mut hash = Sha256::new();
        let mut len = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.expect("body");
            len += piece.len() as u64;
            hash.update(&piece);
        }
        (len, hash.finalize().to_vec())
    }
}

/// Bytes `range` of the test file of `seed`: a PNG signature, then bytes
/// that do not compress and never repeat a 32-byte window.
fn piece(seed: u8, range: std::ops::Range<usize>) -> Vec<u8> {
    const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, 0x49, 0x48, 0x44, 0x52,
    ];
    range
        .map(|i| match PNG.get(i) {
            Some(b) => *b,
            None => {
                let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(seed) << 56;
                (x >> 29) as u8 ^ (x >> 47) as u8
            }
        })
        .collect()
}

fn sha_of(seed: u8, len: usize) -> Vec<u8> {
    let mut hash = Sha256::new();
    for start in (0..len).step_by(MIB) {
        hash.update(piece(seed, start..(start + MIB).min(len)));
    }
    hash.finalize().to_vec()
}

/// The objects under Courier's prefix in the bucket.
async fn objects(s3: &S3Server) -> Vec<String> {
    let listed: Vec<_> = s3
        .client()
        .list(Some(&object_store::path::Path::from("courier")))
        .collect::<Vec<_>>()
        .await;
    listed
        .into_iter()
        .map(|o| o.expect("listed").location.to_string())
        .collect()
}

/// Samples the broker's resident memory every 10 ms until stopped; the peak.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let peak = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Some(rss) = support::process::rss_bytes(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        peak.load(Ordering::Relaxed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_through_with_flat_memory() {
    let clamd = ClamdServer::start().await;
    let node = Node::start(&clamd, Vec::new()).await;
    let len = 50 * MIB;
    // Warm the paths up with a small file so the baseline holds what any
    // upload needs (connections, the first object-store write, clamd's).
    let (status, _) = node.upload(MIB, 1, Duration::ZERO).await.expect("warm-up");
    assert_eq!(status, 201);
    let before = support::process::rss_bytes(node.broker.pid()).expect("rss");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(node.broker.pid(), stop.clone());
    let started = Instant::now();
    let (status, body) = node.upload(len, 7, Duration::ZERO).await.expect("upload");
    let upload_time = started.elapsed();
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let started = Instant::now();
    let (got, hash) = node.download(&id).await;
    let download_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    assert_eq!(got, len as u64);
    assert_eq!(hash, sha_of(7, len), "the download is the upload");

    let growth = peak.saturating_sub(before);
    println!(
        "50 MiB: upload {upload_time:?}, download {download_time:?}; broker RSS {} MiB before, \
         {} MiB peak ({} MiB growth)",
        before / MIB as u64,
        peak / MIB as u64,
        growth / MIB as u64
    );
    // Flat: a few object-store parts and chunks in flight, never the file.
    assert!(
        growth < 24 * MIB as u64,
        "the broker grew by {} MiB while streaming a 50 MiB file",
        growth / MIB as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_round_trips_and_survives_its_outage() {
    let clamd = ClamdServer::start().await;
    let mut s3 = S3Server::start().await;
    let node = Node::start(&clamd, s3.courier_env("courier")).await;

    // A round trip through S3, sealed on the store's disk.
    let len = 3 * MIB + 12_345;
    let (status, body) = node.upload(len, 3, Duration::ZERO).await.expect("upload");
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(node.download(&id).await, (len as u64, sha_of(3, len)));
    let marker = piece(3, 1_000_000..1_000_032);
    for file in s3.files_on_disk() {
        let bytes = std::fs::read(&file).expect("read");
        assert!(
            !bytes.windows(32).any(|w| w == marker),
            "plaintext in {}",
            file.display()
        );
    }
    assert_eq!(objects(&s3).await, vec![format!("courier/f/{id}")]);

    // The store killed mid-upload: a clear `unavailable`, nothing kept.
    let uploading = {
        let node = &node;
        async move { node.upload(20 * MIB, 4, Duration::from_millis(20)).await }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        s3.kill().await;
    };
    let started = Instant::now();
    let (answer, ()) = tokio::join!(uploading, killer);
    let took = started.elapsed();
    match answer {
        Ok((status, body)) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
        }
        // The broker may close the connection while the client still writes.
        Err(e) => println!("the upload's connection closed: {e}"),
    }
    assert!(
        took < Duration::from_secs(60),
        "the outage took {took:?} to surface"
    );
    s3.restart().await;
    assert_eq!(
        objects(&s3).await,
        vec![format!("courier/f/{id}")],
        "a half-stored object is visible"
    );
    // And the store works again.
    let (status, body) = node
        .upload(MIB, 5, Duration::ZERO)
        .await
        .expect("upload after");
    assert_eq!(status, 201, "{body}");
    println!("S3 outage surfaced after {took:?}");
}
