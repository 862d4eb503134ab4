//! Attachments and the file vault (issue 35, docs/files.md), end to end on
//! both stores: a server booted in-process with a real clamd (the EICAR
//! signature of `support::clamd`) and the local object store, driven over
//! REST and WebSocket.
//!
//! - round trips: upload, send with the attachment, the push and history
//!   carry it, members download it whole, by range and through a signed
//!   link; a non-member cannot, even knowing the object's key; no plaintext
//!   byte and no file name lands on disk;
//! - every bad upload gets its documented answer, and nothing is kept;
//! - tampering: a flipped byte, swapped chunks, swapped objects all fail;
//! - the vault: shares give view or download, and revoking takes it back;
//! - deletion and expiry purge a message's files with it.
//!
//! `tests/files_process.rs` streams 50 MB through the real binary while
//! watching its memory, and runs the S3-compatible store.

#[macro_use]
mod support;
#[path = "support/rest.rs"]
mod rest;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rest::{eventually, Backend, Reply, Rest, Session};
use serde_json::json;
use support::clamd::{ClamdServer, EICAR};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The smallest valid PNG (a 1x1 transparent pixel).
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

/// A server with clamd, and three users: alice and bob share a private
/// channel, carol is in none.
struct Ward {
    rest: Rest,
    clamd: ClamdServer,
    alice: Session,
    bob: Session,
    carol: Session,
    channel: String,
}

impl Ward {
    async fn start(backend: Backend) -> Option<Ward> {
        Ward::start_with(backend, |_| {}).await
    }

