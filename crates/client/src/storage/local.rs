//! A local store's backup objects written whole and durably (split from `storage.rs`).

use super::pipe::Sink;
use super::PIPE_PIECE;
use crate::backup::Header;
use crate::error::{ClientError, Result};
use std::io;
use std::path::Path;

/// Writes a new backup object of a local store at `dest`: into a staging file next to it (named
/// like object_store's own staged uploads, `<name>#<digits>`, which listings skip), written
/// behind and fsynced, then renamed into place and the directory fsynced — so a backup that
/// `backup create` reported is on disk, and a crash leaves no partial object under its name.
pub(super) fn write_local<F>(dest: &Path, produce: F) -> Result<(Header, u64)>
where
    F: FnOnce(Sink) -> Result<(Header, Sink)>,
{
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dest
        .parent()
        .ok_or_else(|| ClientError::Storage("backup object path has no directory".into()))?;
    std::fs::create_dir_all(dir)?;
    let staging = dest.with_file_name(format!(
        "{}#{}",
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("backup"),
        std::process::id()
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)?;
    let written = (|| {
        let sink = Sink::File(io::BufWriter::with_capacity(
            PIPE_PIECE,
            crate::archive::WriteBehind::new(file)?,
        ));
        let (header, sink) = produce(sink)?;
        sink.finish()?;
        // Tests kill the process here: every byte written, the object not in place.
        crate::crash_point("upload-unfinished");
        std::fs::rename(&staging, dest)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok((header, std::fs::metadata(dest)?.len()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    written
}
