//! The backup file format: header, then a STREAM of AES-256-GCM chunks.
//!
//! Byte layout (version 1, all integers big-endian), documented in
//! `docs/formats.md`:
//!
//! ```text
//! header (44 bytes):
//!   magic "BKVB" | version u8 = 1 | aead u8 (1 = AES-256-GCM)
//!   | compression u8 (0 none, 1 zstd) | content u8 (0 file, 1 tar)
//!   | chunk_size u32 | created_unix u64 | backup_id [16] | nonce_prefix [7] | reserved u8 = 0
//! chunks: every chunk but the last holds exactly chunk_size plaintext bytes;
//!   the last holds 0..=chunk_size. Each is ciphertext || 16-byte tag.
//! ```
//!
//! Chunk key: HKDF-SHA256(salt = backup_id, ikm = K, info = "bkv backup v1" || header).
//! Chunk nonce: nonce_prefix (7) || counter u32 || last flag u8 (STREAM,
//! Hoang-Reyhanitabar-Rogaway-Vizár). Every chunk's AAD is the header. So a
//! changed header, a reordered, dropped, duplicated or appended chunk and a
//! truncation at any byte all fail authentication. Memory use is one chunk.

use crate::keys::BackupKey;
use hkdf::Hkdf;
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use sha2::Sha256;
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

/// First 4 bytes of every backup.
pub(crate) const MAGIC: [u8; 4] = *b"BKVB";
/// The format version written, and the only one read.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Header size in bytes; the header is also every chunk's AAD.
pub const HEADER_LEN: usize = 44;
/// AES-256-GCM tag bytes at the end of every chunk.
pub(crate) const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk unless the caller chooses (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size readers accept (4 KiB).
pub const MIN_CHUNK_SIZE: u32 = 1 << 12;
/// Readers refuse larger chunks, bounding their memory.
pub const MAX_CHUNK_SIZE: u32 = 1 << 24;

/// Why a backup stream was refused; a reader releases no plaintext that failed a check.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The stream does not start with `MAGIC`: not a bkv backup.
    #[error("not a bkv backup (bad magic)")]
    Magic,
    /// A format version this reader does not know (the version byte).
    #[error("unsupported backup format version {0}")]
    Version(u8),
    /// A header field holds a value this version does not allow (the field's name).
    #[error("unsupported header field {0}")]
    Field(&'static str),
    /// The stream ends inside the header, or a chunk is shorter than its tag.
    #[error("backup is truncated")]
    Truncated,
    /// This chunk (from 0) failed authentication: tampering, truncation, reordering or a wrong key.
    #[error("backup chunk {0} failed authentication: the backup was tampered with, truncated, reordered, or the key is wrong")]
    Auth(u32),
    /// The chunk counter (a `u32`) would overflow.
    #[error("backup has too many chunks")]
    TooManyChunks,
}

impl From<FormatError> for io::Error {
    fn from(e: FormatError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Recovers a [`FormatError`] carried inside an `io::Error`.
pub fn format_error(e: &io::Error) -> Option<&FormatError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<FormatError>())
}

/// How the plaintext is compressed before encryption (header byte 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None = 0,
    /// One zstd stream.
    Zstd = 1,
}

/// What the plaintext is (header byte 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The plaintext is one file's bytes.
    File = 0,
    /// The plaintext is a tar archive of a directory tree.
    Tar = 1,
}

/// A decoded backup header (the 44-byte layout is in the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// How the plaintext is compressed.
    pub compression: Compression,
    /// Whether the plaintext is one file or a tar archive.
    pub content: Content,
    /// Plaintext bytes per chunk; every chunk but the last is full.
    pub chunk_size: u32,
    /// When the backup was made, in seconds since the Unix epoch (re-encryption keeps it).
    pub created_unix: u64,
    /// Random per backup: the HKDF salt of the chunk key.
    pub backup_id: [u8; 16],
    /// Random per backup: the first 7 bytes of every chunk nonce.
    pub nonce_prefix: [u8; 7],
}

