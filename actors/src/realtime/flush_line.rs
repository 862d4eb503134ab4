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
//! A connection waits in the line up to the channel's coalescing window
//! (`fanout_coalesce_us`, 2 ms by default) counted from the push that found
//! its queue empty: every push of the channel meanwhile queues behind that
//! one, and the connection's one write takes them all. A busy channel thus
//! writes each socket once per window, not once per message, and the
//! system calls and TCP segments per delivery fall as the message rate
//! rises; a message to an idle channel waits at most the window. When a
//! pass over the line takes longer than the window, nobody waits at all.
//!
//! One task per channel, not one per fan-out: when fan-outs come faster
//! than a pass over the connections, tasks of their own would share the
//! core round robin, so the newest fan-out, whose connections have waited
//! least, would slow the oldest one's tail as much as it slows itself. The
//! line serves the longest wait first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::counter;
use tokio::time::Instant;

use crate::realtime::outbound::Outbound;
use crate::telemetry::names as m;

/// Connections flushed between two yields.
pub const FLUSH_CHUNK: usize = 64;

/// The connections of one channel waiting for a flush, and whether a task
/// is writing them. Cheap to clone.
#[derive(Clone, Default)]
pub struct FlushLine {
    state: Arc<Mutex<Line>>,
    /// How long a connection may wait for more pushes before its write.
    window: Duration,
}

#[derive(Default)]
struct Line {
    /// Connections with unwritten pushes, oldest first, with when they
    /// joined (the first unwritten push).
    waiting: VecDeque<(Outbound, Instant)>,
    /// A task is writing the line; it ends when the line is empty.
    writing: bool,
}

impl FlushLine {
    /// A line whose connections wait up to `window` for more pushes.
    pub fn new(window: Duration) -> Self {
        Self {
            state: Arc::default(),
            window,
        }
    }

    fn line(&self) -> MutexGuard<'_, Line> {
        // A panic while holding the lock leaves a consistent line.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `due` at the end of the line and starts the task that writes it
    /// unless it is running.
    pub fn join(&self, due: impl IntoIterator<Item = Outbound>) {
        let now = Instant::now();
        let mut line = self.line();
        line.waiting.extend(due.into_iter().map(|out| (out, now)));
        if line.writing || line.waiting.is_empty() {
            return;
        }
        line.writing = true;
        drop(line);
        let this = self.clone();
        tokio::spawn(async move { this.write().await });
    }

    /// Writes the line, oldest first, until it is empty; waits for the
    /// window of the oldest connection before writing it.
    async fn write(self) {
        let mut chunk = Vec::with_capacity(FLUSH_CHUNK);
        loop {
            let due = {
                let mut line = self.line();
                match line.waiting.front() {
                    None => {
                        line.writing = false;
                        return;
                    }
                    Some((_, joined)) => *joined + self.window,
                }
            };
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            {
                let mut line = self.line();
                // Everyone whose window has passed, up to a chunk.
                let now = Instant::now();
                while chunk.len() < FLUSH_CHUNK {
                    match line.waiting.front() {
                        Some((_, joined)) if *joined + self.window <= now => {}
                        _ => break,
                    }
                    let (out, _) = line.waiting.pop_front().expect("a waiting connection");
                    chunk.push(out);
                }
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
        let order: Vec<_> = line
            .line()
            .waiting
            .iter()
            .map(|(o, _)| o.conn_id())
            .collect();
        assert_eq!(order, [first.conn_id(), second.conn_id()], "oldest first");
        assert_eq!(
            Arc::strong_count(&line.state),
            2,
            "one task holds the line besides its owner"
        );
        expect_frame(&mut first_client, &frame).await;
        expect_frame(&mut second_client, &frame).await;
    }

    /// With a window, a connection's write waits for it, and what the
    /// channel pushed meanwhile goes out with the first frame; a push after
    /// the write starts a new window.
    #[tokio::test]
    async fn a_write_waits_for_its_window_and_takes_what_came_meanwhile() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (tx, mut client, _read) = connection(&listener).await;
        // The writer waits for frames (as a live connection's does).
        tokio::task::yield_now().await;
        let line = FlushLine::new(Duration::from_millis(300));
        let first = wire::frame(Opcode::Binary, &[1; 100]);
        let second = wire::frame(Opcode::Binary, &[2; 100]);
        assert_eq!(tx.push_deferred(first.clone()), Push::Deferred);
        line.join([tx.clone()]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), client.read(&mut byte))
                .await
                .is_err(),
            "nothing is written inside the window"
        );
        assert_eq!(
            tx.push_deferred(second.clone()),
            Push::Queued,
            "behind the first"
        );
        expect_frame(&mut client, &first).await;
        expect_frame(&mut client, &second).await;
        assert!(line.line().waiting.is_empty());
    }
}
