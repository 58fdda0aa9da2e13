//! Backups streamed through the async code itself, piece by piece, with no thread and no file:
//! what a browser does (`bkv-web` hands over a picked file's slices and takes the restored
//! plaintext as it is authenticated). Memory stays bounded by one upload part and one chunk,
//! whatever the backup's size.

use super::blob::{BlobStore, MultipartUpload, StoreResult};
use super::unzstd::Unzstd;
use super::{storage_err, BackupStore, Latest, PART_SIZE};
use crate::backup::{Compression, Content, DecryptReader, EncryptWriter, Header, TAG_LEN};
use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::io::{self, Read, Write};
use std::task::Poll;

/// Where a streamed backup's plaintext comes from.
pub trait Chunks: Send {
    /// The next piece of plaintext; `None` at the end.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<u8>>>>;
}

/// Where a streamed restore's plaintext goes: authenticated pieces in order. A restore that
/// fails after some pieces (tampering, truncation) must make the receiver discard them all.
pub trait Output: Send {
    /// Takes the next authenticated piece.
    fn write(&mut self, piece: Vec<u8>) -> BoxFuture<'_, Result<()>>;
}

/// Plaintext handed to [`Output`] at a time.
const PIECE: usize = 1 << 20;

impl BackupStore {
    /// Encrypts what `source` yields under `key` as a single-file backup (uncompressed: the
    /// file a browser picks is usually compressed media already), uploads it in parts, makes
    /// it the latest backup and deletes older ones and other keys' data, like a native create.
    pub async fn create_streamed(
        &self,
        key: &BackupKey,
        source: &mut dyn Chunks,
        chunk_size: u32,
    ) -> Result<Latest> {
        let header = Header::new(Compression::None, Content::File, chunk_size);
        let latest = self.upload_sealed(key, &header, source).await?;
        self.switch_to(&latest, key).await?;
        Ok(latest)
    }

    /// Downloads, authenticates and hands over the newest single-file backup `key` opens, one
    /// authenticated piece at a time (decompressed if the backup is zstd-compressed, as `bkv`
    /// makes a compressible file's). A directory backup (a tar stream) is refused before any
    /// piece is written: it needs the native client.
    pub async fn restore_streamed(
        &self,
        key: &BackupKey,
        out: &mut dyn Output,
    ) -> Result<(Latest, Header)> {
        if self.latest().await?.is_none() && self.list().await?.is_empty() {
            return Err(ClientError::NoBackup);
        }
        let latest = self.backup_for(key).await?;
        let mut dec = self.decrypting(&latest, key).await?;
        let header = dec.header().clone();
        if header.content != Content::File {
            return Err(ClientError::Unsupported(
                "this backup is a directory: restore it with the native client (bkv)".into(),
            ));
        }
        let mut unzstd = (header.compression == Compression::Zstd).then(Unzstd::new);
        while let Some(piece) = dec.next_piece().await? {
            match &mut unzstd {
                None => out.write(piece).await?,
                Some(u) => {
                    u.push(&piece);
                    drain(u, out, false).await?;
                }
            }
        }
        if let Some(u) = &mut unzstd {
            drain(u, out, true).await?;
        }
        Ok((latest, header))
    }

    /// Re-encrypts the backup that `old` opens under `new` and uploads it, without switching
    /// `latest.json` (the caller does, once it is safe): streamed, for builds without threads.
    #[cfg(not(feature = "native"))]
    pub async fn reencrypt(&self, old: &BackupKey, new: &BackupKey) -> Result<Latest> {
        let src = self.backup_for(old).await?;
        let mut dec = self.decrypting(&src, old).await?;
        let h = dec.header().clone();
        let mut header = Header::new(h.compression, h.content, h.chunk_size);
        // The same backup under another key: it keeps its creation time (as natively).
        header.created_unix = h.created_unix;
        self.upload_sealed(new, &header, &mut dec).await
    }

    /// The stored backup `latest` names, decrypted under `key` as it downloads.
    async fn decrypting(&self, latest: &Latest, key: &BackupKey) -> Result<Decrypting> {
        let object = self.path(&format!("backups/{}", latest.object));
        let stream = self.store.get(&object).await.map_err(storage_err)?.stream;
        Decrypting::open(stream, key).await
    }

