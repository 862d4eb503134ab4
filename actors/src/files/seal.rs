//! Streaming authenticated encryption of file content (the file vault's
//! objects).
//!
//! Every file is sealed under a [`FileKey`] of its own (32 random bytes,
//! stored wrapped elsewhere) with AES-256-GCM in the STREAM construction, so
//! that a file of any size is sealed and opened chunk by chunk, and a byte
//! range is read by opening only the chunks that hold it.
//!
//! # Format of a stored object
//!
//! ```text
//! header (HEADER_LEN = 16 bytes)
//!   magic b"CRF1" (4) | chunk_len u32 BE (4) | nonce prefix (7 random bytes) | 0u8 reserved (1)
//! chunk 0, chunk 1, ..., chunk n-1 (n >= 1)
//!   each: AES-256-GCM ciphertext of its plaintext | 16-byte tag
//! ```
//!
//! - The nonce of chunk `i` (12 bytes) is `prefix (7) | i as u32 BE (4) |
//!   last (1)`, `last` being `0x01` on the final chunk and `0x00` on every
//!   other.
//! - The associated data of every chunk is `b"courier/file/v1\0" (16) | file
//!   id (16, the uuid's bytes) | header (16)`.
//! - Every chunk but the last holds exactly `chunk_len` plaintext bytes; the
//!   last holds `0..=chunk_len` (a file of `k * chunk_len` bytes ends with a
//!   full chunk; an empty file is the header and one empty last chunk). So
//!   an object of `p` plaintext bytes is [`sealed_len`]`(p, chunk_len)` bytes
//!   long and plaintext byte `x` lives in chunk `x / chunk_len`.
//!
//! Because the index and the last flag are in the nonce and the file id and
//! header in the associated data, a chunk that is altered, moved to another
//! position, swapped with another, or copied from another file (even one
//! sealed under the same key) fails to open, as does every chunk once the
//! header is changed: [`SealError::Authentication`]. An object cut after a
//! chunk boundary (its last chunk gone), or with whole chunks' worth of bytes
//! appended, is [`SealError::Truncated`].
//!
//! [`StreamSealer`] seals a stream fed in slices of any size;
//! [`StreamOpener`] opens single chunks (range reads, with [`span`] saying
//! which chunks and which object bytes a plaintext range needs);
//! [`open_all`] opens a whole object in memory.
//!
//! # Errors
//!
//! [`SealError::Authentication`] names the chunk that did not open: the
//! object was tampered with, belongs to another file, or the key is wrong.
//! [`SealError::Truncated`]: the object ends too early or goes on after its
//! last chunk. [`SealError::BadHeader`]: not a Courier file object (bad
//! magic, unknown reserved byte, chunk length out of range).
//! [`SealError::Rng`]: the operating system's random number generator
//! failed. [`SealError::TooLong`]: a stream over `u32::MAX` chunks.

use std::fmt;
use std::ops::Range;

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use bytes::Bytes;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

/// The chunk length new objects are sealed with: 64 KiB of plaintext.
pub const CHUNK_LEN: u32 = 64 * 1024;

/// Length of an object's header.
pub const HEADER_LEN: usize = 16;

/// Length of the AES-GCM tag that ends every chunk.
pub const TAG_LEN: usize = 16;

/// The largest chunk length a header may name (16 MiB).
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;

/// Length of a [`FileKey`].
pub const FILE_KEY_LEN: usize = 32;

/// First four bytes of every object.
const MAGIC: &[u8; 4] = b"CRF1";

/// Length of the random nonce prefix in the header.
const PREFIX_LEN: usize = 7;

/// First bytes of every chunk's associated data.
const AAD_DOMAIN: &[u8; 16] = b"courier/file/v1\0";

/// Associated data: domain, file id, header.
const AAD_LEN: usize = 16 + 16 + HEADER_LEN;

/// A per-file random AES-256 key. Zeroized on drop; `Debug` shows no byte of
/// it.
pub struct FileKey([u8; FILE_KEY_LEN]);

