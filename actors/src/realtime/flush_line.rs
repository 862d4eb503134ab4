//! A wide channel's fan-outs written to the sockets, oldest first.
//!
//! A fan-out to more than [`FLUSH_CHUNK`] connections queues its frame in
//! every connection's queue without waking the writers (see
//! [`Outbound::push_deferred`]); the connections whose queues it found empty
//! join the channel's [`FlushLine`], and one task writes each connection in
//! the line straight to its socket ([`Outbound::flush`]), [`FLUSH_CHUNK`]
//! connections between two yields, in the order they joined. A connection
//! joins once per write: one still in the line takes later frames with it.
//!
//! One task per channel, not one per fan-out: when fan-outs come faster
//! than a pass over the connections, tasks of their own would share the
//! core round robin, so the newest fan-out, whose connections have waited
//! least, would slow the oldest one's tail as much as it slows itself. The
//! line serves the longest wait first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::counter;

use crate::realtime::outbound::Outbound;
use crate::telemetry::names as m;

/// Connections flushed between two yields.
pub const FLUSH_CHUNK: usize = 64;

/// The connections of one channel waiting for a flush, and whether a task
/// is writing them. Cheap to clone.
#[derive(Clone, Default)]
pub struct FlushLine {
    state: Arc<Mutex<Line>>,
}

#[derive(Default)]
struct Line {
    waiting: VecDeque<Outbound>,
    /// A task is writing the line; it ends when the line is empty.
    writing: bool,
}

impl FlushLine {
    fn line(&self) -> MutexGuard<'_, Line> {
        // A panic while holding the lock leaves a consistent line.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `due` at the end of the line and starts the task that writes it
    /// unless it is running.
    pub fn join(&self, due: impl IntoIterator<Item = Outbound>) {
        let mut line = self.line();
        line.waiting.extend(due);
        if line.writing || line.waiting.is_empty() {
            return;
        }
        line.writing = true;
        drop(line);
        let this = self.clone();
        tokio::spawn(async move { this.write().await });
    }

    /// Writes the line, oldest first, until it is empty.
    async fn write(self) {
        let mut chunk = Vec::with_capacity(FLUSH_CHUNK);
        loop {
            {
                let mut line = self.line();
                let take = line.waiting.len().min(FLUSH_CHUNK);
                if take == 0 {
                    line.writing = false;
                    return;
                }
                chunk.extend(line.waiting.drain(..take));
            }
            let written: usize = chunk.drain(..).map(|out| out.flush()).sum();
            if written > 0 {
                counter!(m::FRAMES_OUT).increment(written as u64);
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use courier_protocol::codec::Encoding;
    use tokio::io::AsyncReadExt;
    use tokio::net::{tcp::OwnedReadHalf, TcpListener, TcpStream};

    use super::*;
    use crate::realtime::outbound::{outbound, run_writer, ConnId, Push, QueueLimits, TcpWrite};
    use crate::realtime::wire::{self, Opcode};

    /// A connection whose flushes write to a loopback socket, its writer
    /// waiting: the queue, the client's end, and the server's read half.
    async fn connection(listener: &TcpListener) -> (Outbound, TcpStream, OwnedReadHalf) {
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (read, write) = server.into_split();
        let socket = TcpWrite::new(write);
        let (tx, rx) = outbound(
            ConnId::next(),
            QueueLimits::frames(16),
            Encoding::MessagePack,
        );
        tx.write_directly(socket.clone());
        tokio::spawn(run_writer(socket, rx));
        (tx, client, read)
    }

    /// Reads `frame` from `client`, failing if it does not come.
    async fn expect_frame(client: &mut TcpStream, frame: &[u8]) {
        let mut got = vec![0u8; frame.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .expect("the line wrote it")
            .expect("read");
        assert_eq!(got, frame);
    }

    /// Every connection in the line gets its frame from the line's task
    /// (their writers are never woken), over several chunks; the task ends
    /// when the line is empty, and the next join starts it again.
    #[tokio::test]
    async fn the_line_writes_every_connection_and_starts_again_when_joined() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut conns = Vec::new();
        for _ in 0..3 * FLUSH_CHUNK + 5 {
            conns.push(connection(&listener).await);
        }
        let line = FlushLine::default();
        for round in 0..2u8 {
            let frame = wire::frame(Opcode::Binary, &[round; 100]);
            for (tx, _, _) in &conns {
                assert_eq!(tx.push_deferred(frame.clone()), Push::Deferred);
            }
            line.join(conns.iter().map(|(tx, _, _)| tx.clone()));
            for (_, client, _) in &mut conns {
                expect_frame(client, &frame).await;
            }
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let state = line.line();
            assert!(state.waiting.is_empty(), "round {round}: the line is empty");
            assert!(!state.writing, "round {round}: its task has ended");
        }
    }

    /// Joining while the task writes puts the newcomers behind the rest:
    /// the running task takes them, and no second task starts.
    #[tokio::test]
    async fn a_join_while_writing_waits_its_turn() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (first, mut first_client, _r1) = connection(&listener).await;
        let (second, mut second_client, _r2) = connection(&listener).await;
        let frame = wire::frame(Opcode::Binary, &[7; 100]);
        let line = FlushLine::default();
        assert_eq!(first.push_deferred(frame.clone()), Push::Deferred);
        line.join([first.clone()]);
        assert!(line.line().writing, "the first join starts the task");
        // The task has not run yet (one thread, no await since).
        assert_eq!(second.push_deferred(frame.clone()), Push::Deferred);
        line.join([second.clone()]);
        let order: Vec<_> = line.line().waiting.iter().map(Outbound::conn_id).collect();
        assert_eq!(order, [first.conn_id(), second.conn_id()], "oldest first");
        assert_eq!(
            Arc::strong_count(&line.state),
            2,
            "one task holds the line besides its owner"
        );
        expect_frame(&mut first_client, &frame).await;
        expect_frame(&mut second_client, &frame).await;
    }
}
