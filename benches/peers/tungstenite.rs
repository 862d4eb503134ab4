//! The bare tokio-tungstenite broadcast server: the floor of Courier's own
//! stack, so the overhead above it is visible (benches/README.md).
//!
//! The load tester runs it as a separate process
//! (`cargo bench --bench load -- peer-tungstenite --port 9001`, which is what
//! `--target tungstenite` starts). Protocol, binary frames of one MessagePack
//! map each, the same as the Node.js peer (`peers/node/server.js`):
//!
//! - `{type: "join"}` answers `{type: "ack"}` and adds the connection to the
//!   broadcast set;
//! - `{type: "send", text}` answers `{type: "ack"}`, and every joined
//!   connection gets `{type: "new_message", text}`.
//!
//! The write path is the naive one the issue describes: a push is encoded
//! once and its `Bytes` shared by every recipient; each connection has a
//! bounded queue (a full one drops the connection from the broadcast set:
//! slow consumer); one writer task per connection feeds everything queued to
//! tungstenite, which copies each frame into its write buffer, then flushes
//! once. Reads use a 4 KiB buffer (tungstenite's default is 128 KiB).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Frames queued per connection before it counts as a slow consumer (the
/// same default as Courier's `outbound_queue_frames`).
const QUEUE_FRAMES: usize = 1024;

/// A frame from a client.
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// A frame to a client.
#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

/// The broadcast set.
#[derive(Default)]
struct Hub {
    next_id: AtomicU64,
    /// Joined connections' queues. A std `Mutex`: never held across `.await`.
    joined: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    slow_consumers: AtomicU64,
}

fn encode(kind: &str, text: Option<&str>) -> Bytes {
    // Writing a map of two strings to a Vec cannot fail.
    Bytes::from(rmp_serde::to_vec_named(&Outgoing { kind, text }).unwrap_or_default())
}

/// Accepts connections until the process ends.
pub(crate) async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let hub = Arc::new(Hub::default());
    let ack = encode("ack", None);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, hub.clone(), ack.clone()));
    }
}

async fn connection(stream: TcpStream, hub: Arc<Hub>, ack: Bytes) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(64 * 1024)
        .max_message_size(Some(64 * 1024));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE_FRAMES);
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(first).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    while let Some(Ok(message)) = stream.next().await {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(frame) = rmp_serde::from_slice::<Incoming>(&bytes) else {
            continue;
        };
        match frame.kind.as_str() {
            "join" => {
                hub.joined
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, tx.clone());
                let _ = tx.try_send(Message::Binary(ack.clone()));
            }
            "send" => {
                let push = encode("new_message", frame.text.as_deref());
                let mut joined = hub.joined.lock().unwrap_or_else(PoisonError::into_inner);
                joined.retain(|_, queue| {
                    let queued = queue.try_send(Message::Binary(push.clone())).is_ok();
                    if !queued {
                        hub.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    }
                    queued
                });
                drop(joined);
                let _ = tx.try_send(Message::Binary(ack.clone()));
            }
            _ => {}
        }
    }
    hub.joined
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
    drop(tx);
    let _ = writer.await;
}

/// Serves on 127.0.0.1:`port` until killed: the `peer-tungstenite`
/// subcommand of both testers.
pub fn run(port: u16) -> std::process::ExitCode {
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("peer-tungstenite: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("tungstenite peer listening on 127.0.0.1:{port}");
        serve(listener).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-tungstenite: {e}");
            ExitCode::FAILURE
        }
    }
}
