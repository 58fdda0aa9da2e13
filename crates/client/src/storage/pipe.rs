//! Moving bytes between the async object store and the blocking encryptor and decryptor in
//! pieces of at least [`PIPE_PIECE`], so a thread hand-off is rare next to the work per piece.

use super::{storage_err, PIPE_PIECE};
use crate::error::Result;
use bytes::Bytes;
use futures::StreamExt;
use std::io::{self, Read, Write};

/// Feeds a download to a blocking consumer in pieces of at least [`PIPE_PIECE`]: a store's
/// stream yields small chunks (8 KiB from a local directory), and a thread hand-off per chunk
/// cost more than decrypting it (a restore was mostly futex calls). Returns the download's
/// error; stops quietly when the consumer stops (it reports why).
pub(super) async fn pump(
    mut stream: futures::stream::BoxStream<'static, super::StoreResult<Bytes>>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) -> Result<()> {
    let mut piece = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let b = chunk.map_err(storage_err)?;
        let ready = if piece.is_empty() && b.len() >= PIPE_PIECE {
            b
        } else {
            piece.extend_from_slice(&b);
            if piece.len() < PIPE_PIECE {
                continue;
            }
            piece.split().freeze()
        };
        if tx.send(ready).await.is_err() {
            return Ok(());
        }
    }
    if !piece.is_empty() {
        let _ = tx.send(piece.freeze()).await;
    }
    Ok(())
}

/// Sync `Write` feeding the async uploader in bounded pieces.
pub(crate) struct ChannelWriter {
    pub(super) tx: tokio::sync::mpsc::Sender<Bytes>,
    pub(super) buf: Vec<u8>,
}

impl ChannelWriter {
    fn flush_piece(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_PIECE));
        self.tx
            .blocking_send(Bytes::from(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (PIPE_PIECE - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= PIPE_PIECE {
            self.flush_piece()?;
        }
        Ok(take)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a backup being written goes: the uploader's channel, or — for a local store — the
/// file itself, written behind and made durable at the end.
pub(crate) enum Sink {
    Channel(ChannelWriter),
    File(io::BufWriter<crate::archive::WriteBehind>),
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Channel(c) => c.write(data),
            Sink::File(f) => f.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Channel(c) => c.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

impl Sink {
    /// Hands over the last piece, or makes the file durable (`fsync`).
    pub(crate) fn finish(self) -> io::Result<()> {
        match self {
            Sink::Channel(mut c) => c.flush_piece(),
            Sink::File(f) => f.into_inner().map_err(|e| e.into_error())?.finish(),
        }
    }
}

/// Sync `Read` over the async download.
pub(super) struct ChannelReader {
    pub(super) rx: tokio::sync::mpsc::Receiver<Bytes>,
    pub(super) cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = self.cur.len().min(out.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}
