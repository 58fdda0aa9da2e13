use super::local::write_local;
use super::*;
use crate::backup::Header;
use std::io::Write;

fn header() -> Header {
    let mut h = Header::new(
        crate::backup::Compression::None,
        crate::backup::Content::File,
        1 << 20,
    );
    h.created_unix = 7;
    h
}

#[test]
fn a_local_object_appears_whole_with_private_mode_and_no_staging_left() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("users/u/backups/obj.bkv");
    let data = vec![7u8; 3 << 20];
    let body = data.clone();
    let (h, size) = write_local(&dest, move |mut sink| {
        sink.write_all(&body)?;
        Ok((header(), sink))
    })
    .unwrap();
    assert_eq!(h.created_unix, 7);
    assert_eq!(size, data.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("obj.bkv")]);
}

#[test]
fn a_failed_local_write_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("backups/obj.bkv");
    let r = write_local(&dest, |mut sink| {
        sink.write_all(b"half a backup")?;
        Err(ClientError::Storage("source vanished".into()))
    });
    assert!(r.is_err());
    assert_eq!(
        std::fs::read_dir(d.path().join("backups")).unwrap().count(),
        0
    );
}