impl FileKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<FileKey, SealError> {
        let mut bytes = [0u8; FILE_KEY_LEN];
        fill_random(&mut bytes)?;
        let key = FileKey(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// A key from its bytes (as unwrapped from storage).
    pub fn from_bytes(bytes: [u8; FILE_KEY_LEN]) -> FileKey {
        FileKey(bytes)
    }

    /// The key's bytes (to wrap it for storage).
    pub fn as_bytes(&self) -> &[u8; FILE_KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

impl Drop for FileKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

/// Why an object could not be sealed or opened. No variant carries key or
/// plaintext bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A chunk (or the header) was altered, moved, swapped from another file,
    /// or the key is wrong.
    #[error(
        "chunk {chunk} failed authentication: the file object was altered, \
         belongs to another file, or the key is wrong"
    )]
    Authentication {
        /// Index of the chunk that did not open.
        chunk: u32,
    },
    /// The object ends before its last chunk (or has bytes after it).
    #[error("the file object is truncated (or has bytes after its last chunk)")]
    Truncated,
    /// The header is not one of a Courier file object.
    #[error("bad file object header: {0}")]
    BadHeader(&'static str),
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed")]
    Rng,
    /// The stream needs more than `u32::MAX` chunks.
    #[error("the file is too long to seal (more than 2^32 chunks)")]
    TooLong,
}

/// The key, nonce prefix and associated data shared by every chunk of one
/// object.
struct ChunkCipher {
    aead: Aes256Gcm,
    prefix: [u8; PREFIX_LEN],
    aad: [u8; AAD_LEN],
}

impl ChunkCipher {
    fn new(key: &FileKey, file_id: Uuid, header: &[u8; HEADER_LEN]) -> ChunkCipher {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&header[8..8 + PREFIX_LEN]);
        let mut aad = [0u8; AAD_LEN];
        aad[..16].copy_from_slice(AAD_DOMAIN);
        aad[16..32].copy_from_slice(file_id.as_bytes());
        aad[32..].copy_from_slice(header);
        ChunkCipher {
            aead: key.cipher(),
            prefix,
            aad,
        }
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce<Aes256Gcm> {
        let mut nonce = Nonce::<Aes256Gcm>::default();
        nonce[..PREFIX_LEN].copy_from_slice(&self.prefix);
        nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
        nonce[PREFIX_LEN + 4] = u8::from(last);
        nonce
    }

    fn seal(&self, index: u32, plaintext: &[u8], last: bool) -> Result<Bytes, SealError> {
        let payload = Payload {
            msg: plaintext,
            aad: &self.aad,
        };
        self.aead
            .encrypt(&self.nonce(index, last), payload)
            .map(Bytes::from)
            // A chunk is at most 16 MiB, far below AES-GCM's limit.
            .map_err(|_| SealError::TooLong)
    }

    fn open(&self, index: u32, sealed: &[u8], last: bool) -> Result<Vec<u8>, SealError> {
        let payload = Payload {
            msg: sealed,
            aad: &self.aad,
        };
        self.aead
            .decrypt(&self.nonce(index, last), payload)
            .map_err(|_| SealError::Authentication { chunk: index })
    }
}

/// Seals a stream incrementally: feed any slices, get sealed chunks out.
///
/// Write [`StreamSealer::header`] first, then every chunk
/// [`StreamSealer::push`] hands out, in order, then what
/// [`StreamSealer::finish`] returns. Buffered plaintext (at most one chunk)
/// is wiped when the sealer is dropped.
pub struct StreamSealer {
    cipher: ChunkCipher,
    header: [u8; HEADER_LEN],
    chunk_len: usize,
    /// Plaintext not sealed yet: at most `chunk_len` bytes, since a full
    /// chunk is sealed only once more bytes show it is not the last.
    buffer: Zeroizing<Vec<u8>>,
    /// Index of the next chunk to seal.
    index: u32,
    plain_len: u64,
}

impl StreamSealer {
    /// A sealer with the default chunk length ([`CHUNK_LEN`]) and a fresh
    /// random nonce prefix.
    pub fn new(key: &FileKey, file_id: Uuid) -> Result<StreamSealer, SealError> {
        StreamSealer::with_chunk_len(key, file_id, CHUNK_LEN)
    }

