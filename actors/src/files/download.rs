//! Reading a file back: a byte range of its plaintext, as a stream.
//!
//! The 16-byte header is read first (it carries the chunk length and the
//! nonce prefix), then exactly the object bytes of the chunks that hold
//! the range ([`super::seal::span`]). Each chunk is opened as soon as its
//! bytes are in, trimmed to the range and handed on; a chunk that does not
//! open ends the stream with [`FileError::Corrupt`] (the object was altered,
//! swapped or cut), so no unauthenticated byte is ever served. Memory is a
//! chunk or two, whatever the file's size.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStoreExt};

use super::seal::{self, StreamOpener, HEADER_LEN, TAG_LEN};
use super::{key_scope, storage, FileError, Files};
use crate::durable::store::FileRecord;

/// A file's plaintext, piece by piece.
pub type ContentStream = BoxStream<'static, Result<Bytes, FileError>>;

/// Where a stream is.
struct Reading {
    opener: StreamOpener,
    body: BoxStream<'static, object_store::Result<Bytes>>,
    buffer: BytesMut,
    /// The next chunk to open, and the last one the range needs.
    next: u32,
    last_needed: u32,
    /// The file's last chunk (opened with the last flag).
    final_chunk: u32,
    chunk_len: usize,
    plain_len: u64,
    /// Bytes to drop from the first chunk; bytes still to hand on.
    skip: usize,
    remaining: u64,
}

impl Files {
    /// The plaintext of `range` (all of it when `None`) of a file. The
    /// range must lie inside the file (the edge answers 416 otherwise).
    pub async fn content(
        &self,
        f: &FileRecord,
        range: Option<Range<u64>>,
    ) -> Result<ContentStream, FileError> {
        let range = range.unwrap_or(0..f.size);
        if range.start >= range.end {
            return Ok(stream::empty().boxed());
        }
        let key = self
            .cipher
            .unwrap_file_key(f.id, key_scope(f.owner_id, f.channel_id), &f.key)?;
        let location = storage::path(&f.object_key);
        let header = self
            .objects
            .get_range(&location, 0..HEADER_LEN as u64)
            .await?;
        let opener = StreamOpener::new(&key, f.id.0, &header)?;
        let chunk_len = opener.chunk_len();
        let span = seal::span(f.size, chunk_len, range.clone());
        let options = GetOptions {
            range: Some(GetRange::Bounded(span.object_range.clone())),
            ..GetOptions::default()
        };
        let body = self
            .objects
            .get_opts(&location, options)
            .await?
            .into_stream();
        let reading = Reading {
            opener,
            body,
            buffer: BytesMut::new(),
            next: span.first_chunk,
            last_needed: span.last_chunk,
            final_chunk: seal::chunk_count(f.size, chunk_len) - 1,
            chunk_len: chunk_len as usize,
            plain_len: f.size,
            skip: span.skip,
            remaining: range.end - range.start,
        };
        Ok(stream::try_unfold(reading, next_piece).boxed())
    }
}

/// Opens the next chunk of the range; `None` once the range is served.
async fn next_piece(mut r: Reading) -> Result<Option<(Bytes, Reading)>, FileError> {
    if r.remaining == 0 || r.next > r.last_needed {
        return Ok(None);
    }
    let last = r.next == r.final_chunk;
    let sealed_len = if last {
        let before = u64::from(r.next) * r.chunk_len as u64;
        (r.plain_len - before) as usize + TAG_LEN
    } else {
        r.chunk_len + TAG_LEN
    };
    while r.buffer.len() < sealed_len {
        match r.body.next().await {
            Some(Ok(bytes)) => r.buffer.extend_from_slice(&bytes),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(seal::SealError::Truncated.into()),
        }
    }
    let sealed = r.buffer.split_to(sealed_len);
    let plain = r.opener.open_chunk(r.next, &sealed, last)?;
    r.next += 1;
    let start = std::mem::take(&mut r.skip).min(plain.len());
    let end = (start as u64 + r.remaining).min(plain.len() as u64) as usize;
    r.remaining -= (end - start) as u64;
    metrics::counter!(crate::telemetry::names::FILE_BYTES_OUT).increment((end - start) as u64);
    let mut plain = Bytes::from(plain);
    Ok(Some((plain.split_off(start).split_to(end - start), r)))
}