impl Header {
    /// A header for a new backup made now, with a fresh random id and nonce prefix.
    pub fn new(compression: Compression, content: Content, chunk_size: u32) -> Self {
        let mut backup_id = [0u8; 16];
        let mut nonce_prefix = [0u8; 7];
        crate::random::OsRng.fill_bytes(&mut backup_id);
        crate::random::OsRng.fill_bytes(&mut nonce_prefix);
        let created_unix = crate::clock::now_unix();
        Header {
            compression,
            content,
            chunk_size,
            created_unix,
            backup_id,
            nonce_prefix,
        }
    }

    /// The 44 bytes that start the backup.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = FORMAT_VERSION;
        h[5] = 1; // AES-256-GCM
        h[6] = self.compression as u8;
        h[7] = self.content as u8;
        h[8..12].copy_from_slice(&self.chunk_size.to_be_bytes());
        h[12..20].copy_from_slice(&self.created_unix.to_be_bytes());
        h[20..36].copy_from_slice(&self.backup_id);
        h[36..43].copy_from_slice(&self.nonce_prefix);
        h[43] = 0;
        h
    }

    /// Parses and checks a header: magic, version, field values, chunk size bounds, reserved byte.
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        let (magic, rest) = h.split_at(4);
        if magic != MAGIC {
            return Err(FormatError::Magic);
        }
        let field = |i: usize| rest.get(i - 4).copied().unwrap_or(0);
        if field(4) != FORMAT_VERSION {
            return Err(FormatError::Version(field(4)));
        }
        if field(5) != 1 {
            return Err(FormatError::Field("aead"));
        }
        let compression = match field(6) {
            0 => Compression::None,
            1 => Compression::Zstd,
            _ => return Err(FormatError::Field("compression")),
        };
        let content = match field(7) {
            0 => Content::File,
            1 => Content::Tar,
            _ => return Err(FormatError::Field("content")),
        };
        let mut u32b = [0u8; 4];
        u32b.copy_from_slice(&h[8..12]);
        let chunk_size = u32::from_be_bytes(u32b);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(FormatError::Field("chunk_size"));
        }
        let mut u64b = [0u8; 8];
        u64b.copy_from_slice(&h[12..20]);
        let mut backup_id = [0u8; 16];
        backup_id.copy_from_slice(&h[20..36]);
        let mut nonce_prefix = [0u8; 7];
        nonce_prefix.copy_from_slice(&h[36..43]);
        if h[43] != 0 {
            return Err(FormatError::Field("reserved"));
        }
        Ok(Header {
            compression,
            content,
            chunk_size,
            created_unix: u64::from_be_bytes(u64b),
            backup_id,
            nonce_prefix,
        })
    }
}

fn chunk_key(key: &BackupKey, header: &[u8; HEADER_LEN], backup_id: &[u8; 16]) -> LessSafeKey {
    let hk = Hkdf::<Sha256>::new(Some(backup_id), key.expose());
    let mut info = b"bkv backup v1".to_vec();
    info.extend_from_slice(header);
    let mut k = Zeroizing::new([0u8; 32]);
    // 32 bytes is a valid HKDF-SHA256 output length.
    let _ = hk.expand(&info, k.as_mut());
    match UnboundKey::new(&AES_256_GCM, k.as_ref()) {
        Ok(k) => LessSafeKey::new(k),
        Err(_) => unreachable!("AES-256 key of 32 bytes is always valid"),
    }
}