    async fn start_with(
        backend: Backend,
        tweak: impl FnOnce(&mut courier::config::Config),
    ) -> Option<Ward> {
        let clamd = ClamdServer::start().await;
        let url = clamd.url();
        let rest = Rest::start_with(backend, |c| {
            c.files_clamd_url = Some(url);
            c.files_sweep_interval_secs = 1;
            tweak(c);
        })
        .await?;
        let root = rest.root().await;
        let alice = rest.user(&root, "alice", "user").await;
        let bob = rest.user(&root, "bob", "user").await;
        let carol = rest.user(&root, "carol", "user").await;
        let channel = rest.channel(&alice, "wound-care", "private").await;
        rest.add_member(&alice, &channel, &bob).await;
        Some(Ward {
            rest,
            clamd,
            alice,
            bob,
            carol,
            channel,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.rest.base)
    }

    /// `POST path?name=` with `body` as the raw request body.
    async fn upload_to(&self, who: &Session, path: &str, name: &str, body: Vec<u8>) -> Reply {
        let response = self
            .rest
            .http
            .post(format!("{}?name={}", self.url(path), url_encode(name)))
            .bearer_auth(&who.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("upload");
        rest::reply(response).await
    }

    /// Uploads to the ward channel.
    async fn attach(&self, who: &Session, name: &str, body: Vec<u8>) -> Reply {
        let path = format!("/api/channels/{}/attachments", self.channel);
        self.upload_to(who, &path, name, body).await
    }

    /// `GET /api/files/{id}/content`, with a `Range` when given.
    async fn download(
        &self,
        who: Option<&Session>,
        path: &str,
        range: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut request = self.rest.http.get(self.url(path));
        if let Some(who) = who {
            request = request.bearer_auth(&who.token);
        }
        if let Some(range) = range {
            request = request.header("range", range);
        }
        // A download whose first chunk does not open is cut before its
        // headers: status 0, nothing served.
        let Ok(response) = request.send().await else {
            return (0, reqwest::header::HeaderMap::new(), Vec::new());
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        (status, headers, body)
    }

    fn data_dir(&self) -> PathBuf {
        self.rest.server.dir.path().to_path_buf()
    }

    fn objects_dir(&self) -> PathBuf {
        self.data_dir().join("files")
    }

    /// The stored object of a file (the local store keeps it under its key).
    fn object_of(&self, id: &str) -> PathBuf {
        self.objects_dir().join("f").join(id)
    }
}

/// `name` as a query value.
fn url_encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PNG padded with random bytes to `len` (a marker that must never be
/// found on disk in the clear).
fn png_of(len: usize) -> Vec<u8> {
    let mut bytes = PNG.to_vec();
    while bytes.len() < len {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether any file under `dir` holds `needle`.
fn on_disk(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    files_under(dir)
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|bytes| contains(&bytes, needle)))
}

async fn attachment_round_trip(backend: Backend) {
    let Some(w) = Ward::start(backend).await else {
        return;
    };
    let content = png_of(300_000);
    let uploaded = w
        .attach(&w.alice, "wound photo \u{202E}gnp.exe", content.clone())
        .await
        .expect(201);
    let id = uploaded.body["id"].as_str().expect("file id").to_owned();
    assert_eq!(uploaded.body["type"], "image/png");
    assert_eq!(uploaded.body["size"], 300_000);
    // The bidi override is gone from the kept name.
    assert_eq!(uploaded.body["name"], "wound photo gnp.exe");

    // Bob, joined, sees the push; then the message in history.
    let mut bob_ws = w.rest.joined(&w.bob, &w.channel).await;
    let sent = w
        .rest
        .post(
            "/api/messages",
            &w.alice.token,
            json!({"channelId": w.channel, "text": "", "attachments": [id]}),
        )
        .await
        .expect(201);
    assert_eq!(sent.body["kind"], "image");
    assert_eq!(sent.body["attachments"][0]["id"], id.as_str());
    let pushed = loop {
        let frame = bob_ws
            .next_push(Duration::from_secs(5))
            .await
            .expect("a push");
        if let courier_protocol::ServerFrame::NewMessage(push) = frame {
            break push.data;
        }
    };
    assert_eq!(pushed.kind, courier_protocol::frames::MessageKind::Image);
    assert_eq!(pushed.attachments.len(), 1);
    assert_eq!(pushed.attachments[0].id.to_string(), id);
    assert_eq!(pushed.attachments[0].mime, "image/png");
    assert_eq!(pushed.attachments[0].size, 300_000);
    let history = w
        .rest
        .get(
            &format!("/api/channels/{}/messages", w.channel),
            &w.bob.token,
        )
        .await
        .expect(200);
    let listed = &history.body["messages"][0];
    assert_eq!(listed["attachments"][0]["name"], "wound photo gnp.exe");
    assert_eq!(listed["kind"], "image");

    // Bob downloads it whole, and by ranges across chunk boundaries.
    let path = format!("/api/files/{id}/content");
    let (status, headers, body) = w.download(Some(&w.bob), &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, content);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    for (spec, range) in [
        ("bytes=0-0", 0..1),
        ("bytes=65530-65545", 65_530..65_546),
        ("bytes=100-200000", 100..200_001),
        ("bytes=-10", 299_990..300_000),
        ("bytes=299000-", 299_000..300_000),
    ] {
        let (status, headers, body) = w.download(Some(&w.bob), &path, Some(spec)).await;
        assert_eq!(status, 206, "{spec}");
        assert_eq!(body, content[range.clone()], "{spec}");
        assert_eq!(
            headers["content-range"],
            format!("bytes {}-{}/300000", range.start, range.end - 1).as_str()
        );
    }
    let (status, headers, _) = w.download(Some(&w.bob), &path, Some("bytes=300000-")).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], "bytes */300000");

    // A signed link works without credentials, until forged.
    let link = w
        .rest
        .post(&format!("/api/files/{id}/link"), &w.bob.token, json!({}))
        .await
        .expect(201);
    let url = link.body["url"].as_str().expect("url").to_owned();
    let (status, _, body) = w.download(None, &url, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, content);
    let mut forged = url.clone();
    let last = forged.pop().expect("a char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(w.download(None, &forged, None).await.0, 404);
    // A link ends with the session that made it.
    let bob_again = w.rest.login("bob", rest::PASSWORD).await;
    let link = w
        .rest
        .post(
            &format!("/api/files/{id}/link"),
            &bob_again.token,
            json!({}),
        )
        .await
        .expect(201);
    let url_of_session = link.body["url"].as_str().expect("url").to_owned();
    assert_eq!(w.download(None, &url_of_session, None).await.0, 200);
    w.rest
        .post(
            "/api/auth/logout",
            &bob_again.token,
            json!({"refreshToken": bob_again.refresh}),
        )
        .await;
    assert_eq!(
        w.download(None, &url_of_session, None).await.0,
        404,
        "a link outlived its session"
    );

    // Carol, in no channel, gets nothing: not the file, not its metadata,
    // not a link, and the object store's key is no way in.
    assert_eq!(w.download(Some(&w.carol), &path, None).await.0, 404);
    w.rest
        .get(&format!("/api/files/{id}"), &w.carol.token)
        .await
        .expect(404);
    w.rest
        .post(&format!("/api/files/{id}/link"), &w.carol.token, json!({}))
        .await
        .expect(404);
    let object = std::fs::read(w.object_of(&id)).expect("the sealed object");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(w.object_of(&id))
            .expect("object")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "a stored object is its owner's only");
    }
    assert!(!contains(&object, &content[PNG.len()..PNG.len() + 64]));
    assert!(!contains(&object, PNG));

    // No plaintext of the file nor its name anywhere in the data directory
    // (database, WAL, objects) on SQLite; on PostgreSQL in the rows.
    let marker = &content[10_000..10_032];
    assert_eq!(
        on_disk(&w.data_dir(), marker),
        None,
        "plaintext of the file on disk"
    );
    if backend == Backend::Sqlite {
        assert_eq!(
            on_disk(&w.data_dir(), b"wound photo"),
            None,
            "the file name on disk"
        );
    } else {
        let url = w.rest.server.pg_url().expect("pg url").to_owned();
        let mut pg = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("pg");
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT name_ciphertext FROM files")
            .fetch_all(&mut pg)
            .await
            .expect("files rows");
        assert!(rows.iter().all(|(name,)| !contains(name, b"wound")));
    }

    // Everything is in the audit chain.
    assert!(!w.rest.audit_entries("file.uploaded", 1).await.is_empty());
    // One whole, five ranges, two through links (the 416 served nothing).
    let downloads = w.rest.audit_entries("file.downloaded", 8).await;
    assert_eq!(downloads.len(), 8, "every download audited");
    assert!(downloads.iter().any(|e| e.details["via"] == "link"));
    assert!(!w
        .rest
        .audit_entries("file.link_created", 1)
        .await
        .is_empty());
    w.rest.stop().await;
}

async fn bad_uploads_get_their_answers(backend: Backend) {
    let Some(mut w) = Ward::start(backend).await else {
        return;
    };
    // A PNG named .pdf is a PNG: the claim does not count, the name stays.
    let png = w
        .attach(&w.alice, "results.pdf", png_of(5_000))
        .await
        .expect(201);
    assert_eq!(png.body["type"], "image/png");
    assert_eq!(png.body["name"], "results.pdf");

    // An executable named .png is refused for what it is.
    let mut elf = b"\x7fELF\x02\x01\x01\x00".to_vec();
    elf.resize(4_096, 0);
    w.attach(&w.alice, "photo.png", elf)
        .await
        .expect_error(415, "unsupported_type");
    let mut pe = b"MZ\x90\x00\x03\x00\x00\x00".to_vec();
    pe.resize(4_096, 0);
    w.attach(&w.alice, "photo.png", pe)
        .await
        .expect_error(415, "unsupported_type");

    // EICAR, alone and inside a PDF: infected, audited, not kept.
    w.attach(&w.alice, "eicar.txt", EICAR.to_vec())
        .await
        .expect_error(422, "infected");
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.extend_from_slice(&png_of(200_000)[8..]);
    pdf.extend_from_slice(EICAR);
    w.attach(&w.alice, "labs.pdf", pdf)
        .await
        .expect_error(422, "infected");
    let infected = w.rest.audit_entries("file.infected", 2).await;
    assert_eq!(
        infected[0].details["signature"],
        support::clamd::EICAR_SIGNATURE
    );

    // A zip bomb: a zip is not an accepted type, whatever its name.
    w.attach(&w.alice, "report.docx", zip_bomb())
        .await
        .expect_error(415, "unsupported_type");

    // Empty, and 50 MiB + 1 byte (declared, and streamed without a length).
    w.attach(&w.alice, "empty.txt", Vec::new())
        .await
        .expect_error(400, "invalid_frame");
    let limit = 50 * 1024 * 1024;
    let mut big = png_of(64);
    big.resize(limit + 1, 7);
    w.attach(&w.alice, "big.png", big.clone())
        .await
        .expect_error(413, "too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let streamed = w
        .rest
        .http
        .post(w.url(&format!("/api/channels/{}/attachments", w.channel)))
        .bearer_auth(&w.alice.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server answers 413 as soon as the limit passes; the client may
    // see that answer or, still writing, a reset.
    if let Ok(response) = streamed {
        rest::reply(response).await.expect_error(413, "too_large");
    }

    // An upload cut short: 100 kB of a declared 200 kB, then the client
    // stops writing. Answered `incomplete`, nothing kept.
    let answer = truncated_upload(&w, 200_000, 100_000).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"incomplete\""), "{answer}");

    // The scanner down: refused `unavailable`, and fine again once it is back.
    w.clamd.stop().await;
    w.attach(&w.alice, "later.png", png_of(1_000))
        .await
        .expect_error(503, "unavailable");
    w.clamd.restart().await;
    w.attach(&w.alice, "later.png", png_of(1_000))
        .await
        .expect(201);

    // Only the two good files are kept, as rows and as objects.
    let rejected = w.rest.audit_entries("file.rejected", 6).await;
    assert!(rejected.len() >= 6, "{rejected:?}");
    let count = w
        .rest
        .server
        .app
        .store
        .count_file_key_version(1)
        .await
        .expect("count");
    assert_eq!(count, 2);
    // Let the sweeper run: nothing it could purge was left half-stored.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        files_under(&w.objects_dir()).len(),
        2,
        "{:?}",
        files_under(&w.objects_dir())
    );
    w.rest.stop().await;
}