    /// A sealer with chunks of `chunk_len` plaintext bytes (`1..=`
    /// [`MAX_CHUNK_LEN`], else [`SealError::BadHeader`]).
    pub fn with_chunk_len(
        key: &FileKey,
        file_id: Uuid,
        chunk_len: u32,
    ) -> Result<StreamSealer, SealError> {
        check_chunk_len(chunk_len)?;
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&chunk_len.to_be_bytes());
        fill_random(&mut header[8..8 + PREFIX_LEN])?;
        let chunk_len = chunk_len as usize;
        Ok(StreamSealer {
            cipher: ChunkCipher::new(key, file_id, &header),
            header,
            chunk_len,
            buffer: Zeroizing::new(Vec::with_capacity(chunk_len)),
            index: 0,
            plain_len: 0,
        })
    }

    /// The 16-byte header; write it first.
    pub fn header(&self) -> Bytes {
        Bytes::copy_from_slice(&self.header)
    }

    /// Buffers `data`; appends to `out` every chunk that is now complete AND
    /// known not to be the last (i.e. emit only while more than chunk_len
    /// bytes are buffered).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) -> Result<(), SealError> {
        let mut data = data;
        while !data.is_empty() {
            if self.buffer.len() == self.chunk_len {
                // More bytes follow: the buffered chunk is not the last.
                let sealed = self.seal_middle(None)?;
                self.buffer.clear();
                out.push(sealed);
            }
            if self.buffer.is_empty() && data.len() > self.chunk_len {
                // A whole chunk with more after it: seal it without copying.
                let (chunk, rest) = data.split_at(self.chunk_len);
                out.push(self.seal_middle(Some(chunk))?);
                self.plain_len += chunk.len() as u64;
                data = rest;
                continue;
            }
            let take = (self.chunk_len - self.buffer.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.buffer.extend_from_slice(head);
            self.plain_len += head.len() as u64;
            data = rest;
        }
        Ok(())
    }

    /// Seals what is buffered as the last chunk.
    pub fn finish(self) -> Result<Bytes, SealError> {
        self.cipher.seal(self.index, &self.buffer, true)
    }

    /// Plaintext bytes taken so far.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    /// Seals `chunk` (or the buffer) as chunk `index`, not the last.
    fn seal_middle(&mut self, chunk: Option<&[u8]>) -> Result<Bytes, SealError> {
        // The last chunk needs an index after this one.
        let next = self.index.checked_add(1).ok_or(SealError::TooLong)?;
        let plaintext = chunk.unwrap_or(&self.buffer);
        let sealed = self.cipher.seal(self.index, plaintext, false)?;
        self.index = next;
        Ok(sealed)
    }
}

/// The length of the object that holds `plain_len` plaintext bytes in chunks
/// of `chunk_len` (a `chunk_len` of 0 counts as 1).
pub fn sealed_len(plain_len: u64, chunk_len: u32) -> u64 {
    let chunks = chunk_count_u64(plain_len, chunk_len);
    (HEADER_LEN as u64)
        .saturating_add(plain_len)
        .saturating_add(chunks.saturating_mul(TAG_LEN as u64))
}

/// How many chunks hold `plain_len` bytes: at least 1 (the empty file has
/// one empty chunk); `u32::MAX` when more would be needed (such a stream
/// cannot be sealed: [`SealError::TooLong`]).
pub fn chunk_count(plain_len: u64, chunk_len: u32) -> u32 {
    u32::try_from(chunk_count_u64(plain_len, chunk_len)).unwrap_or(u32::MAX)
}

fn chunk_count_u64(plain_len: u64, chunk_len: u32) -> u64 {
    plain_len.div_ceil(u64::from(chunk_len.max(1))).max(1)
}

