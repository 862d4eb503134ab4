//! A client of ClamAV's daemon, `clamd`, for scanning uploads as they
//! stream in (the `INSTREAM` command).
//!
//! [`Clamd`] is the address and the timeout (`tcp://host:port` or
//! `unix:///path/to/clamd.ctl`); [`Clamd::start`] opens a connection and
//! sends `zINSTREAM\0`; [`ScanSession::feed`] sends the content as it comes,
//! in pieces of at most 64 KiB each preceded by its length as a 4-byte
//! big-endian number; [`ScanSession::finish`] sends the zero-length piece
//! that ends the stream and reads the verdict, one NUL-terminated line:
//!
//! | clamd answers | here |
//! |---|---|
//! | `stream: OK` | [`Verdict::Clean`] |
//! | `stream: <signature> FOUND` | [`Verdict::Infected`] |
//! | `INSTREAM size limit exceeded. ERROR` | [`ScanError::LimitExceeded`] |
//! | anything else | [`ScanError::Protocol`] |
//!
//! Every connect, write and read runs under the configured timeout
//! ([`ScanError::Timeout`]). A refused connection, a reset or a broken pipe
//! is [`ScanError::Unreachable`], except when clamd closed because the stream
//! passed its `StreamMaxLength`: it says so before closing, while the client
//! is still writing, so the answer is looked for before each piece and after
//! a failed write, and the error is then [`ScanError::LimitExceeded`].
//! [`Clamd::ping`] (`zPING\0` -> `PONG`) checks that clamd serves.
//!
//! One connection scans one file; nothing here retries.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

/// The largest piece sent in one length-prefixed chunk.
const MAX_PIECE: usize = 64 * 1024;

/// The longest answer read from clamd.
const MAX_ANSWER: usize = 4096;

/// What clamd says when a stream passes its `StreamMaxLength`.
const LIMIT_ANSWER: &str = "INSTREAM size limit exceeded";

/// Where clamd listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddr {
    /// `host:port` (`TCPSocket` / `TCPAddr` of clamd.conf).
    Tcp(String /* host:port */),
    /// A Unix socket (`LocalSocket` of clamd.conf).
    Unix(std::path::PathBuf),
}

impl fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
            ClamdAddr::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A clamd to scan with: its address and the timeout of every step.
#[derive(Clone, Debug)]
pub struct Clamd {
    addr: ClamdAddr,
    timeout: Duration,
}

/// The answer to a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing found.
    Clean,
    /// clamd found this signature.
    Infected {
        /// The signature's name, as clamd reports it.
        signature: String,
    },
}

/// Why a scan has no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The connection was refused, reset, or broke mid-stream.
    #[error("the virus scanner is unreachable: {0}")]
    Unreachable(std::io::Error),
    /// A connect, write or read took longer than the timeout.
    #[error("the virus scanner did not answer in time")]
    Timeout,
    /// The stream passed clamd's `StreamMaxLength`.
    #[error("the file is larger than the virus scanner accepts (clamd StreamMaxLength)")]
    LimitExceeded,
    /// clamd answered something this client does not understand.
    #[error("the virus scanner answered {0:?}")]
    Protocol(String),
}