    /// Seals what `source` yields under `key` with `header` and uploads it as a new object in
    /// parts; nothing points to it yet.
    async fn upload_sealed(
        &self,
        key: &BackupKey,
        header: &Header,
        source: &mut dyn Chunks,
    ) -> Result<Latest> {
        let (name, key_id, path) = self.new_object(key);
        let mut up = Upload::start(self.store.as_ref(), &path).await?;
        let mut enc = EncryptWriter::new(Vec::new(), key, header)?;
        let written = async {
            while let Some(piece) = source.next().await? {
                enc.write_all(&piece)?;
                up.drain(enc.inner_mut(), PART_SIZE).await?;
            }
            Ok::<_, ClientError>(())
        }
        .await;
        let sealed = written.and_then(|()| Ok(enc.finish()?));
        let size = match sealed {
            Ok(rest) => up.finish(rest).await?,
            Err(e) => return Err(up.abort(e).await),
        };
        Ok(Latest::uploaded(name, key_id, size, header))
    }
}

/// Hands over what `u` can decompress now.
async fn drain(u: &mut Unzstd, out: &mut dyn Output, ended: bool) -> Result<()> {
    loop {
        let plain = u.next(ended)?;
        if plain.is_empty() {
            return Ok(());
        }
        out.write(plain).await?;
    }
}

/// A multipart upload fed part by part (one part in memory at a time).
pub(super) struct Upload {
    up: Box<dyn MultipartUpload>,
    size: u64,
    /// The part being sent while the next one is sealed: the transfer and the encryption
    /// overlap, with at most two parts in memory.
    in_flight: Option<BoxFuture<'static, StoreResult<()>>>,
}

impl Upload {
    pub(super) async fn start(store: &dyn BlobStore, path: &str) -> Result<Self> {
        let up = store.put_multipart(path).await.map_err(storage_err)?;
        Ok(Upload {
            up,
            size: 0,
            in_flight: None,
        })
    }

    /// Sends what `sealed` holds once it reaches `min` bytes, after the part before it arrived.
    pub(super) async fn drain(&mut self, sealed: &mut Vec<u8>, min: usize) -> Result<()> {
        if sealed.len() >= min {
            let part = std::mem::take(sealed);
            self.size += part.len() as u64;
            self.settle().await?;
            let mut sending = self.up.put_part(Bytes::from(part));
            // Polled once, it is on its way; it is awaited before the next part goes.
            match futures::poll!(&mut sending) {
                Poll::Ready(r) => r.map_err(storage_err)?,
                Poll::Pending => self.in_flight = Some(sending),
            }
        }
        Ok(())
    }

    /// Waits for the part in flight.
    async fn settle(&mut self) -> Result<()> {
        if let Some(p) = self.in_flight.take() {
            p.await.map_err(storage_err)?;
        }
        Ok(())
    }

    /// Uploads the rest and completes the object; its size. On failure the upload is given up.
    pub(super) async fn finish(mut self, mut rest: Vec<u8>) -> Result<u64> {
        let sent = async {
            self.drain(&mut rest, 1).await?;
            self.settle().await?;
            crate::crash_point("upload-unfinished");
            self.up.complete().await.map_err(storage_err)
        }
        .await;
        match sent {
            Ok(_) => Ok(self.size),
            Err(e) => Err(self.abort(e).await),
        }
    }

    /// Gives up the upload (nothing was stored under its name) and returns `e`. The part in
    /// flight is waited for first, so it cannot land after the abort.
    pub(super) async fn abort(mut self, e: ClientError) -> ClientError {
        if let Some(p) = self.in_flight.take() {
            let _ = p.await;
        }
        let _ = self.up.abort().await;
        e
    }
}

/// Bytes received and not yet consumed (a download not yet decrypted, plaintext not yet
/// decompressed): a reader that only ever returns what has been pushed.
#[derive(Default)]
pub(super) struct Fifo {
    buf: Vec<u8>,
    pos: usize,
}

impl Fifo {
    pub(super) fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn push(&mut self, b: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(b);
    }
}

impl Read for Fifo {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.buf.get(self.pos..).unwrap_or_default();
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// A download decrypted as it arrives. The reader underneath only ever sees a whole chunk (and
/// one byte beyond it, which tells a last chunk from the others) or the true end of the
/// object, so a chunk split across downloaded pieces is never mistaken for a truncation.
struct Decrypting {
    stream: BoxStream<'static, StoreResult<Bytes>>,
    dec: DecryptReader<Fifo>,
    ended: bool,
}

impl Decrypting {
    async fn open(
        mut stream: BoxStream<'static, StoreResult<Bytes>>,
        key: &BackupKey,
    ) -> Result<Self> {
        let mut fifo = Fifo::default();
        let ended = fill(&mut stream, &mut fifo, crate::backup::HEADER_LEN).await?;
        let dec = DecryptReader::new(fifo, key).map_err(format_err)?;
        Ok(Decrypting { stream, dec, ended })
    }