/// Where a plaintext byte range lives in a sealed object: the chunks that
/// hold it and the object bytes they occupy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The chunk holding `range.start`.
    pub first_chunk: u32,
    /// The chunk holding `range.end - 1` (the same as `first_chunk` when one
    /// chunk holds the whole range).
    pub last_chunk: u32,
    /// The object bytes of chunks `first_chunk..=last_chunk`, tags included:
    /// the byte range to fetch from storage.
    pub object_range: Range<u64>,
    /// offset of range.start inside the plaintext of first_chunk
    pub skip: usize,
}

/// For the plaintext byte range `range` (start..end, end <= plain_len, start
/// < end): which chunks hold it and which object bytes those chunks occupy.
///
/// Opening chunks `first_chunk..=last_chunk` (the chunk of index
/// `chunk_count(plain_len, chunk_len) - 1` as the last), concatenating their
/// plaintexts, dropping `skip` bytes and keeping `range.end - range.start`
/// gives the range. A range outside that contract is clamped to the file (an
/// empty one yields the chunk holding its start).
pub fn span(plain_len: u64, chunk_len: u32, range: Range<u64>) -> Span {
    let cl = u64::from(chunk_len.max(1));
    let sealed_cl = cl + TAG_LEN as u64;
    let end = range.end.min(plain_len);
    let start = range.start.min(end.saturating_sub(1));
    let last_byte = end.saturating_sub(1).max(start);
    let first = start / cl;
    let last = last_byte / cl;
    let last_plain = plain_len.saturating_sub(last * cl).min(cl);
    let object_start = HEADER_LEN as u64 + first * sealed_cl;
    let object_end = HEADER_LEN as u64 + last * sealed_cl + last_plain + TAG_LEN as u64;
    Span {
        first_chunk: u32::try_from(first).unwrap_or(u32::MAX),
        last_chunk: u32::try_from(last).unwrap_or(u32::MAX),
        object_range: object_start..object_end,
        // Below chunk_len, a u32.
        skip: (start - first * cl) as usize,
    }
}

/// Opens chunks of one object.
pub struct StreamOpener {
    cipher: ChunkCipher,
    chunk_len: u32,
}

impl StreamOpener {
    /// Parses and checks the header (magic, chunk_len > 0 and <= 16 MiB).
    ///
    /// `header` is the object's first [`HEADER_LEN`] bytes; bytes after them
    /// are ignored, fewer is [`SealError::Truncated`]. The header is
    /// authenticated later, by every chunk: a header changed within the
    /// checked bounds makes each chunk fail with
    /// [`SealError::Authentication`].
    pub fn new(key: &FileKey, file_id: Uuid, header: &[u8]) -> Result<StreamOpener, SealError> {
        let header: &[u8; HEADER_LEN] = header
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(SealError::Truncated)?;
        if &header[..4] != MAGIC {
            return Err(SealError::BadHeader(
                "not a Courier file object (bad magic)",
            ));
        }
        if header[HEADER_LEN - 1] != 0 {
            return Err(SealError::BadHeader("unknown reserved byte"));
        }
        let chunk_len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        check_chunk_len(chunk_len)?;
        Ok(StreamOpener {
            cipher: ChunkCipher::new(key, file_id, header),
            chunk_len,
        })
    }

    /// The chunk length the header names.
    pub fn chunk_len(&self) -> u32 {
        self.chunk_len
    }

    /// Opens the sealed chunk `index` (ciphertext+tag); `last` says whether it
    /// must be the final one.
    ///
    /// A piece shorter than a tag is [`SealError::Truncated`]; a chunk that
    /// is not the last must hold exactly `chunk_len` bytes.
    pub fn open_chunk(&self, index: u32, sealed: &[u8], last: bool) -> Result<Vec<u8>, SealError> {
        if sealed.len() < TAG_LEN {
            return Err(SealError::Truncated);
        }
        let full = self.chunk_len as usize + TAG_LEN;
        if sealed.len() > full || (!last && sealed.len() != full) {
            return Err(SealError::Authentication { chunk: index });
        }
        self.cipher.open(index, sealed, last)
    }
}