/// A zip whose one entry inflates to 100 MiB of zeros (about 100 kB).
fn zip_bomb() -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import io,sys,zipfile\n\
             b=io.BytesIO()\n\
             z=zipfile.ZipFile(b,'w',zipfile.ZIP_DEFLATED)\n\
             z.writestr('bomb.bin', b'\\0'*(100*1024*1024))\n\
             z.close()\n\
             sys.stdout.buffer.write(b.getvalue())",
        ])
        .output()
        .expect("python3 (it builds the zip bomb)");
    assert!(out.status.success() && out.stdout.len() > 1000);
    out.stdout
}

/// Sends `sent` of `declared` bytes over a raw socket and shuts the write
/// side; returns the answer's text.
async fn truncated_upload(w: &Ward, declared: usize, sent: usize) -> String {
    let mut socket = tokio::net::TcpStream::connect(w.rest.server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/channels/{}/attachments?name=cut.png HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {declared}\r\n\r\n",
        w.channel, w.alice.token
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(&png_of(sent)).await.expect("body");
    socket.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn tampered_objects_do_not_open(backend: Backend) {
    let Some(w) = Ward::start(backend).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let up = w
            .attach(&w.alice, "scan.png", png_of(200_000))
            .await
            .expect(201);
        ids.push(up.body["id"].as_str().expect("id").to_owned());
    }
    let (a, b) = (w.object_of(&ids[0]), w.object_of(&ids[1]));
    let path = |id: &str| format!("/api/files/{id}/content");
    // Alice's own unsent uploads: she may download them.
    assert_eq!(
        w.download(Some(&w.alice), &path(&ids[0]), None).await.0,
        200
    );

    // Two chunks swapped: the stream stops at the first bad chunk.
    let original = std::fs::read(&a).expect("object");
    let sealed_chunk = 64 * 1024 + 16;
    let mut swapped = original.clone();
    let (first, second) = (
        16..16 + sealed_chunk,
        16 + sealed_chunk..16 + 2 * sealed_chunk,
    );
    swapped[first.clone()].copy_from_slice(&original[second.clone()]);
    swapped[second].copy_from_slice(&original[first]);
    std::fs::write(&a, &swapped).expect("swap chunks");
    let (status, _, body) = w.download(Some(&w.alice), &path(&ids[0]), None).await;
    assert!(
        status != 200 || body.len() < 200_000,
        "a swapped chunk was served"
    );
    let (status, _, body) = w
        .download(Some(&w.alice), &path(&ids[0]), Some("bytes=70000-70010"))
        .await;
    assert!(status != 206 || body.len() < 11, "a swapped chunk opened");

    // One flipped byte.
    let mut flipped = original.clone();
    flipped[1_000] ^= 1;
    std::fs::write(&a, &flipped).expect("flip");
    let (status, _, body) = w
        .download(Some(&w.alice), &path(&ids[0]), Some("bytes=0-99"))
        .await;
    assert!(status != 206 || body.len() < 100, "a flipped byte opened");

    // Two whole objects swapped: neither opens under the other's key.
    std::fs::write(&a, std::fs::read(&b).expect("b")).expect("swap objects");
    let (status, _, body) = w.download(Some(&w.alice), &path(&ids[0]), None).await;
    assert!(
        status != 200 || body.len() < 200_000,
        "another file's object opened"
    );
    w.rest.stop().await;
}

async fn vault_shares_give_and_take_access(backend: Backend) {
    let Some(w) = Ward::start(backend).await else {
        return;
    };
    let content = b"Care plan: change the dressing twice a day.\n".repeat(100);
    let up = w
        .upload_to(&w.alice, "/api/files", "care-plan.txt", content.clone())
        .await
        .expect(201);
    let id = up.body["id"].as_str().expect("id").to_owned();
    assert_eq!(up.body["type"], "text/plain");
    let path = format!("/api/files/{id}/content");
    let listed = |reply: &Reply| {
        reply.body["files"]
            .as_array()
            .expect("files")
            .iter()
            .find(|f| f["id"] == id.as_str())
            .map(|f| f["rights"].as_str().unwrap_or_default().to_owned())
    };
    let vault = w.rest.get("/api/files", &w.alice.token).await.expect(200);
    assert_eq!(listed(&vault).as_deref(), Some("download"));
    assert_eq!(
        listed(&w.rest.get("/api/files", &w.carol.token).await.expect(200)),
        None
    );
    assert_eq!(w.download(Some(&w.carol), &path, None).await.0, 404);

    // View: listed, metadata, no content.
    let share = w
        .rest
        .post(
            &format!("/api/files/{id}/shares"),
            &w.alice.token,
            json!({"userId": w.carol.user_id, "rights": "view"}),
        )
        .await
        .expect(201);
    let share_id = share.body["id"].as_str().expect("share id").to_owned();
    let carol_vault = w.rest.get("/api/files", &w.carol.token).await.expect(200);
    assert_eq!(listed(&carol_vault).as_deref(), Some("view"));
    w.rest
        .get(&format!("/api/files/{id}"), &w.carol.token)
        .await
        .expect(200);
    assert_eq!(w.download(Some(&w.carol), &path, None).await.0, 403);
    // Only the owner manages shares.
    w.rest
        .post(
            &format!("/api/files/{id}/shares"),
            &w.carol.token,
            json!({"userId": w.bob.user_id, "rights": "download"}),
        )
        .await
        .expect(404);

    // Download through the channel: every member of it.
    w.rest
        .post(
            &format!("/api/files/{id}/shares"),
            &w.alice.token,
            json!({"channelId": w.channel, "rights": "download"}),
        )
        .await
        .expect(201);
    let (status, _, body) = w.download(Some(&w.bob), &path, None).await;
    assert_eq!((status, body), (200, content.clone()));

    // Revoked: carol loses it at once; bob keeps the channel's.
    w.rest
        .delete(
            &format!("/api/files/{id}/shares/{share_id}"),
            &w.alice.token,
        )
        .await
        .expect(204);
    assert_eq!(w.download(Some(&w.carol), &path, None).await.0, 404);
    w.rest
        .get(&format!("/api/files/{id}"), &w.carol.token)
        .await
        .expect(404);
    assert_eq!(w.download(Some(&w.bob), &path, None).await.0, 200);
    let shares = w
        .rest
        .get(&format!("/api/files/{id}/shares"), &w.alice.token)
        .await
        .expect(200);
    assert_eq!(shares.body["shares"].as_array().expect("shares").len(), 2);
    assert!(!w.rest.audit_entries("file.shared", 2).await.is_empty());
    assert!(!w.rest.audit_entries("file.unshared", 1).await.is_empty());

    // A form upload (multipart/form-data), past axum's 2 MiB default.
    let photo = png_of(3 * 1024 * 1024);
    let mut form =
        b"--xyzzy\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n".to_vec();
    form.extend_from_slice(
        b"--xyzzy\r\nContent-Disposition: form-data; name=\"file\"; filename=\"leg.png\"\r\n\
          Content-Type: application/pdf\r\n\r\n",
    );
    form.extend_from_slice(&photo);
    form.extend_from_slice(b"\r\n--xyzzy--\r\n");
    let response = w
        .rest
        .http
        .post(w.url("/api/files"))
        .bearer_auth(&w.alice.token)
        .header("content-type", "multipart/form-data; boundary=xyzzy")
        .body(form)
        .send()
        .await
        .expect("form upload");
    let uploaded = rest::reply(response).await.expect(201);
    assert_eq!(uploaded.body["name"], "leg.png");
    assert_eq!(uploaded.body["type"], "image/png");
    let form_file = format!(
        "/api/files/{}/content",
        uploaded.body["id"].as_str().expect("id")
    );
    assert_eq!(w.download(Some(&w.alice), &form_file, None).await.2, photo);

    // The owner deletes it: gone for everyone, then purged from disk.
    w.rest
        .delete(&format!("/api/files/{id}"), &w.alice.token)
        .await
        .expect(204);
    assert_eq!(w.download(Some(&w.bob), &path, None).await.0, 404);
    let object = w.object_of(&id);
    assert!(
        eventually(Duration::from_secs(10), async || !object.exists()).await,
        "not purged"
    );
    w.rest.stop().await;
}

async fn deleted_and_expired_messages_take_their_files(backend: Backend) {
    let Some(w) = Ward::start_with(backend, |c| c.retention_interval_secs = 1).await else {
        return;
    };
    let mut sent = Vec::new();
    for ttl in [None, Some(2)] {
        let up = w.attach(&w.alice, "x.png", png_of(2_000)).await.expect(201);
        let file = up.body["id"].as_str().expect("id").to_owned();
        let mut body =
            json!({"channelId": w.channel, "text": "see attached", "attachments": [file]});
        if let Some(ttl) = ttl {
            body["ttlSeconds"] = json!(ttl);
        }
        let message = w
            .rest
            .post("/api/messages", &w.alice.token, body)
            .await
            .expect(201);
        sent.push((message.body["id"].as_str().expect("id").to_owned(), file));
    }
    // The same file may go out again in another message of its channel.
    w.rest
        .post(
            "/api/messages",
            &w.alice.token,
            json!({"channelId": w.channel, "text": "", "attachments": [sent[0].1]}),
        )
        .await
        .expect(201);
    // Bob may not send alice's upload.
    let up = w
        .attach(&w.alice, "mine.png", png_of(2_000))
        .await
        .expect(201);
    w.rest
        .post(
            "/api/messages",
            &w.bob.token,
            json!({"channelId": w.channel, "text": "", "attachments": [up.body["id"]]}),
        )
        .await
        .expect(404);

    let (deleted_msg, deleted_file) = &sent[0];
    let (_, expiring_file) = &sent[1];
    let path = |id: &str| format!("/api/files/{id}/content");
    assert_eq!(
        w.download(Some(&w.bob), &path(expiring_file), None).await.0,
        200
    );
    // Deleting the messages carrying a file: unreadable at once, purged soon.
    w.rest
        .delete(&format!("/api/messages/{deleted_msg}"), &w.alice.token)
        .await
        .expect(204);
    let history = w
        .rest
        .get(
            &format!("/api/channels/{}/messages", w.channel),
            &w.bob.token,
        )
        .await
        .expect(200);
    let resend = history.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| {
            m["attachments"][0]["id"] == deleted_file.as_str() && m["id"] != deleted_msg.as_str()
        })
        .and_then(|m| m["id"].as_str())
        .expect("the second message with the same file")
        .to_owned();
    // Still carried by the second message.
    assert_eq!(
        w.download(Some(&w.bob), &path(deleted_file), None).await.0,
        200
    );
    w.rest
        .delete(&format!("/api/messages/{resend}"), &w.alice.token)
        .await
        .expect(204);
    assert_eq!(
        w.download(Some(&w.bob), &path(deleted_file), None).await.0,
        404
    );
    // Expiry takes its file too.
    let objects = [w.object_of(deleted_file), w.object_of(expiring_file)];
    let purged = eventually(Duration::from_secs(15), async || {
        objects.iter().all(|o| !o.exists())
    })
    .await;
    assert!(purged, "files of deleted and expired messages still stored");
    assert_eq!(
        w.download(Some(&w.bob), &path(expiring_file), None).await.0,
        404
    );
    let purges = w.rest.audit_entries("file.purged", 2).await;
    assert!(purges
        .iter()
        .any(|e| e.details["reason"] == "messages_gone"));
    w.rest.stop().await;
}