    fn header(&self) -> &Header {
        self.dec.header()
    }

    /// The next authenticated plaintext; `None` after the last chunk authenticated.
    async fn next_piece(&mut self) -> Result<Option<Vec<u8>>> {
        let frame = self.dec.header().chunk_size as usize + TAG_LEN + 1;
        let mut out = vec![0u8; PIECE];
        let mut n = 0;
        while n < out.len() {
            if !self.ended {
                self.ended = fill(&mut self.stream, self.dec.inner_mut(), frame).await?;
            }
            let k = self.dec.read(&mut out[n..]).map_err(format_err)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        out.truncate(n);
        Ok((n > 0).then_some(out))
    }
}

/// A decrypted download is the source of a re-encryption.
impl Chunks for Decrypting {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<u8>>>> {
        Box::pin(self.next_piece())
    }
}

/// Downloads into `fifo` until it holds `want` bytes; whether the object ended.
async fn fill(
    stream: &mut BoxStream<'static, StoreResult<Bytes>>,
    fifo: &mut Fifo,
    want: usize,
) -> Result<bool> {
    while fifo.len() < want {
        match stream.next().await {
            Some(b) => fifo.push(&b.map_err(storage_err)?),
            None => return Ok(true),
        }
    }
    Ok(false)
}

/// A decryption failure as the client's typed format error.
fn format_err(e: io::Error) -> ClientError {
    match crate::backup::format_error(&e) {
        Some(f) => ClientError::Format(f.clone()),
        None => ClientError::Io(e),
    }
}

#[cfg(all(test, feature = "native"))]
mod tests {
    use super::super::object::ObjectBlobs;
    use super::super::PutMode;
    use super::*;
    use std::sync::Arc;

    struct Pieces(Vec<Vec<u8>>);
    impl Chunks for Pieces {
        fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<u8>>>> {
            Box::pin(async move { Ok((!self.0.is_empty()).then(|| self.0.remove(0))) })
        }
    }
    struct Collect(Vec<u8>);
    impl Output for Collect {
        fn write(&mut self, piece: Vec<u8>) -> BoxFuture<'_, Result<()>> {
            self.0.extend_from_slice(&piece);
            Box::pin(async { Ok(()) })
        }
    }

    fn store() -> BackupStore {
        let memory = Arc::new(object_store::memory::InMemory::new());
        BackupStore::with_store(Arc::new(ObjectBlobs(memory)), "u")
    }

    #[test]
    fn a_streamed_backup_restores_whole_across_part_and_chunk_boundaries() {
        futures::executor::block_on(async {
            let s = store();
            let key = BackupKey::generate();
            // Sizes around the chunk (4 KiB here) and part boundaries, in odd pieces.
            for size in [0usize, 1, 4096, 4097, PART_SIZE + 12_345] {
                let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
                let pieces = data.chunks(77_777).map(<[u8]>::to_vec).collect();
                let l = s
                    .create_streamed(&key, &mut Pieces(pieces), 4096)
                    .await
                    .unwrap();
                assert_eq!(s.latest().await.unwrap().unwrap().object, l.object);
                let mut out = Collect(Vec::new());
                s.restore_streamed(&key, &mut out).await.unwrap();
                assert_eq!(out.0.len(), size);
                assert!(out.0 == data, "size {size}");
                // Only the newest backup is kept.
                assert_eq!(s.list().await.unwrap().len(), 1);
            }
        });
    }

    #[test]
    fn a_truncated_or_flipped_stream_is_refused() {
        futures::executor::block_on(async {
            let s = store();
            let key = BackupKey::generate();
            let data = vec![7u8; 10_000];
            let l = s
                .create_streamed(&key, &mut Pieces(vec![data]), 4096)
                .await
                .unwrap();
            let path = s.path(&format!("backups/{}", l.object));
            let download = s.store.get(&path).await.unwrap().stream;
            let stored: Vec<Bytes> = download.map(Result::unwrap).collect().await;
            let stored = stored.concat();
            for bad in [
                stored[..stored.len() - 1].to_vec(),
                stored[..stored.len() - 4096 - TAG_LEN].to_vec(),
                {
                    let mut b = stored.to_vec();
                    b[5000] ^= 1;
                    b
                },
            ] {
                let put = s.store.put(&path, bad.into(), PutMode::Overwrite);
                put.await.unwrap();
                let e = s
                    .restore_streamed(&key, &mut Collect(Vec::new()))
                    .await
                    .unwrap_err();
                assert!(matches!(e, ClientError::Format(_)), "{e:?}");
            }
        });
    }
}