impl Clamd {
    /// "tcp://host:port" or "unix:///path/to/clamd.ctl"; anything else ->
    /// Err(String) naming the problem. The timeout bounds every connect,
    /// write and read and must not be zero.
    pub fn parse(url: &str, timeout: Duration) -> Result<Clamd, String> {
        if timeout.is_zero() {
            return Err("the virus scanner timeout must be more than zero".to_owned());
        }
        let addr = if let Some(rest) = url.strip_prefix("tcp://") {
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err(format!(
                    "clamd URL {url:?} has no port: expected tcp://host:port"
                ));
            };
            let bracketed = host.starts_with('[') && host.ends_with(']');
            if host.is_empty() || host.contains(['/', '@', '?', '#']) {
                return Err(format!("clamd URL {url:?} has no valid host"));
            }
            if host.contains(':') && !bracketed {
                return Err(format!(
                    "clamd URL {url:?}: write an IPv6 address in brackets, tcp://[::1]:3310"
                ));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(format!("clamd URL {url:?} has no valid port (1-65535)")),
            }
            ClamdAddr::Tcp(rest.to_owned())
        } else if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "clamd URL {url:?} needs an absolute socket path: unix:///path/to/clamd.ctl"
                ));
            }
            ClamdAddr::Unix(PathBuf::from(path))
        } else {
            return Err(format!(
                "clamd URL {url:?} must start with tcp:// (tcp://host:port) or unix:// \
                 (unix:///path/to/clamd.ctl)"
            ));
        };
        Ok(Clamd { addr, timeout })
    }

    /// Where clamd is looked for.
    pub fn addr(&self) -> &ClamdAddr {
        &self.addr
    }

    /// zPING\0 -> PONG.
    pub async fn ping(&self) -> Result<(), ScanError> {
        let mut conn = self.connect().await?;
        conn.write(b"zPING\0").await?;
        let answer = conn.read_answer().await?;
        if answer == "PONG" {
            Ok(())
        } else {
            Err(ScanError::Protocol(answer))
        }
    }

    /// Connects and sends zINSTREAM\0.
    pub async fn start(&self) -> Result<ScanSession, ScanError> {
        let mut conn = self.connect().await?;
        conn.write(b"zINSTREAM\0").await?;
        Ok(ScanSession {
            conn,
            failed: false,
            frame: Vec::with_capacity(4 + MAX_PIECE),
        })
    }

    async fn connect(&self) -> Result<Conn, ScanError> {
        let stream: Box<dyn Stream> = match &self.addr {
            ClamdAddr::Tcp(addr) => {
                let tcp = timeout(self.timeout, TcpStream::connect(addr.as_str()))
                    .await
                    .map_err(|_| ScanError::Timeout)?
                    .map_err(ScanError::Unreachable)?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
            ClamdAddr::Unix(path) => Box::new(
                timeout(self.timeout, UnixStream::connect(path))
                    .await
                    .map_err(|_| ScanError::Timeout)?
                    .map_err(ScanError::Unreachable)?,
            ),
        };
        Ok(Conn {
            stream,
            timeout: self.timeout,
            read_ahead: Vec::new(),
        })
    }
}

/// One `INSTREAM` scan in progress.
pub struct ScanSession {
    conn: Conn,
    /// A step failed: the connection is in no known state.
    failed: bool,
    /// The frame being sent (reused).
    frame: Vec<u8>,
}

impl fmt::Debug for ScanSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanSession")
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ScanSession {
    /// Sends `data` (split into pieces of at most 64 KiB, each
    /// length-prefixed).
    ///
    /// When clamd has already answered (it does when the stream passes its
    /// `StreamMaxLength`, then closes), that answer is the error:
    /// [`ScanError::LimitExceeded`]. After an error the session is spent.
    pub async fn feed(&mut self, data: &[u8]) -> Result<(), ScanError> {
        if self.failed {
            return Err(spent());
        }
        for piece in data.chunks(MAX_PIECE) {
            if let Err(e) = self.send_piece(piece).await {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sends the zero-length terminator and reads the verdict.
    pub async fn finish(mut self) -> Result<Verdict, ScanError> {
        if self.failed {
            return Err(spent());
        }
        if let Err(e) = self.conn.write(&0u32.to_be_bytes()).await {
            return Err(self.answer_after_failed_write(e).await);
        }
        let answer = self.conn.read_answer().await?;
        verdict(answer)
    }

    async fn send_piece(&mut self, piece: &[u8]) -> Result<(), ScanError> {
        if self.conn.has_spoken() {
            return Err(match self.conn.read_answer().await {
                Ok(answer) => early_error(answer),
                Err(e) => e,
            });
        }
        // One write per piece: its length (`piece` is at most 64 KiB), then
        // its bytes.
        self.frame.clear();
        self.frame
            .extend_from_slice(&(piece.len() as u32).to_be_bytes());
        self.frame.extend_from_slice(piece);
        let result = self.conn.write(&self.frame).await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.answer_after_failed_write(e).await),
        }
    }

    /// A write failed: clamd may have answered (the size limit) and closed.
    async fn answer_after_failed_write(&mut self, write_error: ScanError) -> ScanError {
        let ScanError::Unreachable(_) = write_error else {
            return write_error;
        };
        match self.conn.read_answer().await {
            Ok(answer) if !answer.is_empty() => early_error(answer),
            _ => write_error,
        }
    }
}

/// What an answer that came before the end of the stream means.
fn early_error(answer: String) -> ScanError {
    match verdict(answer) {
        Err(e) => e,
        Ok(v) => ScanError::Protocol(format!("{v:?} before the end of the stream")),
    }
}

fn spent() -> ScanError {
    ScanError::Unreachable(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the scan session already failed",
    ))
}

