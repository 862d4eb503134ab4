//! The virus scanner client (`courier_actors::files::scan`) against a real
//! `clamd` ([`support::clamd`]; missing, the test fails): the EICAR test
//! file is found alone and inside a bigger file, clean content is clean, a
//! stream past `StreamMaxLength` (64M) is refused as too large, and a
//! stopped clamd is unreachable until it is started again.

mod support;

use std::time::{Duration, Instant};

use courier_actors::files::scan::{Clamd, ScanError, Verdict};
use support::clamd::{ClamdServer, EICAR, EICAR_SIGNATURE};

async fn scan(clamd: &Clamd, pieces: &[&[u8]]) -> Result<Verdict, ScanError> {
    let mut session = clamd.start().await?;
    for piece in pieces {
        session.feed(piece).await?;
    }
    session.finish().await
}

fn infected() -> Verdict {
    Verdict::Infected {
        signature: EICAR_SIGNATURE.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_clamd() {
    let started = Instant::now();
    let mut server = ClamdServer::start().await;
    let clamd = Clamd::parse(&server.url(), Duration::from_secs(10)).expect("clamd URL");
    clamd.ping().await.expect("PONG");

    assert_eq!(scan(&clamd, &[EICAR]).await.expect("verdict"), infected());
    let text = b"Blood pressure 120/80, next visit in May.\n".repeat(100);
    assert_eq!(
        scan(&clamd, &[&text]).await.expect("verdict"),
        Verdict::Clean
    );
    assert_eq!(scan(&clamd, &[]).await.expect("verdict"), Verdict::Clean);

    // EICAR inside a bigger buffer, fed in odd pieces across the 64 KiB
    // frames: after a PDF header and 200 KB of content.
    let mut pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    pdf.extend((0..200_000).map(|i| b"abcdefghij \n"[i % 12]));
    pdf.extend_from_slice(EICAR);
    pdf.extend_from_slice(b"\n%%EOF\n");
    let pieces: Vec<&[u8]> = pdf.chunks(70_001).collect();
    assert_eq!(scan(&clamd, &pieces).await.expect("verdict"), infected());

    // 70 MB: past StreamMaxLength (64M), told while still feeding.
    let megabyte = vec![b'z'; 1024 * 1024];
    let mut session = clamd.start().await.expect("start");
    let mut fed = Ok(());
    for _ in 0..70 {
        fed = session.feed(&megabyte).await;
        if fed.is_err() {
            break;
        }
    }
    let result = match fed {
        Ok(()) => session.finish().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(result, Err(ScanError::LimitExceeded)),
        "70 MB: {result:?}; clamd's log:\n{}",
        server.log_tail(20)
    );

    server.stop().await;
    assert!(matches!(clamd.ping().await, Err(ScanError::Unreachable(_))));
    assert!(matches!(
        scan(&clamd, &[b"hello"]).await,
        Err(ScanError::Unreachable(_))
    ));

    server.restart().await;
    assert_eq!(
        scan(&clamd, &[EICAR]).await.expect("after restart"),
        infected()
    );
    eprintln!("files_scanner: {:?}", started.elapsed());
}
