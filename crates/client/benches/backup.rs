//! Backup encrypt/decrypt throughput versus the single-core AES-256-GCM limit
//! (ring sealing the same bytes in 1 MiB chunks with no framing).
//! Run: `cargo bench -p bkv-client --bench backup`

use bkv_client::BackupKey;
use bkv_client::{Compression, Content, DecryptReader, EncryptWriter, Header};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::io::{Read, Write};
use std::process::Command;

const SIZE: usize = 64 << 20;
const CHUNK: u32 = 1 << 20;

fn data() -> Vec<u8> {
    let mut x = 0x9e3779b97f4a7c15u64;
    (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let plain = data();
    let key = BackupKey::from_bytes([7; 32]);
    let mut g = c.benchmark_group("backup_64MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);

    g.bench_function("aead_limit_ring_aes256gcm", |b| {
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
        let mut buf = Vec::with_capacity(CHUNK as usize + 16);
        b.iter(|| {
            for (i, chunk) in plain.chunks(CHUNK as usize).enumerate() {
                buf.clear();
                buf.extend_from_slice(chunk);
                let mut n = [0u8; 12];
                n[..8].copy_from_slice(&(i as u64).to_be_bytes());
                k.seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut buf)
                    .unwrap();
            }
        })
    });

    g.bench_function("aead_all_cores_ring_aes256gcm", |b| {
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap());
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut bufs: Vec<Vec<u8>> = plain
            .chunks(CHUNK as usize)
            .map(|c| {
                let mut v = Vec::with_capacity(c.len() + 16);
                v.extend_from_slice(c);
                v
            })
            .collect();
        b.iter(|| {
            let per = bufs.len().div_ceil(threads);
            std::thread::scope(|s| {
                for (g, group) in bufs.chunks_mut(per).enumerate() {
                    let k = &k;
                    s.spawn(move || {
                        for (j, buf) in group.iter_mut().enumerate() {
                            buf.truncate(CHUNK as usize);
                            let mut n = [0u8; 12];
                            n[..8].copy_from_slice(&((g * per + j) as u64).to_be_bytes());
                            k.seal_in_place_append_tag(
                                Nonce::assume_unique_for_key(n),
                                Aad::empty(),
                                buf,
                            )
                            .unwrap();
                        }
                    });
                }
            });
        })
    });

    let header = Header::new(Compression::None, Content::File, CHUNK);
    g.bench_function("encrypt", |b| {
        let mut out = Vec::with_capacity(SIZE + SIZE / 1000 + 100);
        b.iter(|| {
            out.clear();
            let mut w = EncryptWriter::new(&mut out, &key, &header).unwrap();
            w.write_all(&plain).unwrap();
            w.finish().unwrap();
        })
    });

    let mut ct = Vec::new();
    {
        let mut w = EncryptWriter::new(&mut ct, &key, &header).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
    }
    g.bench_function("decrypt", |b| {
        let mut out = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut r = DecryptReader::new(ct.as_slice(), &key).unwrap();
            while r.read(&mut out).unwrap() > 0 {}
        })
    });
    // Peer: the `age` CLI (X25519 recipient, ChaCha20-Poly1305 STREAM), same
    // bytes, same machine, same run. Input and output live in /dev/shm where
    // available so disk speed does not enter.
    let shm = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::tempdir_in(shm).unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, &plain).unwrap();
    let keyfile = dir.path().join("key");
    let kg = Command::new("age-keygen")
        .arg("-o")
        .arg(&keyfile)
        .output()
        .expect("age-keygen not found: run scripts/bench.sh, which installs age");
    assert!(kg.status.success());
    let recipient = String::from_utf8_lossy(&kg.stderr)
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    let enc = dir.path().join("in.age");
    g.bench_function("age_encrypt", |b| {
        b.iter(|| {
            let s = Command::new("age")
                .args(["-r", &recipient, "-o"])
                .arg(&enc)
                .arg(&input)
                .status()
                .unwrap();
            assert!(s.success());
        })
    });
    let dec = dir.path().join("out");
    g.bench_function("age_decrypt", |b| {
        b.iter(|| {
            let s = Command::new("age")
                .args(["-d", "-i"])
                .arg(&keyfile)
                .arg("-o")
                .arg(&dec)
                .arg(&enc)
                .status()
                .unwrap();
            assert!(s.success());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
