//! One upload, streamed: sniff, count, scan, seal, store.
//!
//! 1. The first [`HEAD_LEN`] bytes (or the whole file, when smaller) are
//!    read and the type is decided from them ([`super::sniff`]); a type not
//!    on the allow-list is refused before anything is written.
//! 2. A clamd `INSTREAM` session is opened; the scanner down means refused
//!    ([`WhenScannerDown::Refuse`]) or kept as `pending_scan`
//!    ([`WhenScannerDown::Queue`]).
//! 3. Every piece of the body is counted against the limit (past it: the
//!    upload is aborted, [`FileError::TooLarge`]), fed to clamd, sealed
//!    ([`super::seal::StreamSealer`]) and written to a multipart upload of
//!    the object store, with back-pressure: at most a few parts in flight.
//!    Memory stays at a few object-store parts whatever the file's size.
//! 4. At the end the verdict is read before the object is completed: an
//!    infected file's upload is aborted, so its object never becomes
//!    visible. A clean one is completed, then given its row.
//!
//! A body that fails (the client went away, a length shorter than
//! declared) aborts the upload: [`FileError::Incomplete`]. An object store
//! that fails aborts it too: [`FileError::Storage`]. Files that fit in the
//! first read are written with one `PUT`.

use bytes::Bytes;
use courier_protocol::{ChannelId, FileId, UserId};
use futures_util::{Stream, StreamExt};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::scan::{ScanSession, Verdict};
use super::seal::{FileKey, StreamSealer, CHUNK_LEN};
use super::sniff::{self, Detected};
use super::{key_scope, storage, FileError, Files, WhenScannerDown};
use crate::crypto::file_keys::seal_name;
use crate::durable::store::{FileRecord, FileState};

/// How much of a file decides its type (and, when it is all of it, makes a
/// single `PUT`).
pub const HEAD_LEN: usize = 64 * 1024;

/// Object store parts in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Bytes per multipart part (S3's minimum is 5 MiB).
const PART_LEN: usize = 5 * 1024 * 1024;

/// Who uploads what where.
#[derive(Clone, Debug)]
pub struct UploadRequest {
    pub owner: UserId,
    /// The channel for an attachment; `None` for the owner's vault.
    pub channel: Option<ChannelId>,
    /// The name the client gave (sanitized here; metadata only).
    pub claimed_name: String,
}

/// What the scanner said, for the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanOutcome {
    Clean,
    /// The scanner was down and the file is queued.
    Queued(String),
    /// No scanner is configured (development).
    NotScanned,
}

/// A stored file and how its scan went.
#[derive(Debug)]
pub struct Uploaded {
    pub record: FileRecord,
    pub name: String,
    pub scan: ScanOutcome,
}

/// The scan of one upload, or why there is none.
enum Scan {
    Live(ScanSession),
    Skipped(ScanOutcome),
}