async fn key_rotation_rewraps_file_keys(backend: Backend) {
    let Some(w) = Ward::start(backend).await else {
        return;
    };
    let content = png_of(150_000);
    let up = w
        .attach(&w.alice, "chart.png", content.clone())
        .await
        .expect(201);
    let id = up.body["id"].as_str().expect("id").to_owned();
    let vault = w
        .upload_to(&w.alice, "/api/files", "notes.txt", b"plan\n".repeat(50))
        .await
        .expect(201);
    let object_before = std::fs::read(w.object_of(&id)).expect("object");
    let store = w.rest.server.app.store.clone();
    assert_eq!(store.count_file_key_version(1).await.expect("count"), 2);

    let config = w.rest.server.app.config.clone();
    let active = courier::commands::keys_rotate(&config)
        .await
        .expect("rotate");
    assert_eq!(active, 2);
    assert_eq!(store.count_file_key_version(1).await.expect("count"), 0);
    assert_eq!(store.count_file_key_version(2).await.expect("count"), 2);
    // Only the wrapped keys changed: the content's object is untouched.
    assert_eq!(
        std::fs::read(w.object_of(&id)).expect("object"),
        object_before
    );
    assert!(
        eventually(Duration::from_secs(10), async || w
            .rest
            .server
            .app
            .realtime
            .cipher
            .active_version()
            == 2)
        .await,
        "the server reloaded the keyring"
    );
    // Version 1 can go: both files still open, and their names.
    courier::commands::keys_retire(&config, 1)
        .await
        .expect("retire version 1");
    assert!(
        eventually(Duration::from_secs(10), async || !w
            .rest
            .server
            .app
            .realtime
            .cipher
            .keyring()
            .contains(1))
        .await,
        "the server dropped version 1"
    );
    let (status, _, body) = w
        .download(Some(&w.alice), &format!("/api/files/{id}/content"), None)
        .await;
    assert_eq!((status, body == content), (200, true));
    let meta = w
        .rest
        .get(
            &format!("/api/files/{}", vault.body["id"].as_str().expect("id")),
            &w.alice.token,
        )
        .await
        .expect(200);
    assert_eq!(meta.body["name"], "notes.txt");
    w.rest.stop().await;
}