fn nonce(prefix: &[u8; 7], counter: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Encrypts a plaintext stream into the backup format.
pub struct EncryptWriter<W: Write> {
    inner: W,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    nonce_prefix: [u8; 7],
    chunk_size: usize,
    buf: Vec<u8>,
    counter: u32,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes `header` to `inner` and derives the chunk key from `key` and the header.
    pub fn new(mut inner: W, key: &BackupKey, header: &Header) -> io::Result<Self> {
        let hb = header.encode();
        inner.write_all(&hb)?;
        Ok(EncryptWriter {
            inner,
            key: chunk_key(key, &hb, &header.backup_id),
            header: hb,
            nonce_prefix: header.nonce_prefix,
            chunk_size: header.chunk_size as usize,
            buf: Vec::with_capacity(header.chunk_size as usize + TAG_LEN),
            counter: 0,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let n = nonce(&self.nonce_prefix, self.counter, last);
        self.key
            .seal_in_place_append_tag(n, Aad::from(&self.header), &mut self.buf)
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(FormatError::TooManyChunks)?;
        Ok(())
    }

    /// The stream written so far (a streamed upload takes the sealed bytes out between writes).
    pub(crate) fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Writes the final chunk and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full buffer is sealed as non-final only once more data shows
            // up, so a stream ending on a chunk boundary still ends with a
            // chunk flagged final.
            if self.buf.len() == self.chunk_size {
                self.seal_chunk(false)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            let (head, tail) = data.split_at(take);
            self.buf.extend_from_slice(head);
            data = tail;
        }
        Ok(total)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Decrypts and authenticates a backup stream, yielding plaintext. Fails (an
/// `io::Error` carrying a [`FormatError`]) on any tampering or truncation;
/// plaintext is only released chunk by chunk after authentication.
pub struct DecryptReader<R: Read> {
    inner: R,
    header: Header,
    header_bytes: [u8; HEADER_LEN],
    key: LessSafeKey,
    buf: Vec<u8>,
    pos: usize,
    plain_len: usize,
    counter: u32,
    lookahead: Option<u8>,
    done: bool,
}

pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> DecryptReader<R> {
    /// Reads and checks the header from `inner`; derives the chunk key from `key` and the header.
    pub fn new(mut inner: R, key: &BackupKey) -> io::Result<Self> {
        let mut hb = [0u8; HEADER_LEN];
        if read_full(&mut inner, &mut hb)? < HEADER_LEN {
            return Err(FormatError::Truncated.into());
        }
        let header = Header::decode(&hb)?;
        Ok(DecryptReader {
            key: chunk_key(key, &hb, &header.backup_id),
            buf: Vec::with_capacity(header.chunk_size as usize + TAG_LEN),
            header,
            header_bytes: hb,
            inner,
            pos: 0,
            plain_len: 0,
            counter: 0,
            lookahead: None,
            done: false,
        })
    }

    /// The backup's decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let full = self.header.chunk_size as usize + TAG_LEN;
        self.buf.clear();
        self.buf.resize(full, 0);
        let mut n = 0;
        if let Some(b) = self.lookahead.take() {
            self.buf[0] = b;
            n = 1;
        }
        n += read_full(&mut self.inner, &mut self.buf[n..])?;
        let last = if n < full {
            true
        } else {
            let mut one = [0u8; 1];
            if read_full(&mut self.inner, &mut one)? == 0 {
                true
            } else {
                self.lookahead = Some(one[0]);
                false
            }
        };
        if n < TAG_LEN {
            return Err(FormatError::Truncated.into());
        }
        self.buf.truncate(n);
        let nonce = nonce(&self.header.nonce_prefix, self.counter, last);
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&self.header_bytes), &mut self.buf)
            .map_err(|_| FormatError::Auth(self.counter))?;
        self.plain_len = plain.len();
        self.pos = 0;
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(FormatError::TooManyChunks)?;
        self.done = last;
        Ok(())
    }

    /// The stream read from (a streamed restore feeds it between reads).
    pub(crate) fn inner_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Reads (and authenticates) to the end of the stream.
    pub fn finish(mut self) -> io::Result<R> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.inner)
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain_len {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let avail = &self.buf[self.pos..self.plain_len];
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encrypt(key: &BackupKey, data: &[u8], chunk: u32) -> Vec<u8> {
        let h = Header::new(Compression::None, Content::File, chunk);
        let mut w = EncryptWriter::new(Vec::new(), key, &h).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn decrypt(key: &BackupKey, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = DecryptReader::new(data, key)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn err_of(r: io::Result<Vec<u8>>) -> FormatError {
        let e = r.unwrap_err();
        format_error(&e)
            .cloned()
            .unwrap_or_else(|| panic!("not a format error: {e}"))
    }

    const C: u32 = MIN_CHUNK_SIZE;

    #[test]
    fn roundtrip_boundaries() {
        let k = BackupKey::generate();
        for len in [
            0usize,
            1,
            C as usize - 1,
            C as usize,
            C as usize + 1,
            3 * C as usize,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let ct = encrypt(&k, &data, C);
            let expected_chunks = if len == 0 {
                1
            } else {
                len.div_ceil(C as usize)
            };
            assert_eq!(ct.len(), HEADER_LEN + len + expected_chunks * TAG_LEN);
            assert_eq!(decrypt(&k, &ct).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn truncation_at_chunk_boundary_detected() {
        let k = BackupKey::generate();
        let data = vec![5u8; 3 * C as usize];
        let ct = encrypt(&k, &data, C);
        let cut = HEADER_LEN + 2 * (C as usize + TAG_LEN);
        assert_eq!(err_of(decrypt(&k, &ct[..cut])), FormatError::Auth(1));
        assert_eq!(
            err_of(decrypt(&k, &ct[..HEADER_LEN])),
            FormatError::Truncated
        );
        assert_eq!(err_of(decrypt(&k, &ct[..10])), FormatError::Truncated);
        assert!(matches!(
            err_of(decrypt(&k, &ct[..ct.len() - 1])),
            FormatError::Auth(_)
        ));
    }

    #[test]
    fn reorder_append_header_and_key_detected() {
        let k = BackupKey::generate();
        let data: Vec<u8> = (0..3 * C as usize).map(|i| i as u8).collect();
        let ct = encrypt(&k, &data, C);
        let cs = C as usize + TAG_LEN;
        // Swap chunks 0 and 1.
        let mut swapped = ct[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&ct[HEADER_LEN + cs..HEADER_LEN + 2 * cs]);
        swapped.extend_from_slice(&ct[HEADER_LEN..HEADER_LEN + cs]);
        swapped.extend_from_slice(&ct[HEADER_LEN + 2 * cs..]);
        assert_eq!(err_of(decrypt(&k, &swapped)), FormatError::Auth(0));
        // Append a duplicate of the last chunk.
        let mut appended = ct.clone();
        appended.extend_from_slice(&ct[ct.len() - cs..]);
        assert!(matches!(
            err_of(decrypt(&k, &appended)),
            FormatError::Auth(_)
        ));
        // Header: change created time (authenticated as AAD).
        let mut hdr = ct.clone();
        hdr[15] ^= 1;
        assert_eq!(err_of(decrypt(&k, &hdr)), FormatError::Auth(0));
        // Header: bad magic / version.
        let mut magic = ct.clone();
        magic[0] = b'X';
        assert_eq!(err_of(decrypt(&k, &magic)), FormatError::Magic);
        let mut ver = ct.clone();
        ver[4] = 2;
        assert_eq!(err_of(decrypt(&k, &ver)), FormatError::Version(2));
        // Wrong key.
        assert_eq!(
            err_of(decrypt(&BackupKey::generate(), &ct)),
            FormatError::Auth(0)
        );
    }

    proptest! {
        #[test]
        fn roundtrip_any(data in proptest::collection::vec(any::<u8>(), 0..20_000), chunk in MIN_CHUNK_SIZE..(MIN_CHUNK_SIZE * 3)) {
            let k = BackupKey::from_bytes([3; 32]);
            let ct = encrypt(&k, &data, chunk);
            prop_assert_eq!(decrypt(&k, &ct).unwrap(), data);
        }

        #[test]
        fn any_single_byte_change_is_detected(data in proptest::collection::vec(any::<u8>(), 1..12_000), pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let k = BackupKey::from_bytes([4; 32]);
            let mut ct = encrypt(&k, &data, MIN_CHUNK_SIZE);
            let i = pos.index(ct.len());
            ct[i] ^= 1 << bit;
            prop_assert!(decrypt(&k, &ct).is_err());
        }

        #[test]
        fn any_truncation_is_detected(data in proptest::collection::vec(any::<u8>(), 0..12_000), cut in any::<proptest::sample::Index>()) {
            let k = BackupKey::from_bytes([5; 32]);
            let ct = encrypt(&k, &data, MIN_CHUNK_SIZE);
            let c = cut.index(ct.len());
            prop_assert!(decrypt(&k, &ct[..c]).is_err());
        }

        #[test]
        fn header_decoder_never_panics(bytes in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform12(any::<u8>())) {
            let mut h = [0u8; HEADER_LEN];
            h[..32].copy_from_slice(&bytes);
            h[32..].copy_from_slice(&tail);
            let _ = Header::decode(&h);
        }
    }
}