/// Opens a whole sealed object in memory (tests, small files): checks every
/// chunk and the end.
///
/// The object's length says where its chunks are: full chunks, then a last
/// chunk of what remains. An object whose last chunk is gone, or with bytes
/// after a full last chunk, is [`SealError::Truncated`]; bytes appended to a
/// shorter last chunk make it fail as [`SealError::Authentication`] (compare
/// the length with [`sealed_len`] when the plaintext length is known).
pub fn open_all(key: &FileKey, file_id: Uuid, object: &[u8]) -> Result<Vec<u8>, SealError> {
    let opener = StreamOpener::new(key, file_id, object)?;
    let body = object.get(HEADER_LEN..).unwrap_or_default();
    if body.len() < TAG_LEN {
        return Err(SealError::Truncated);
    }
    let full = opener.chunk_len as usize + TAG_LEN;
    let mut plain = Vec::with_capacity(body.len());
    let mut pieces = body.chunks(full).peekable();
    let mut index: u32 = 0;
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        match opener.open_chunk(index, piece, last) {
            Ok(chunk) => plain.extend_from_slice(&chunk),
            // A piece that opens with the other flag: the stream ends early
            // (last chunk gone) or goes on after its end.
            Err(SealError::Authentication { .. })
                if piece.len() >= TAG_LEN && opener.cipher.open(index, piece, !last).is_ok() =>
            {
                plain.zeroize();
                return Err(SealError::Truncated);
            }
            Err(SealError::Truncated) if last => {
                plain.zeroize();
                return Err(SealError::Truncated);
            }
            Err(e) => {
                plain.zeroize();
                return Err(e);
            }
        }
        if !last {
            index = index.checked_add(1).ok_or(SealError::TooLong)?;
        }
    }
    Ok(plain)
}

fn check_chunk_len(chunk_len: u32) -> Result<(), SealError> {
    if chunk_len == 0 || chunk_len > MAX_CHUNK_LEN {
        return Err(SealError::BadHeader(
            "chunk length must be between 1 byte and 16 MiB",
        ));
    }
    Ok(())
}