async fn a_queued_upload_waits_for_its_scan(backend: Backend) {
    let Some(mut w) =
        Ward::start_with(backend, |c| c.files_when_scanner_down = "queue".into()).await
    else {
        return;
    };
    w.clamd.stop().await;
    let clean = w
        .attach(&w.alice, "xray.png", png_of(90_000))
        .await
        .expect(201);
    assert_eq!(clean.body["state"], "pending_scan");
    let mut infected = b"%PDF-1.4\n".to_vec();
    infected.extend_from_slice(EICAR);
    let bad = w.attach(&w.alice, "labs.pdf", infected).await.expect(201);
    assert_eq!(bad.body["state"], "pending_scan");
    let (clean_id, bad_id) = (
        clean.body["id"].as_str().expect("id").to_owned(),
        bad.body["id"].as_str().expect("id").to_owned(),
    );
    // Nobody downloads it, and it cannot be sent, until it is scanned.
    let path = |id: &str| format!("/api/files/{id}/content");
    assert_eq!(
        w.download(Some(&w.alice), &path(&clean_id), None).await.0,
        409
    );
    let mut ws = w.rest.joined(&w.alice, &w.channel).await;
    let mut send = courier_protocol::frames::SendMessage::text(w.channel.parse().expect("id"), "");
    send.attachments = vec![clean_id.parse().expect("file id")];
    let refused = ws
        .request(courier_protocol::ClientRequest::SendMessage(send.clone()))
        .await
        .expect("answer");
    assert!(
        matches!(&refused, courier_protocol::ServerFrame::Error(e) if e.code == courier_protocol::ErrorCode::Conflict),
        "{refused:?}"
    );
    // clamd back: the sweeper scans the queue; the clean one is served and
    // sent over the WebSocket, the infected one is gone.
    w.clamd.restart().await;
    let scanned = eventually(Duration::from_secs(15), async || {
        w.download(Some(&w.alice), &path(&clean_id), None).await.0 == 200
    })
    .await;
    assert!(scanned, "the queued file was never scanned");
    assert!(
        eventually(Duration::from_secs(15), async || !w
            .object_of(&bad_id)
            .exists())
        .await,
        "the infected file is still stored"
    );
    assert_eq!(
        w.download(Some(&w.alice), &path(&bad_id), None).await.0,
        404
    );
    match ws
        .ack(courier_protocol::ClientRequest::SendMessage(send))
        .await
        .expect("ack")
        .result
    {
        courier_protocol::frames::AckResult::Sent(_) => {}
        other => panic!("{other:?}"),
    }
    assert!(!w.rest.audit_entries("file.scanned", 1).await.is_empty());
    let infected = w.rest.audit_entries("file.infected", 1).await;
    assert_eq!(infected[0].details["rescan"], true);
    w.rest.stop().await;
}

both_backends!(
    a_queued_upload_waits_for_its_scan,
    key_rotation_rewraps_file_keys,
    attachment_round_trip,
    bad_uploads_get_their_answers,
    tampered_objects_do_not_open,
    vault_shares_give_and_take_access,
    deleted_and_expired_messages_take_their_files,
);
