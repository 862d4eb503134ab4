//! A TCP proxy on a free loopback port that forwards every connection to a
//! target address, and can be cut: the cluster tests put one node's NATS
//! link through it to partition that node alone (`tests/cluster.rs`).
//!
//! [`Proxy::cut`] closes every live connection at once (both directions)
//! and, until [`Proxy::heal`], closes each new one as soon as it is
//! accepted, so that the client sees its server go away and cannot get
//! back. The proxy runs as tasks of the runtime it was started in, and
//! stops (with its connections) when dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// A running proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where connections are forwarded.
    pub target: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    /// The tasks forwarding live connections.
    connections: Mutex<Vec<AbortHandle>>,
    /// Connections forwarded, and connections refused while cut.
    forwarded: AtomicU64,
    refused: AtomicU64,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Proxy {
            addr,
            target,
            shared,
            accept,
        }
    }

    /// `nats://` URL of the proxy (for a NATS target).
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Closes every live connection and every new one until [`Proxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let live: Vec<AbortHandle> =
            std::mem::take(&mut *self.shared.connections.lock().expect("connections"));
        for connection in live {
            connection.abort();
        }
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut live) = self.shared.connections.lock() {
            for connection in live.drain(..) {
                connection.abort();
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(inbound);
            continue;
        }
        let task = tokio::spawn(forward(inbound, target));
        let mut live = shared.connections.lock().expect("connections");
        live.retain(|c| !c.is_finished());
        // A cut that landed between the check above and here must not
        // miss this connection.
        if shared.cut.load(Ordering::SeqCst) {
            task.abort();
            shared.refused.fetch_add(1, Ordering::SeqCst);
        } else {
            live.push(task.abort_handle());
            shared.forwarded.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Copies both ways until either side closes; dropping (abort) closes both.
async fn forward(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