/// Reads clamd's answer to INSTREAM.
fn verdict(answer: String) -> Result<Verdict, ScanError> {
    if let Some(rest) = answer.strip_prefix("stream: ") {
        if rest == "OK" {
            return Ok(Verdict::Clean);
        }
        if let Some(signature) = rest.strip_suffix(" FOUND") {
            if !signature.is_empty() {
                return Ok(Verdict::Infected {
                    signature: signature.to_owned(),
                });
            }
        }
    }
    if answer.starts_with(LIMIT_ANSWER) {
        return Err(ScanError::LimitExceeded);
    }
    Err(ScanError::Protocol(answer))
}

/// A byte stream to clamd, TCP or Unix.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {
    /// A read that does not wait: `WouldBlock` when nothing has arrived.
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Stream for TcpStream {
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

impl Stream for UnixStream {
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

/// A connection with the timeout applied to each step.
struct Conn {
    stream: Box<dyn Stream>,
    timeout: Duration,
    /// Answer bytes read ahead by [`Conn::has_spoken`].
    read_ahead: Vec<u8>,
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| ScanError::Timeout)?
            .map_err(ScanError::Unreachable)
    }

    /// Reads up to the NUL (or the end of the connection) that ends an
    /// answer, and returns it without the NUL and surrounding blanks.
    async fn read_answer(&mut self) -> Result<String, ScanError> {
        let mut answer = std::mem::take(&mut self.read_ahead);
        let read = async {
            let mut buf = [0u8; 512];
            while !answer.contains(&0) && answer.len() < MAX_ANSWER {
                match self.stream.read(&mut buf).await? {
                    0 => break,
                    n => answer.extend_from_slice(&buf[..n]),
                }
            }
            Ok::<_, io::Error>(answer)
        };
        let answer = timeout(self.timeout, read)
            .await
            .map_err(|_| ScanError::Timeout)?
            .map_err(ScanError::Unreachable)?;
        if answer.is_empty() {
            return Err(ScanError::Unreachable(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "clamd closed the connection without an answer",
            )));
        }
        Ok(text_of(&answer))
    }

    /// Whether clamd has sent something, or closed, before the end of the
    /// stream (it does so on the size limit); does not wait. What came is
    /// kept for [`Conn::read_answer`].
    fn has_spoken(&mut self) -> bool {
        let mut buf = [0u8; 512];
        match self.stream.try_read_now(&mut buf) {
            Ok(n) => {
                self.read_ahead.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }
}

/// The answer up to its NUL, lossily decoded and trimmed.
fn text_of(answer: &[u8]) -> String {
    let end = answer.iter().position(|&b| b == 0).unwrap_or(answer.len());
    String::from_utf8_lossy(&answer[..end]).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::net::TcpListener;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A fake clamd: one connection, handled by `serve`.
    async fn fake<F, Fut>(serve: F) -> Clamd
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        fake_with_timeout(T, serve).await
    }

    async fn fake_with_timeout<F, Fut>(t: Duration, serve: F) -> Clamd
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((conn, _)) = listener.accept().await {
                serve(conn).await;
            }
        });
        Clamd::parse(&format!("tcp://{addr}"), t).expect("url")
    }

    /// Reads the command, then the pieces up to the terminator.
    async fn read_stream<S: AsyncRead + Unpin>(conn: &mut S) -> (Vec<u8>, Vec<usize>) {
        let mut command = [0u8; 10];
        conn.read_exact(&mut command).await.expect("command");
        assert_eq!(&command, b"zINSTREAM\0");
        let (mut data, mut pieces) = (Vec::new(), Vec::new());
        loop {
            let len = conn.read_u32().await.expect("length") as usize;
            if len == 0 {
                return (data, pieces);
            }
            let start = data.len();
            data.resize(start + len, 0);
            conn.read_exact(&mut data[start..]).await.expect("piece");
            pieces.push(len);
        }
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn frames_pieces_and_reads_a_clean_verdict() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let clamd = fake(|mut conn| async move {
            let got = read_stream(&mut conn).await;
            conn.write_all(b"stream: OK\0").await.expect("answer");
            let _ = tx.send(got);
        })
        .await;
        let data = content(150 * 1024 + 7);
        let mut scan = clamd.start().await.expect("start");
        scan.feed(&data[..10]).await.expect("feed");
        scan.feed(&data[10..]).await.expect("feed");
        scan.feed(b"").await.expect("empty feed");
        assert_eq!(scan.finish().await.expect("verdict"), Verdict::Clean);
        let (got, pieces) = rx.await.expect("stream");
        assert_eq!(got, data);
        assert_eq!(
            pieces,
            vec![10, 64 * 1024, 64 * 1024, 150 * 1024 + 7 - 10 - 128 * 1024]
        );
    }

    #[tokio::test]
    async fn reads_a_found_signature() {
        let clamd = fake(|mut conn| async move {
            read_stream(&mut conn).await;
            conn.write_all(b"stream: Win.Test.EICAR_HDB-1 FOUND\0")
                .await
                .expect("answer");
        })
        .await;
        let mut scan = clamd.start().await.expect("start");
        scan.feed(b"X5O!P%@AP").await.expect("feed");
        assert_eq!(
            scan.finish().await.expect("verdict"),
            Verdict::Infected {
                signature: "Win.Test.EICAR_HDB-1".to_owned()
            }
        );
    }

    #[tokio::test]
    async fn an_empty_stream_is_scanned_too() {
        let clamd = fake(|mut conn| async move {
            let (data, pieces) = read_stream(&mut conn).await;
            assert!(data.is_empty() && pieces.is_empty());
            conn.write_all(b"stream: OK\0").await.expect("answer");
        })
        .await;
        let scan = clamd.start().await.expect("start");
        assert_eq!(scan.finish().await.expect("verdict"), Verdict::Clean);
    }

    /// Like clamd at StreamMaxLength: answers after `limit` bytes and closes
    /// with data unread (a reset).
    async fn limited(limit: usize) -> Clamd {
        fake(move |mut conn| async move {
            let mut buf = vec![0u8; limit];
            conn.read_exact(&mut buf).await.expect("some of the stream");
            conn.write_all(b"INSTREAM size limit exceeded. ERROR\0")
                .await
                .expect("answer");
            drop(conn);
        })
        .await
    }

    #[tokio::test]
    async fn the_size_limit_is_reported_while_feeding() {
        let clamd = limited(200 * 1024).await;
        let mut scan = clamd.start().await.expect("start");
        let data = content(1024 * 1024);
        let mut result = Ok(());
        for _ in 0..64 {
            result = scan.feed(&data).await;
            if result.is_err() {
                break;
            }
        }
        assert!(
            matches!(result, Err(ScanError::LimitExceeded)),
            "{result:?}"
        );
        // The session is spent.
        assert!(matches!(
            scan.feed(b"x").await,
            Err(ScanError::Unreachable(_))
        ));
    }

    #[tokio::test]
    async fn the_size_limit_is_reported_at_the_end() {
        // Everything was sent before clamd answered: the verdict read finds it.
        let clamd = limited(10 + 4 + 1000).await;
        let mut scan = clamd.start().await.expect("start");
        scan.feed(&content(1000)).await.expect("feed");
        assert!(matches!(scan.finish().await, Err(ScanError::LimitExceeded)));
    }

    #[tokio::test]
    async fn a_garbage_answer_is_a_protocol_error() {
        let clamd = fake(|mut conn| async move {
            read_stream(&mut conn).await;
            conn.write_all(b"UNKNOWN COMMAND\0").await.expect("answer");
        })
        .await;
        let scan = clamd.start().await.expect("start");
        match scan.finish().await {
            Err(ScanError::Protocol(answer)) => assert_eq!(answer, "UNKNOWN COMMAND"),
            other => panic!("{other:?}"),
        }
        for answer in ["stream: FOUND", "stream: ", "stream: ok", "\u{fffd}"] {
            assert!(matches!(
                verdict(answer.to_owned()),
                Err(ScanError::Protocol(_))
            ));
        }
    }

    #[tokio::test]
    async fn silence_is_a_timeout() {
        let clamd = fake_with_timeout(Duration::from_millis(200), |mut conn| async move {
            read_stream(&mut conn).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let scan = clamd.start().await.expect("start");
        let started = std::time::Instant::now();
        assert!(matches!(scan.finish().await, Err(ScanError::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_scanner_that_stops_reading_is_a_timeout() {
        let clamd = fake_with_timeout(Duration::from_millis(300), |conn| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(conn);
        })
        .await;
        let mut scan = clamd.start().await.expect("start");
        let data = content(1024 * 1024);
        let mut result = Ok(());
        for _ in 0..64 {
            result = scan.feed(&data).await;
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ScanError::Timeout)), "{result:?}");
    }

    #[tokio::test]
    async fn a_close_without_an_answer_is_unreachable() {
        let clamd = fake(|mut conn| async move {
            read_stream(&mut conn).await;
        })
        .await;
        let scan = clamd.start().await.expect("start");
        assert!(matches!(
            scan.finish().await,
            Err(ScanError::Unreachable(_))
        ));
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let clamd = Clamd::parse(&format!("tcp://{addr}"), T).expect("url");
        assert!(matches!(
            clamd.start().await,
            Err(ScanError::Unreachable(_))
        ));
        assert!(matches!(clamd.ping().await, Err(ScanError::Unreachable(_))));
        let missing = Clamd::parse("unix:///nonexistent/clamd.ctl", T).expect("url");
        assert!(matches!(
            missing.ping().await,
            Err(ScanError::Unreachable(_))
        ));
    }

    #[tokio::test]
    async fn ping() {
        let clamd = fake(|mut conn| async move {
            let mut command = [0u8; 6];
            conn.read_exact(&mut command).await.expect("command");
            assert_eq!(&command, b"zPING\0");
            conn.write_all(b"PONG\0").await.expect("answer");
        })
        .await;
        clamd.ping().await.expect("pong");
        let clamd = fake(|mut conn| async move {
            let mut command = [0u8; 6];
            conn.read_exact(&mut command).await.expect("command");
            conn.write_all(b"PANG\0").await.expect("answer");
        })
        .await;
        assert!(matches!(clamd.ping().await, Err(ScanError::Protocol(a)) if a == "PANG"));
    }

    #[tokio::test]
    async fn unix_sockets() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("clamd.ctl");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            if let Ok((mut conn, _)) = listener.accept().await {
                let (data, _) = read_stream(&mut conn).await;
                let answer: &[u8] = if data == b"evil" {
                    b"stream: Test FOUND\0"
                } else {
                    b"stream: OK\0"
                };
                conn.write_all(answer).await.expect("answer");
            }
        });
        let clamd = Clamd::parse(&format!("unix://{}", path.display()), T).expect("url");
        assert_eq!(clamd.addr(), &ClamdAddr::Unix(path.clone()));
        let mut scan = clamd.start().await.expect("start");
        scan.feed(b"evil").await.expect("feed");
        assert!(matches!(
            scan.finish().await,
            Ok(Verdict::Infected { signature }) if signature == "Test"
        ));
    }

    #[test]
    fn parses_urls() {
        let ok = |url: &str| Clamd::parse(url, T).map(|c| c.addr().clone());
        assert_eq!(
            ok("tcp://127.0.0.1:3310"),
            Ok(ClamdAddr::Tcp("127.0.0.1:3310".into()))
        );
        assert_eq!(
            ok("tcp://clamd:3310/"),
            Ok(ClamdAddr::Tcp("clamd:3310".into()))
        );
        assert_eq!(
            ok("tcp://[::1]:3310"),
            Ok(ClamdAddr::Tcp("[::1]:3310".into()))
        );
        assert_eq!(
            ok("unix:///run/clamav/clamd.ctl"),
            Ok(ClamdAddr::Unix("/run/clamav/clamd.ctl".into()))
        );
        for bad in [
            "",
            "clamd:3310",
            "http://clamd:3310",
            "tcp://clamd",
            "tcp://:3310",
            "tcp://clamd:0",
            "tcp://clamd:99999",
            "tcp://clamd:port",
            "tcp://::1:3310",
            "tcp://user@clamd:3310",
            "unix://relative/clamd.ctl",
            "unix://",
        ] {
            let err = Clamd::parse(bad, T).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert!(Clamd::parse("tcp://clamd:3310", Duration::ZERO).is_err());
        assert_eq!(
            ClamdAddr::Tcp("h:1".into()).to_string(),
            "tcp://h:1".to_owned()
        );
    }
}
