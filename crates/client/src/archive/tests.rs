use super::*;

fn noop() -> Box<dyn FnMut(u64) + Send> {
    Box::new(|_| {})
}

/// `src` backed up in the smallest chunks (many chunks from little data).
fn small_chunk_backup(src: &Path, k: &BackupKey, compress: bool) -> Vec<u8> {
    let opts = Options {
        compress,
        chunk_size: crate::backup::MIN_CHUNK_SIZE,
    };
    write_backup(src, k, opts, Vec::new(), noop()).unwrap().1
}

#[test]
fn directory_roundtrip_and_tamper_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    for i in 0..50 {
        fs::write(src.join(format!("a/b/f{i}")), format!("file {i}").repeat(i)).unwrap();
    }
    fs::write(src.join("top"), b"x").unwrap();
    let k = BackupKey::generate();
    for compress in [true, false] {
        let ct = small_chunk_backup(&src, &k, compress);
        let out = d.path().join(format!("out-{compress}"));
        read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
        for i in 0..50 {
            assert_eq!(
                fs::read(out.join(format!("a/b/f{i}"))).unwrap(),
                format!("file {i}").repeat(i).into_bytes()
            );
        }
        let mut bad = ct.clone();
        let n = bad.len();
        bad[n / 2] ^= 4;
        let out2 = d.path().join(format!("bad-{compress}"));
        assert!(read_backup(bad.as_slice(), &k, &out2, noop()).is_err());
        assert!(!out2.exists());
        assert!(fs::read_dir(d.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial")));
    }
}

#[test]
fn truncated_file_backup_leaves_no_output() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("f");
    fs::write(&src, vec![9u8; 100_000]).unwrap();
    let k = BackupKey::generate();
    let ct = small_chunk_backup(&src, &k, false);
    let out = d.path().join("out");
    let err = read_backup(&ct[..ct.len() - 5000], &k, &out, noop()).unwrap_err();
    assert!(matches!(err, ClientError::Format(_)), "{err}");
    assert!(!out.exists());
    read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
    assert_eq!(fs::read(&out).unwrap(), vec![9u8; 100_000]);
}

/// Several read-ahead pieces: the decrypting thread refills returned buffers, the end is
/// reported only past the last chunk, and tampering anywhere — in the first piece (the
/// writer stops early) or the last — fails the restore without output or a hung thread.
#[test]
fn read_ahead_over_several_pieces_and_tamper_at_either_end() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("f");
    let data: Vec<u8> = (0..3 * PIECE + 12_345)
        .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
        .collect();
    fs::write(&src, &data).unwrap();
    let k = BackupKey::generate();
    for compress in [false, true] {
        let ct = small_chunk_backup(&src, &k, compress);
        let out = d.path().join(format!("out-{compress}"));
        read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
        assert!(fs::read(&out).unwrap() == data);
        for at in [crate::backup::HEADER_LEN + 10, ct.len() - 10] {
            let mut bad = ct.clone();
            bad[at] ^= 1;
            let out2 = d.path().join(format!("bad-{compress}-{at}"));
            let err = read_backup(bad.as_slice(), &k, &out2, noop()).unwrap_err();
            assert!(matches!(err, ClientError::Format(_)), "{err}");
            assert!(!out2.exists());
        }
    }
}

#[test]
fn incompressible_files_are_stored_without_zstd() {
    use rand::RngCore;
    let d = tempfile::tempdir().unwrap();
    let k = BackupKey::generate();
    let mut random = vec![0u8; 4 * SAMPLE + 1000];
    rand::rngs::OsRng.fill_bytes(&mut random);
    let text: Vec<u8> = b"a backup of a chat history ".repeat(20_000);
    let small_random = random.get(..1000).unwrap().to_vec();
    for (name, data, zstd) in [
        ("random", random, false),
        ("text", text, true),
        ("small", small_random, true),
    ] {
        let src = d.path().join(name);
        fs::write(&src, &data).unwrap();
        assert_eq!(compressible(&src).unwrap(), zstd, "{name}");
        let (h, ct) = write_backup(&src, &k, Options::default(), Vec::new(), noop()).unwrap();
        let want = if zstd {
            Compression::Zstd
        } else {
            Compression::None
        };
        assert_eq!(h.compression, want, "{name}");
        let out = d.path().join(format!("{name}.out"));
        read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
        assert!(fs::read(&out).unwrap() == data, "{name}");
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn restored_modes_are_the_recorded_ones_and_single_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for (name, m) in [("open", 0o644), ("secret", 0o600), ("tool", 0o4755)] {
        fs::write(src.join(name), name).unwrap();
        fs::set_permissions(src.join(name), fs::Permissions::from_mode(m)).unwrap();
    }
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    let k = BackupKey::generate();
    let (_, ct) = write_backup(&src, &k, Options::default(), Vec::new(), noop()).unwrap();
    let out = d.path().join("tree");
    read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
    assert_eq!(mode(&out.join("open")), 0o644);
    assert_eq!(mode(&out.join("secret")), 0o600);
    // Set-id bits are never restored.
    assert_eq!(mode(&out.join("tool")), 0o755);
    assert_eq!(mode(&out.join("sub")), 0o750);

    fs::write(d.path().join("one"), b"x").unwrap();
    fs::set_permissions(d.path().join("one"), fs::Permissions::from_mode(0o644)).unwrap();
    let (_, ct) = write_backup(
        &d.path().join("one"),
        &k,
        Options::default(),
        Vec::new(),
        noop(),
    )
    .unwrap();
    let out = d.path().join("one-restored");
    read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
    assert_eq!(mode(&out), 0o600);
}

#[test]
fn staging_is_private_and_leftovers_go_on_the_next_run() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    // What a killed restore leaves: a private staging directory.
    let a = create_staging(&out).unwrap();
    let b = create_staging(&out).unwrap();
    assert_ne!(a, b, "names are unpredictable");
    assert_eq!(mode(&a), 0o700);
    fs::write(a.join("restored"), b"plaintext").unwrap();
    // Another path's staging is not touched.
    let other = create_staging(&d.path().join("outer")).unwrap();
    let src = d.path().join("f");
    fs::write(&src, b"data").unwrap();
    let k = BackupKey::generate();
    let (_, ct) = write_backup(&src, &k, Options::default(), Vec::new(), noop()).unwrap();
    read_backup(ct.as_slice(), &k, &out, noop()).unwrap();
    assert!(!a.exists() && !b.exists());
    assert!(other.exists());
    assert_eq!(fs::read(&out).unwrap(), b"data");
}