fn fill_random(buf: &mut [u8]) -> Result<(), SealError> {
    use rand::TryRng as _;
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .map_err(|_| SealError::Rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CL: u32 = 16;

    fn key() -> FileKey {
        FileKey::generate().expect("a key")
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Seals `plain` pushing it in slices of the given sizes (cycled).
    fn seal_in(key: &FileKey, id: Uuid, plain: &[u8], cl: u32, slices: &[usize]) -> Vec<u8> {
        let mut sealer = StreamSealer::with_chunk_len(key, id, cl).expect("a sealer");
        let mut object = sealer.header().to_vec();
        let mut out = Vec::new();
        let mut rest = plain;
        let mut i = 0;
        while !rest.is_empty() {
            let n = slices[i % slices.len()].min(rest.len());
            let (now, later) = rest.split_at(n);
            sealer.push(now, &mut out).expect("push");
            rest = later;
            i += 1;
            // Never more than one chunk held back.
            let sealed: u64 = out.iter().map(|c| (c.len() - TAG_LEN) as u64).sum();
            assert!(sealer.plain_len() - sealed <= u64::from(cl));
        }
        assert_eq!(sealer.plain_len(), plain.len() as u64);
        for chunk in out.drain(..) {
            assert_eq!(chunk.len(), cl as usize + TAG_LEN, "middle chunks are full");
            object.extend_from_slice(&chunk);
        }
        object.extend_from_slice(&sealer.finish().expect("finish"));
        object
    }

    fn seal(key: &FileKey, id: Uuid, plain: &[u8]) -> Vec<u8> {
        seal_in(key, id, plain, CL, &[usize::MAX])
    }

    /// The object bytes of chunk `i` (all chunks full but the last).
    fn chunk_range(object_len: usize, i: usize) -> Range<usize> {
        let full = CL as usize + TAG_LEN;
        let start = HEADER_LEN + i * full;
        start..(start + full).min(object_len)
    }

    #[test]
    fn round_trips_every_edge_size() {
        let key = key();
        let id = Uuid::new_v4();
        let cl = CL as usize;
        for len in [0, 1, cl - 1, cl, cl + 1, 2 * cl, 3 * cl, 3 * cl + 5] {
            let plain = data(len);
            for slices in [
                &[usize::MAX][..],
                &[1],
                &[3, 7, 1, 16, 17, 33],
                &[cl],
                &[cl + 1],
            ] {
                let object = seal_in(&key, id, &plain, CL, slices);
                assert_eq!(object.len() as u64, sealed_len(len as u64, CL), "len {len}");
                let chunks = (object.len() - HEADER_LEN).div_ceil(cl + TAG_LEN);
                assert_eq!(chunks as u32, chunk_count(len as u64, CL), "len {len}");
                let opened = open_all(&key, id, &object).expect("opens");
                assert_eq!(opened, plain, "len {len} slices {slices:?}");
            }
        }
    }

    #[test]
    fn default_chunk_len_and_large_pushes() {
        let key = key();
        let id = Uuid::new_v4();
        let plain = data(3 * CHUNK_LEN as usize + 1234);
        let mut sealer = StreamSealer::new(&key, id).expect("a sealer");
        let mut object = sealer.header().to_vec();
        let mut out = Vec::new();
        sealer.push(&plain[..100], &mut out).expect("push");
        sealer.push(&plain[100..], &mut out).expect("push");
        assert_eq!(out.len(), 3);
        for c in &out {
            object.extend_from_slice(c);
        }
        object.extend_from_slice(&sealer.finish().expect("finish"));
        assert_eq!(
            object.len() as u64,
            sealed_len(plain.len() as u64, CHUNK_LEN)
        );
        assert_eq!(open_all(&key, id, &object).expect("opens"), plain);
        let opener = StreamOpener::new(&key, id, &object[..HEADER_LEN]).expect("header");
        assert_eq!(opener.chunk_len(), CHUNK_LEN);
    }

    #[test]
    fn empty_file_is_header_and_one_empty_chunk() {
        let key = key();
        let id = Uuid::new_v4();
        let object = seal(&key, id, b"");
        assert_eq!(object.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(&object[..4], b"CRF1");
        assert_eq!(&object[4..8], &CL.to_be_bytes());
        assert_eq!(object[15], 0);
        assert_eq!(chunk_count(0, CL), 1);
        assert!(open_all(&key, id, &object).expect("opens").is_empty());
    }

    #[test]
    fn two_seals_differ_in_nonce_prefix() {
        let key = key();
        let id = Uuid::new_v4();
        let a = seal(&key, id, b"same content");
        let b = seal(&key, id, b"same content");
        assert_ne!(a[8..15], b[8..15]);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }

    #[test]
    fn span_matches_brute_force_for_every_range() {
        let key = key();
        let id = Uuid::new_v4();
        for len in [1usize, 5, 16, 17, 32, 47, 48, 50] {
            let plain = data(len);
            let object = seal(&key, id, &plain);
            let count = chunk_count(len as u64, CL);
            let opener = StreamOpener::new(&key, id, &object).expect("header");
            for start in 0..len {
                for end in start + 1..=len {
                    let s = span(len as u64, CL, start as u64..end as u64);
                    assert_eq!(s.first_chunk as usize, start / CL as usize);
                    assert_eq!(s.last_chunk as usize, (end - 1) / CL as usize);
                    let r = s.object_range.start as usize..s.object_range.end as usize;
                    assert_eq!(
                        r.start,
                        chunk_range(object.len(), s.first_chunk as usize).start
                    );
                    assert_eq!(r.end, chunk_range(object.len(), s.last_chunk as usize).end);
                    // Opening those bytes chunk by chunk gives the range.
                    let bytes = &object[r];
                    let mut got = Vec::new();
                    for (k, piece) in bytes.chunks(CL as usize + TAG_LEN).enumerate() {
                        let index = s.first_chunk + k as u32;
                        let last = index == count - 1;
                        got.extend(opener.open_chunk(index, piece, last).expect("chunk opens"));
                    }
                    assert_eq!(&got[s.skip..s.skip + (end - start)], &plain[start..end]);
                }
            }
        }
    }

    #[test]
    fn span_clamps_out_of_contract_ranges() {
        let s = span(0, CL, 0..0);
        assert_eq!((s.first_chunk, s.last_chunk, s.skip), (0, 0, 0));
        assert_eq!(s.object_range, 16..32);
        let s = span(20, CL, 5..100);
        assert_eq!(s.object_range, 16..sealed_len(20, CL));
        assert_eq!(span(20, 0, 0..1).first_chunk, 0);
    }

    #[test]
    fn a_flipped_byte_fails_in_its_chunk() {
        let key = key();
        let id = Uuid::new_v4();
        let object = seal(&key, id, &data(40));
        for (i, chunk) in [(0u32, 1usize), (1, 1), (2, 2)] {
            let mut bad = object.clone();
            let r = chunk_range(object.len(), chunk);
            bad[r.start + 3] ^= 0x01;
            match open_all(&key, id, &bad) {
                Err(SealError::Authentication { chunk: c }) => assert_eq!(c as usize, chunk),
                other => panic!("flip in chunk {i}: {other:?}"),
            }
        }
        // A flipped tag byte too.
        let mut bad = object.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::Authentication { chunk: 2 })
        ));
    }

    #[test]
    fn swapped_chunks_fail() {
        let key = key();
        let id = Uuid::new_v4();
        let object = seal(&key, id, &data(40));
        let (a, b) = (chunk_range(object.len(), 0), chunk_range(object.len(), 1));
        let mut bad = object[..HEADER_LEN].to_vec();
        bad.extend_from_slice(&object[b.clone()]);
        bad.extend_from_slice(&object[a]);
        bad.extend_from_slice(&object[b.end..]);
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::Authentication { chunk: 0 })
        ));
    }

    #[test]
    fn a_chunk_from_another_file_fails() {
        let key = key();
        let (id, other_id) = (Uuid::new_v4(), Uuid::new_v4());
        let object = seal(&key, id, &data(40));
        let other = seal(&key, other_id, &data(40));
        let r = chunk_range(object.len(), 1);
        let mut bad = object.clone();
        bad[r.clone()].copy_from_slice(&other[r]);
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::Authentication { chunk: 1 })
        ));
        // Even with the other file's header (same key, same position): the
        // file id is in the associated data.
        assert!(matches!(
            open_all(&key, id, &other),
            Err(SealError::Authentication { chunk: 0 })
        ));
        // And the wrong key.
        assert!(matches!(
            open_all(&FileKey::from_bytes([7; 32]), id, &object),
            Err(SealError::Authentication { chunk: 0 })
        ));
    }

    #[test]
    fn a_missing_last_chunk_is_truncated() {
        let key = key();
        let id = Uuid::new_v4();
        for len in [40usize, 48] {
            let object = seal(&key, id, &data(len));
            let last = chunk_range(object.len(), 2);
            assert!(matches!(
                open_all(&key, id, &object[..last.start]),
                Err(SealError::Truncated)
            ));
            // Cut inside a chunk: what is left of it does not open.
            assert!(open_all(&key, id, &object[..last.start + 5]).is_err());
            assert!(matches!(
                open_all(&key, id, &object[..HEADER_LEN + 3]),
                Err(SealError::Truncated)
            ));
            assert!(matches!(
                open_all(&key, id, &object[..HEADER_LEN]),
                Err(SealError::Truncated)
            ));
            assert!(matches!(
                open_all(&key, id, &object[..7]),
                Err(SealError::Truncated)
            ));
        }
    }

    #[test]
    fn appended_bytes_fail() {
        let key = key();
        let id = Uuid::new_v4();
        // After a full last chunk: a piece too short for a tag, or a chunk's
        // worth, both show as truncation (the real end is followed by more).
        let object = seal(&key, id, &data(32));
        for extra in [1usize, 5, 15, 16, 20, 32, 40] {
            let mut bad = object.clone();
            bad.extend(std::iter::repeat_n(0xAB, extra));
            assert!(
                matches!(open_all(&key, id, &bad), Err(SealError::Truncated)),
                "{extra} bytes after a full last chunk"
            );
        }
        // After a short last chunk: that chunk no longer opens.
        let object = seal(&key, id, &data(40));
        let mut bad = object.clone();
        bad.extend_from_slice(b"xyz");
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::Authentication { chunk: 2 })
        ));
        // A copy of the whole object after itself.
        let mut bad = object.clone();
        bad.extend_from_slice(&object[HEADER_LEN..]);
        assert!(open_all(&key, id, &bad).is_err());
    }

    #[test]
    fn a_changed_header_fails() {
        let key = key();
        let id = Uuid::new_v4();
        let object = seal(&key, id, &data(40));
        // Another valid chunk length: the header is authenticated by chunk 0.
        for cl in [8u32, 17, 32, 1000] {
            let mut bad = object.clone();
            bad[4..8].copy_from_slice(&cl.to_be_bytes());
            assert!(
                matches!(
                    open_all(&key, id, &bad),
                    Err(SealError::Authentication { chunk: 0 })
                ),
                "chunk_len {cl}"
            );
        }
        // Out of range.
        for cl in [0u32, MAX_CHUNK_LEN + 1, u32::MAX] {
            let mut bad = object.clone();
            bad[4..8].copy_from_slice(&cl.to_be_bytes());
            assert!(matches!(
                open_all(&key, id, &bad),
                Err(SealError::BadHeader(_))
            ));
        }
        // The nonce prefix.
        let mut bad = object.clone();
        bad[9] ^= 1;
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::Authentication { chunk: 0 })
        ));
        // Magic and reserved byte.
        let mut bad = object.clone();
        bad[0] = b'X';
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::BadHeader(_))
        ));
        let mut bad = object.clone();
        bad[15] = 1;
        assert!(matches!(
            open_all(&key, id, &bad),
            Err(SealError::BadHeader(_))
        ));
    }

    #[test]
    fn open_chunk_checks_position_and_length() {
        let key = key();
        let id = Uuid::new_v4();
        let object = seal(&key, id, &data(40));
        let opener = StreamOpener::new(&key, id, &object).expect("header");
        let c0 = &object[chunk_range(object.len(), 0)];
        let c2 = &object[chunk_range(object.len(), 2)];
        assert_eq!(
            opener.open_chunk(0, c0, false).expect("opens"),
            data(40)[..16]
        );
        assert!(matches!(
            opener.open_chunk(1, c0, false),
            Err(SealError::Authentication { chunk: 1 })
        ));
        assert!(matches!(
            opener.open_chunk(0, c0, true),
            Err(SealError::Authentication { chunk: 0 })
        ));
        assert!(matches!(
            opener.open_chunk(2, c2, false),
            Err(SealError::Authentication { chunk: 2 })
        ));
        assert_eq!(
            opener.open_chunk(2, c2, true).expect("opens"),
            data(40)[32..]
        );
        assert!(matches!(
            opener.open_chunk(2, &c2[..10], true),
            Err(SealError::Truncated)
        ));
        assert!(matches!(
            StreamOpener::new(&key, id, &object[..10]),
            Err(SealError::Truncated)
        ));
    }

    #[test]
    fn bad_chunk_len_is_refused_and_keys_are_redacted() {
        let key = FileKey::from_bytes([0x42; 32]);
        assert!(matches!(
            StreamSealer::with_chunk_len(&key, Uuid::nil(), 0),
            Err(SealError::BadHeader(_))
        ));
        assert!(matches!(
            StreamSealer::with_chunk_len(&key, Uuid::nil(), MAX_CHUNK_LEN + 1),
            Err(SealError::BadHeader(_))
        ));
        assert_eq!(key.as_bytes(), &[0x42; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("42") && !shown.contains("66"), "{shown}");
        assert_ne!(FileKey::generate().expect("key").as_bytes(), &[0; 32]);
    }
}