impl Files {
    /// Takes one file from `body` (see the module doc). Body errors are
    /// the client's: [`FileError::Incomplete`].
    pub async fn upload<S, E>(&self, req: UploadRequest, mut body: S) -> Result<Uploaded, FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let limit = self.config.max_bytes;
        // 1. The head.
        let mut head: Vec<u8> = Vec::with_capacity(HEAD_LEN);
        let mut rest: Option<Bytes> = None;
        let mut ended = false;
        while head.len() < HEAD_LEN {
            match body.next().await {
                None => {
                    ended = true;
                    break;
                }
                Some(Err(_)) => return Err(FileError::Incomplete),
                Some(Ok(piece)) => {
                    let room = HEAD_LEN - head.len();
                    if piece.len() > room {
                        head.extend_from_slice(&piece[..room]);
                        rest = Some(piece.slice(room..));
                    } else {
                        head.extend_from_slice(&piece);
                    }
                }
            }
            if head.len() as u64 > limit {
                return Err(FileError::TooLarge { limit });
            }
        }
        let detected = sniff::sniff(&head, &self.config.allowed)?;
        // 2. The scanner.
        let mut scan = match &self.config.scanner {
            None if self.config.require_scanner => {
                return Err(FileError::ScannerDown(
                    "no virus scanner is configured (COURIER_FILES_CLAMD_URL)".into(),
                ))
            }
            None => Scan::Skipped(ScanOutcome::NotScanned),
            Some(clamd) => match clamd.start().await {
                Ok(session) => Scan::Live(session),
                Err(e) => Scan::Skipped(self.scanner_down(e.to_string())?),
            },
        };
        let id = FileId::new();
        let key = FileKey::generate()?;
        let mut sealer = StreamSealer::new(&key, id.0)?;
        let object_key = storage::object_key(id);
        let location = storage::path(&object_key);
        let mut sealed = Vec::new();
        let mut taken = head.len() as u64;
        if let Scan::Live(session) = &mut scan {
            if let Err(e) = session.feed(&head).await {
                scan = Scan::Skipped(self.scanner_down(e.to_string())?);
            }
        }
        sealer.push(&head, &mut sealed)?;
        drop(head);
        // 3. The body: one PUT when it all came in the head.
        let put = if ended && rest.is_none() {
            let mut payload = vec![sealer.header()];
            payload.append(&mut sealed);
            payload.push(sealer.finish()?);
            let verdict = finish_scan(scan, self).await?;
            self.objects
                .put(&location, PutPayload::from_iter(payload))
                .await?;
            verdict
        } else {
            let upload = self.objects.put_multipart(&location).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_LEN);
            writer.put(sealer.header());
            for chunk in sealed.drain(..) {
                writer.put(chunk);
            }
            let streamed = self
                .stream_body(
                    &mut body,
                    rest,
                    &mut sealer,
                    &mut scan,
                    &mut writer,
                    &mut taken,
                )
                .await;
            let finished = match streamed {
                Ok(()) => match sealer.finish() {
                    Ok(last) => {
                        writer.put(last);
                        finish_scan(scan, self).await
                    }
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            };
            match finished {
                Ok(verdict) => {
                    writer.finish().await?;
                    verdict
                }
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(error = %abort, "aborting a refused upload failed");
                    }
                    return Err(e);
                }
            }
        };
        if let Some(dir) = &self.local_dir {
            if let Err(e) = crate::durable::private_files::make_private(&dir.join(&object_key)) {
                tracing::warn!(error = %e, "cannot make a stored object 0600");
            }
        }
        // 4. The row.
        let name = sniff::sanitize_name(&req.claimed_name);
        let record = self.record(&req, id, &key, &name, &detected, taken, object_key, &put)?;
        if let Err(e) = self.store.insert_file(record.clone()).await {
            let _ = self.objects.delete(&location).await;
            return Err(e.into());
        }
        Ok(Uploaded {
            record,
            name,
            scan: put,
        })
    }

    /// The rest of the body after the head: count, scan, seal, write.
    async fn stream_body<S, E>(
        &self,
        body: &mut S,
        mut rest: Option<Bytes>,
        sealer: &mut StreamSealer,
        scan: &mut Scan,
        writer: &mut WriteMultipart,
        taken: &mut u64,
    ) -> Result<(), FileError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let limit = self.config.max_bytes;
        let mut sealed = Vec::new();
        loop {
            let piece = match rest.take() {
                Some(piece) => piece,
                None => match body.next().await {
                    None => return Ok(()),
                    Some(Err(_)) => return Err(FileError::Incomplete),
                    Some(Ok(piece)) => piece,
                },
            };
            *taken += piece.len() as u64;
            if *taken > limit {
                return Err(FileError::TooLarge { limit });
            }
            if let Scan::Live(session) = scan {
                if let Err(e) = session.feed(&piece).await {
                    *scan = Scan::Skipped(self.scanner_down(e.to_string())?);
                }
            }
            sealer.push(&piece, &mut sealed)?;
            for chunk in sealed.drain(..) {
                writer.put(chunk);
            }
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        }
    }

    /// The scanner failed: refuse, or go on unscanned and queue the file.
    pub(super) fn scanner_down(&self, why: String) -> Result<ScanOutcome, FileError> {
        metrics::counter!(crate::telemetry::names::FILE_SCANNER_DOWN).increment(1);
        match self.config.when_scanner_down {
            WhenScannerDown::Refuse => Err(FileError::ScannerDown(why)),
            WhenScannerDown::Queue => Ok(ScanOutcome::Queued(why)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        req: &UploadRequest,
        id: FileId,
        key: &FileKey,
        name: &str,
        detected: &Detected,
        size: u64,
        object_key: String,
        scan: &ScanOutcome,
    ) -> Result<FileRecord, FileError> {
        let (name_ciphertext, name_nonce) = seal_name(key, id, name)?;
        let wrapped = self
            .cipher
            .wrap_file_key(id, key_scope(req.owner, req.channel), key)?;
        Ok(FileRecord {
            id,
            owner_id: req.owner,
            channel_id: req.channel,
            name_ciphertext,
            name_nonce,
            mime: detected.mime.to_owned(),
            size,
            object_key,
            chunk_len: CHUNK_LEN,
            key: wrapped,
            state: match scan {
                ScanOutcome::Queued(_) => FileState::PendingScan,
                ScanOutcome::Clean | ScanOutcome::NotScanned => FileState::Ready,
            },
            created_at: crate::now_ms(),
            attached_at: None,
            deleted_at: None,
        })
    }
}

/// Reads the verdict: infected is an error, clean or skipped is the outcome.
async fn finish_scan(scan: Scan, files: &Files) -> Result<ScanOutcome, FileError> {
    match scan {
        Scan::Skipped(outcome) => Ok(outcome),
        Scan::Live(session) => match session.finish().await {
            Ok(Verdict::Clean) => Ok(ScanOutcome::Clean),
            Ok(Verdict::Infected { signature }) => Err(FileError::Infected { signature }),
            Err(e) => files.scanner_down(e.to_string()),
        },
    }
}
