// One file on purpose: the generator writes every vector of tests/vectors/ in one pass, in the
// order docs/formats.md describes the formats, so a reviewer reads one script top to bottom.
//! Writes `tests/vectors/`: `cargo run -p bkv-test-vectors --example generate`.
//!
//! Valid vectors are made with the bkv library from fixed inputs; rejected ones are valid ones
//! with one rule broken (and re-signed where the rule is behind the signature). Regenerating
//! replaces every file; do it only when a format changes, and say why in the commit.

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bkv_client::BackupKey;
use bkv_client::{Compression, Content, EncryptWriter, Header};
use bkv_client::{Manifest, PasskeyParams, RecoveryKey, SlotKind, SlotSecret};
use bkv_test_vectors::{backup_plaintext, spec, vectors_dir, Case, Index};
use bkv_transparency::bundle::{
    self, Bundle, BundleFleet, BundlePackage, EarlierBundle, FleetKey, KeyRole,
};
use bkv_transparency::merkle;
use bkv_transparency::note::{self, Checkpoint};
use bkv_wire::admin::{PlatformDescription, PlatformKind, PlatformStatement, SignedStatement};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;

/// Fixed inputs: `seq(a)` is the 32 bytes a, a+1, …, a+31.
fn seq(a: u8) -> [u8; 32] {
    std::array::from_fn(|i| a.wrapping_add(i as u8))
}

struct Writer {
    dir: std::path::PathBuf,
    index: Index,
}

impl Writer {
    fn new(format: &str, doc: &str, inputs: &[(&str, String)]) -> Result<Self> {
        let dir = vectors_dir().join(format);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Writer {
            dir,
            index: Index {
                format: format.to_owned(),
                doc: doc.to_owned(),
                inputs: inputs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                cases: Vec::new(),
            },
        })
    }

    /// Writes `bytes` as `file` (unless it was written before) and records the case.
    fn case(&mut self, file: &str, bytes: &[u8], c: CaseSpec<'_>) -> Result<()> {
        let path = self.dir.join(file);
        if !path.exists() {
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        self.index.cases.push(Case {
            file: file.to_owned(),
            comment: c.comment.to_owned(),
            valid: c.error.is_none(),
            error: c.error.map(str::to_owned),
            spec_valid: c.spec_valid.unwrap_or(c.error.is_none()),
            params: to_map(c.params),
            expect: to_map(c.expect),
        });
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.index)? + "\n";
        std::fs::write(self.dir.join("index.json"), json)?;
        Ok(())
    }
}

#[derive(Default)]
struct CaseSpec<'a> {
    comment: &'a str,
    error: Option<&'a str>,
    spec_valid: Option<bool>,
    params: Vec<(&'a str, String)>,
    expect: Vec<(&'a str, String)>,
}

fn ok<'a>(comment: &'a str, expect: Vec<(&'a str, String)>) -> CaseSpec<'a> {
    CaseSpec {
        comment,
        expect,
        ..Default::default()
    }
}

fn bad<'a>(comment: &'a str, error: &'a str) -> CaseSpec<'a> {
    CaseSpec {
        comment,
        error: Some(error),
        ..Default::default()
    }
}

/// A rejected case with its own inputs.
fn bad_with<'a>(comment: &'a str, error: &'a str, params: Vec<(&'a str, String)>) -> CaseSpec<'a> {
    CaseSpec {
        params,
        ..bad(comment, error)
    }
}

/// A valid case with its own inputs.
fn ok_with<'a>(
    comment: &'a str,
    expect: Vec<(&'a str, String)>,
    params: Vec<(&'a str, String)>,
) -> CaseSpec<'a> {
    CaseSpec {
        params,
        ..ok(comment, expect)
    }
}

fn to_map(v: Vec<(&str, String)>) -> BTreeMap<String, String> {
    v.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}

fn main() -> Result<()> {
    backup_file()?;
    let rk_text = recovery_key()?;
    protector_manifest(&rk_text)?;
    sealed_value()?;
    platform_statement()?;
    let log = Log::new()?;
    bundle(&log)?;
    checkpoint(&log)?;
    move_ticket()?;
    log_entry()?;
    snapshot()?;
    core_boundary()?;
    println!("wrote {}", vectors_dir().display());
    Ok(())
}

// ---------------------------------------------------------------- backup file

const CHUNK: u32 = 4096;

fn encrypt(key: &BackupKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    let header = Header {
        compression: Compression::None,
        content: Content::File,
        chunk_size: CHUNK,
        created_unix: 1_800_000_000,
        backup_id: [0xb1; 16],
        nonce_prefix: [0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76],
    };
    let mut w = EncryptWriter::new(Vec::new(), key, &header)?;
    w.write_all(plaintext)?;
    Ok(w.finish()?)
}

fn backup_file() -> Result<()> {
    let k = seq(0x00);
    let key = BackupKey::from_bytes(k);
    let mut w = Writer::new(
        "backup-file",
        "docs/formats.md#backup-file",
        &[
            ("key", hex::encode(k)),
            (
                "plaintext",
                "byte i of a plaintext of n bytes is (7 i + 3) mod 251".into(),
            ),
        ],
    )?;
    let plain = |n: usize| {
        vec![
            ("plaintext_len", n.to_string()),
            (
                "plaintext_sha256",
                hex::encode(Sha256::digest(backup_plaintext(n))),
            ),
        ]
    };
    let empty = encrypt(&key, &[])?;
    w.case(
        "empty.bkv",
        &empty,
        ok(
            "no plaintext: the header and one empty final chunk",
            plain(0),
        ),
    )?;
    let small = encrypt(&key, &backup_plaintext(100))?;
    w.case(
        "one-chunk.bkv",
        &small,
        ok("100 bytes in one final chunk", plain(100)),
    )?;
    let exact = encrypt(&key, &backup_plaintext(2 * CHUNK as usize))?;
    w.case(
        "two-full-chunks.bkv",
        &exact,
        ok(
            "a plaintext of exactly two chunks",
            plain(2 * CHUNK as usize),
        ),
    )?;
    let n3 = 2 * CHUNK as usize + 10;
    let three = encrypt(&key, &backup_plaintext(n3))?;
    w.case(
        "three-chunks.bkv",
        &three,
        ok("two full chunks and a final one of 10 bytes", plain(n3)),
    )?;

    let full = CHUNK as usize + 16;
    w.case(
        "three-chunks.bkv",
        &three,
        bad_with(
            "a valid backup opened with another key",
            "Auth(0)",
            vec![("key", hex::encode(seq(0x01)))],
        ),
    )?;
    w.case(
        "short-header.bkv",
        &three[..20],
        bad("20 bytes: shorter than the header", "Truncated"),
    )?;
    w.case(
        "header-only.bkv",
        &three[..44],
        bad("the header and no chunk", "Truncated"),
    )?;
    w.case(
        "truncated-last-byte.bkv",
        &three[..three.len() - 1],
        bad("the final chunk's last byte is missing", "Auth(2)"),
    )?;
    w.case(
        "truncated-at-chunk-boundary.bkv",
        &three[..44 + 2 * full],
        bad(
            "cut after the second chunk: that chunk is not marked final",
            "Auth(1)",
        ),
    )?;
    let mut swapped = three[..44].to_vec();
    swapped.extend_from_slice(&three[44 + full..44 + 2 * full]);
    swapped.extend_from_slice(&three[44..44 + full]);
    swapped.extend_from_slice(&three[44 + 2 * full..]);
    w.case(
        "chunks-swapped.bkv",
        &swapped,
        bad("chunks 0 and 1 swapped", "Auth(0)"),
    )?;
    let mut dup = three.clone();
    dup.extend_from_slice(&three[44 + 2 * full..]);
    w.case(
        "final-chunk-repeated.bkv",
        &dup,
        bad("the final chunk appended twice", "Auth(2)"),
    )?;
    let mut appended = small.clone();
    appended.extend_from_slice(&small[44..]);
    w.case(
        "chunk-after-final.bkv",
        &appended,
        bad("a second chunk after a final one", "Auth(0)"),
    )?;
    w.case(
        "created-time-changed.bkv",
        &flip(&three, 19),
        bad(
            "a header byte changed (created_unix): every chunk's AAD is the header",
            "Auth(0)",
        ),
    )?;
    w.case(
        "tag-flipped.bkv",
        &flip(&small, small.len() - 1),
        bad("a tag bit flipped", "Auth(0)"),
    )?;
    // One header byte each: (file, offset, value, why, the library's error).
    let header_cases: [(&str, usize, u8, &str, &str); 6] = [
        ("bad-magic.bkv", 0, b'X', "magic is not BKVB", "Magic"),
        (
            "version-2.bkv",
            4,
            2,
            "format version 2 does not exist",
            "Version(2)",
        ),
        (
            "aead-2.bkv",
            5,
            2,
            "AEAD 2 does not exist",
            "Field(\"aead\")",
        ),
        (
            "compression-2.bkv",
            6,
            2,
            "compression 2 does not exist",
            "Field(\"compression\")",
        ),
        (
            "content-2.bkv",
            7,
            2,
            "content 2 does not exist",
            "Field(\"content\")",
        ),
        (
            "reserved-1.bkv",
            43,
            1,
            "the reserved byte is not zero",
            "Field(\"reserved\")",
        ),
    ];
    for (file, at, value, why, error) in header_cases {
        let mut h = small.clone();
        h[at] = value;
        w.case(file, &h, bad(why, error))?;
    }
    let mut h = small.clone();
    h[8..12].copy_from_slice(&4095u32.to_be_bytes());
    w.case(
        "chunk-size-4095.bkv",
        &h,
        bad("chunk size below 4 KiB", "Field(\"chunk_size\")"),
    )?;
    let mut h = small.clone();
    h[8..12].copy_from_slice(&((16u32 << 20) + 1).to_be_bytes());
    w.case(
        "chunk-size-over-16m.bkv",
        &h,
        bad("chunk size above 16 MiB", "Field(\"chunk_size\")"),
    )?;
    w.finish()
}

// --------------------------------------------------------------- recovery key

fn recovery_key() -> Result<String> {
    let rk = seq(0xa0);
    let text = spec::recovery_key_encode(&rk);
    let mut w = Writer::new(
        "recovery-key",
        "docs/formats.md#recovery-key",
        &[
            ("key", hex::encode(rk)),
            ("slot_id", "rk-0001020304050607".into()),
        ],
    )?;
    let expect = || {
        vec![
            ("display", text.clone()),
            (
                "slot_public_key",
                hex::encode(spec::recovery_slot_public(&rk, "rk-0001020304050607")),
            ),
        ]
    };
    w.case(
        "canonical.txt",
        text.as_bytes(),
        ok("the display form", expect()),
    )?;
    let typed: String = text
        .to_lowercase()
        .replace('-', " ")
        .replace('0', "o")
        .replace('1', "l");
    w.case(
        "typed-loosely.txt",
        typed.as_bytes(),
        ok(
            "lower case, spaces for dashes, o for 0 and l for 1",
            expect(),
        ),
    )?;
    let mut zero = [0u8; 32];
    zero[31] = 1;
    w.case(
        "key-one.txt",
        spec::recovery_key_encode(&zero).as_bytes(),
        ok_with(
            "the key 00…01: leading zero digits",
            vec![
                ("display", spec::recovery_key_encode(&zero)),
                (
                    "slot_public_key",
                    hex::encode(spec::recovery_slot_public(&zero, "rk-0001020304050607")),
                ),
            ],
            vec![("key", hex::encode(zero))],
        ),
    )?;
    let chars: Vec<char> = text.chars().collect();
    let without_last_group: String =
        chars[..chars.len() - 7].iter().collect::<String>() + &text[text.len() - 2..];
    w.case(
        "one-group-short.txt",
        without_last_group.as_bytes(),
        bad("49 symbols", "Length(49)"),
    )?;
    let mut typo = chars.clone();
    typo[5] = if typo[5] == 'Z' { 'Y' } else { 'Z' };
    let typo: String = typo.into_iter().collect();
    w.case(
        "single-typo.txt",
        typo.as_bytes(),
        bad("one symbol mistyped", "Checksum"),
    )?;
    let mut swap = chars.clone();
    let i = (0..chars.len() - 3)
        .find(|&i| chars[i] != '-' && chars[i + 1] != '-' && chars[i] != chars[i + 1] && i > 0)
        .context("no adjacent pair")?;
    swap.swap(i, i + 1);
    let swap: String = swap.into_iter().collect();
    w.case(
        "adjacent-swap.txt",
        swap.as_bytes(),
        bad("two adjacent symbols swapped", "Checksum"),
    )?;
    let mut u = chars.clone();
    u[2] = 'U';
    let u: String = u.into_iter().collect();
    w.case(
        "check-symbol-in-data.txt",
        u.as_bytes(),
        bad(
            "U is a check symbol only, never a data digit",
            "Character('U', 3)",
        ),
    )?;
    let mut bang = chars.clone();
    bang[0] = '!';
    let bang: String = bang.into_iter().collect();
    w.case(
        "bad-character.txt",
        bang.as_bytes(),
        bad("! is not in the alphabet", "Character('!', 1)"),
    )?;
    // Padding bits: a leading digit of 2 or more sets one of the 4 zero bits; the check symbol is
    // recomputed, so only the padding rule rejects it.
    let mut digits: Vec<u8> = text
        .chars()
        .filter(|c| *c != '-')
        .take(52)
        .map(|c| {
            b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
                .iter()
                .position(|&a| a as char == c)
                .unwrap_or(0) as u8
        })
        .collect();
    digits[0] = 2;
    let rem = digits
        .iter()
        .fold(0u32, |a, &d| (a * 32 + u32::from(d)) % 37);
    let alphabet = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";
    let padded: String = digits
        .iter()
        .map(|&d| alphabet[d as usize] as char)
        .collect::<String>()
        + &(alphabet[rem as usize] as char).to_string();
    w.case(
        "padding-bits-set.txt",
        padded.as_bytes(),
        bad(
            "a correct check symbol, but one of the 4 leading zero bits is set",
            "Checksum",
        ),
    )?;
    w.finish()?;
    Ok(text)
}

// --------------------------------------------------------- protector manifest

fn protector_manifest(rk_text: &str) -> Result<()> {
    let k = seq(0x00);
    let key = BackupKey::from_bytes(k);
    let rk = RecoveryKey::parse(rk_text)?;
    let mut m = Manifest::new("alice", &key);
    let rk_slot = "rk-0001020304050607";
    m.add_slot(
        &key,
        SlotKind::RecoveryKey,
        rk_slot,
        &rk.slot_secret(rk_slot),
        None,
    )?;
    let pk_slot = "pk-08090a0b0c0d0e0f";
    m.add_slot(
        &key,
        SlotKind::Passkey,
        pk_slot,
        &SlotSecret::from_passkey(&seq(0x30), &seq(0x50), pk_slot),
        Some(PasskeyParams {
            rp_id: "https://localhost".into(),
            credential_id: vec![0xc0; 16],
            prf_salt: seq(0x70),
        }),
    )?;
    let sealed = m.seal(&key);
    let mut w = Writer::new(
        "protector-manifest",
        "docs/formats.md#protector-manifest-usersuprotectorskey_id-hexbin",
        &[
            ("key", hex::encode(k)),
            ("recovery_key", rk_text.to_owned()),
        ],
    )?;
    w.case(
        "two-slots.bin",
        &sealed,
        ok(
            "a recovery-key slot and a passkey slot for alice; the recovery key opens K",
            vec![
                ("user_id", "alice".into()),
                ("generation", "1".into()),
                ("slots", format!("{rk_slot},{pk_slot}")),
            ],
        ),
    )?;
    w.case(
        "two-slots.bin",
        &sealed,
        bad_with(
            "a valid manifest checked under another K",
            "Tampered",
            vec![("key", hex::encode(seq(0x01)))],
        ),
    )?;
    w.case(
        "mac-flipped.bin",
        &flip(&sealed, sealed.len() - 1),
        bad("the MAC changed", "Tampered"),
    )?;
    // encode(SignedManifest): 0x01, version, len 5, "alice", …
    w.case(
        "user-id-changed.bin",
        &flip(&sealed, 7),
        bad("alice became alicd", "Tampered"),
    )?;
    let mut v2 = sealed.clone();
    v2[1] = 2;
    w.case(
        "manifest-version-2.bin",
        &v2,
        bad("manifest version 2 does not exist", "Malformed"),
    )?;
    let mut c2 = sealed.clone();
    c2[0] = 2;
    w.case(
        "codec-version-2.bin",
        &c2,
        bad("codec version byte 2", "Malformed"),
    )?;
    let mut trailing = sealed.clone();
    trailing.push(0);
    w.case(
        "trailing-byte.bin",
        &trailing,
        bad("a byte after the MAC", "Malformed"),
    )?;
    w.case(
        "truncated.bin",
        &sealed[..sealed.len() - 1],
        bad("the MAC's last byte is missing", "Malformed"),
    )?;
    let mut big = sealed.clone();
    big.resize(64 * 1024 + 1, 0);
    w.case(
        "oversize.bin",
        &big,
        bad("over the 64 KiB limit", "Malformed"),
    )?;
    w.finish()
}

// --------------------------------------------------------------- sealed value

fn sealed_value() -> Result<()> {
    use bkv_hsm_core::seal::seal_xchacha;
    let key = seq(0x5e);
    let nonce: [u8; 24] = std::array::from_fn(|i| i as u8 + 1);
    let identity = seq(0x90);
    let mut w = Writer::new(
        "sealed-value",
        "docs/formats.md#sealed-values-node-disk",
        &[
            ("sealing_key", hex::encode(key)),
            ("slot", "node-identity".into()),
            ("label", String::new()),
        ],
    )?;
    let id = seal_xchacha(&key, nonce, "node-identity", b"", &identity);
    w.case(
        "node-identity.sealed",
        &id,
        ok(
            "the node's identity key, as vault.redb keeps it",
            vec![("plaintext", hex::encode(identity))],
        ),
    )?;
    let entry = b"\x01an encoded raft entry".to_vec();
    let label = 42u64.to_be_bytes();
    let raft = seal_xchacha(&key, nonce, "raft-entry", &label, &entry);
    w.case(
        "raft-entry-42.sealed",
        &raft,
        ok_with(
            "a raft log entry at index 42",
            vec![("plaintext", hex::encode(&entry))],
            vec![("slot", "raft-entry".into()), ("label", hex::encode(label))],
        ),
    )?;
    w.case(
        "raft-entry-42.sealed",
        &raft,
        bad_with(
            "the index-42 entry moved to index 43 by the host",
            "Auth",
            vec![
                ("slot", "raft-entry".into()),
                ("label", hex::encode(43u64.to_be_bytes())),
            ],
        ),
    )?;
    w.case(
        "node-identity.sealed",
        &id,
        bad_with(
            "the identity key offered as the fleet secrets",
            "Auth",
            vec![("slot", "fleet-secrets".into())],
        ),
    )?;
    w.case(
        "node-identity.sealed",
        &id,
        bad_with(
            "another node's sealing key",
            "Auth",
            vec![("sealing_key", hex::encode(seq(0x5f)))],
        ),
    )?;
    w.case(
        "tag-flipped.sealed",
        &flip(&id, id.len() - 1),
        bad("a tag bit flipped", "Auth"),
    )?;
    w.case(
        "nonce-flipped.sealed",
        &flip(&id, 1),
        bad("a nonce bit flipped", "Auth"),
    )?;
    let mut v2 = id.clone();
    v2[0] = 2;
    w.case(
        "version-2.sealed",
        &v2,
        bad(
            "version 2 is the PKCS#11 format: a software key never opens it",
            "Malformed",
        ),
    )?;
    w.case(
        "truncated.sealed",
        &id[..1 + 24 + 15],
        bad("shorter than version, nonce and tag", "Malformed"),
    )?;
    w.case("empty.sealed", &[], bad("no bytes", "Malformed"))?;
    w.finish()
}

// --------------------------------------------------------- platform statement

fn platform_statement() -> Result<()> {
    let platform_key = SigningKey::from_bytes(&seq(0x11));
    let statement = |version: u8, kind: PlatformKind, token: &str| PlatformStatement {
        version,
        identity_key: seq(0x22),
        signing_key: platform_key.verifying_key().to_bytes(),
        platform: PlatformDescription {
            kind,
            token: token.to_owned(),
        },
        binary_sha256: Sha256::digest(b"bkv-hsm test vector").into(),
    };
    let sign = |bytes: Vec<u8>, key: &SigningKey| {
        bkv_wire::encode(&SignedStatement {
            signature: key
                .sign(&bkv_transparency::membership::statement_message(&bytes))
                .to_bytes()
                .to_vec(),
            statement: bytes,
        })
    };
    let mut w = Writer::new(
        "platform-statement",
        "docs/formats.md#platform-statement",
        &[],
    )?;
    let expect = |kind: &str, token: &str| {
        vec![
            ("identity_key", hex::encode(seq(0x22))),
            (
                "signing_key",
                hex::encode(platform_key.verifying_key().to_bytes()),
            ),
            ("kind", kind.to_owned()),
            ("token", token.to_owned()),
            (
                "binary_sha256",
                hex::encode(Sha256::digest(b"bkv-hsm test vector")),
            ),
        ]
    };
    let sw_token = "software keys in /var/lib/bkv-hsm/platform (INSECURE)";
    let software = sign(
        bkv_wire::encode(&statement(1, PlatformKind::Software, sw_token)),
        &platform_key,
    );
    w.case(
        "software.stmt",
        &software,
        ok(
            "a software platform's statement",
            expect("Software", sw_token),
        ),
    )?;
    let hsm_token = "SoftHSM project / SoftHSM v2 / 8d3b2f0a1c4e5d6f / bkv-node-0";
    let pkcs11 = sign(
        bkv_wire::encode(&statement(1, PlatformKind::Pkcs11, hsm_token)),
        &platform_key,
    );
    w.case(
        "pkcs11.stmt",
        &pkcs11,
        ok("a PKCS#11 token's statement", expect("Pkcs11", hsm_token)),
    )?;
    w.case(
        "signature-flipped.stmt",
        &flip(&software, software.len() - 1),
        bad("a signature bit flipped", "StatementSignature"),
    )?;
    let other = SigningKey::from_bytes(&seq(0x12));
    let by_other = sign(
        bkv_wire::encode(&statement(1, PlatformKind::Software, sw_token)),
        &other,
    );
    w.case(
        "signed-by-another-key.stmt",
        &by_other,
        bad(
            "names one platform key, signed by another",
            "StatementSignature",
        ),
    )?;
    let v2 = sign(
        bkv_wire::encode(&statement(2, PlatformKind::Software, sw_token)),
        &platform_key,
    );
    w.case(
        "version-2.stmt",
        &v2,
        bad(
            "statement version 2, correctly signed",
            "StatementMalformed",
        ),
    )?;
    let long = "x".repeat(257);
    let long = sign(
        bkv_wire::encode(&statement(1, PlatformKind::Software, &long)),
        &platform_key,
    );
    w.case(
        "token-257-bytes.stmt",
        &long,
        bad(
            "a token description over 256 bytes, correctly signed",
            "StatementMalformed",
        ),
    )?;
    // encode(PlatformStatement): 0x01, version, identity[32], signing[32], kind …
    let mut kind3 = bkv_wire::encode(&statement(1, PlatformKind::Software, sw_token));
    kind3[66] = 3;
    let kind3 = sign(kind3, &platform_key);
    w.case(
        "kind-3.stmt",
        &kind3,
        bad(
            "platform kind 3 does not exist, correctly signed",
            "StatementMalformed",
        ),
    )?;
    let mut trailing = software.clone();
    trailing.push(0);
    w.case(
        "trailing-byte.stmt",
        &trailing,
        bad("a byte after the signed statement", "Trailing"),
    )?;
    w.finish()
}

// ---------------------------------------------------------- bundle, checkpoint

const NS: &str = "vectors";
const AUDITOR: &str = "bkv-vectors-auditor";
const NOW: u64 = 1_850_000_000;

struct Log {
    auditor: SigningKey,
    operator: SigningKey,
    leaves: Vec<[u8; 32]>,
    bundles: Vec<(Vec<u8>, [u8; 64], [u8; 64])>,
}

fn fleet_keys(a: u8) -> Vec<FleetKey> {
    vec![
        FleetKey {
            role: KeyRole::NoiseStatic,
            key: seq(a),
        },
        FleetKey {
            role: KeyRole::NodeIdentity,
            key: seq(a + 1),
        },
    ]
}

impl Log {
    /// A log of three bundles (epochs 1–3); epoch 3 moves to fleet-2, keeping fleet-1 as a
    /// previous fleet.
    fn new() -> Result<Self> {
        let auditor = SigningKey::from_bytes(&seq(0x33));
        let operator = SigningKey::from_bytes(&seq(0x44));
        let mut log = Log {
            auditor,
            operator,
            leaves: Vec::new(),
            bundles: Vec::new(),
        };
        for epoch in 1..=3u64 {
            let mut b = Bundle {
                version: 2,
                namespace: NS.into(),
                epoch,
                fleet_id: "fleet-1".into(),
                keys: fleet_keys(0x60),
                not_before: 1_800_000_000,
                not_after: 1_900_000_000,
                evidence_digest: Sha256::digest(b"evidence of fleet-1").into(),
                previous: Vec::new(),
            };
            if epoch == 3 {
                b.previous = vec![BundleFleet {
                    fleet_id: b.fleet_id.clone(),
                    keys: b.keys.clone(),
                    evidence_digest: b.evidence_digest,
                }];
                b.fleet_id = "fleet-2".into();
                b.keys = fleet_keys(0x80);
                b.evidence_digest = Sha256::digest(b"evidence of fleet-2").into();
            }
            log.append(&b);
        }
        Ok(log)
    }

    fn append(&mut self, b: &Bundle) {
        let bytes = b.encode();
        let a = bundle::sign_auditor(&self.auditor, &bytes, b);
        let o = bundle::sign_operator(&self.operator, &a);
        let d = bundle::digest(&bytes);
        self.leaves
            .push(merkle::leaf_hash(&bundle::leaf_data(b.epoch, &d)));
        self.bundles.push((bytes, a, o));
    }

    fn checkpoint(&self, size: usize) -> Checkpoint {
        Checkpoint {
            origin: format!("{AUDITOR}/{NS}"),
            size: size as u64,
            root: merkle::root(&self.leaves[..size]),
        }
    }

    fn note(&self, size: usize) -> Result<String> {
        Ok(self.checkpoint(size).sign(AUDITOR, &self.auditor)?)
    }

    fn package(&self, index: usize, known: usize) -> Result<BundlePackage> {
        let (bytes, a, o) = &self.bundles[index];
        Ok(BundlePackage {
            bundle: bytes.clone(),
            auditor_signature: a.to_vec(),
            operator_signature: o.to_vec(),
            leaf_index: index as u64,
            checkpoint: self.note(self.leaves.len())?,
            inclusion_proof: merkle::inclusion_proof(index, &self.leaves),
            consistency_from: known as u64,
            consistency_proof: if known == 0 {
                Vec::new()
            } else {
                merkle::consistency_proof(known, &self.leaves)
            },
            previous_proofs: self.previous_proofs(index),
        })
    }

    /// For each previous fleet of bundle `index`, the newest earlier bundle that names it as the
    /// preferred fleet, with its inclusion proof in the whole log.
    fn previous_proofs(&self, index: usize) -> Vec<EarlierBundle> {
        let Ok(b) = Bundle::decode(&self.bundles[index].0) else {
            return Vec::new();
        };
        b.previous
            .iter()
            .filter_map(|p| {
                (0..index).rev().find_map(|i| {
                    let (bytes, a, o) = &self.bundles[i];
                    let e = Bundle::decode(bytes).ok()?;
                    (e.fleet_id == p.fleet_id && e.noise_key() == p.noise_key()).then(|| {
                        EarlierBundle {
                            bundle: bytes.clone(),
                            auditor_signature: a.to_vec(),
                            operator_signature: o.to_vec(),
                            leaf_index: i as u64,
                            inclusion_proof: merkle::inclusion_proof(i, &self.leaves),
                        }
                    })
                })
            })
            .collect()
    }
}

fn json(p: &BundlePackage) -> Result<Vec<u8>> {
    Ok((serde_json::to_string_pretty(p)? + "\n").into_bytes())
}

fn bundle(log: &Log) -> Result<()> {
    let mut w = Writer::new(
        "bundle",
        "docs/formats.md#validation-bundle-version-2 and docs/auditor-api.md",
        &[
            ("namespace", NS.into()),
            ("origin", format!("{AUDITOR}/{NS}")),
            ("auditor_name", AUDITOR.into()),
            (
                "auditor_key",
                hex::encode(log.auditor.verifying_key().to_bytes()),
            ),
            (
                "operator_key",
                hex::encode(log.operator.verifying_key().to_bytes()),
            ),
            ("now", NOW.to_string()),
            ("seen_size", "0".into()),
            ("seen_root", hex::encode([0u8; 32])),
            ("seen_epoch", "0".into()),
            ("seen_fleets", String::new()),
        ],
    )?;
    let expect = || {
        vec![
            ("epoch", "3".into()),
            ("fleet_id", "fleet-2".into()),
            ("noise_key", hex::encode(seq(0x80))),
            ("previous_fleets", "fleet-1".into()),
        ]
    };
    let fresh = json(&log.package(2, 0)?)?;
    w.case(
        "epoch-3.json",
        &fresh,
        ok(
            "epoch 3 as a new client gets it (no earlier checkpoint)",
            expect(),
        ),
    )?;
    let root2 = hex::encode(merkle::root(&log.leaves[..2]));
    let from2 = json(&log.package(2, 2)?)?;
    w.case(
        "epoch-3-from-size-2.json",
        &from2,
        ok_with(
            "epoch 3 for a client that saw the log at size 2 and epoch 2",
            expect(),
            vec![
                ("seen_size", "2".into()),
                ("seen_root", root2.clone()),
                ("seen_epoch", "2".into()),
            ],
        ),
    )?;
    let stateful = |comment, error, params: Vec<(&'static str, String)>| CaseSpec {
        spec_valid: Some(true),
        params,
        ..bad(comment, error)
    };
    w.case(
        "epoch-3-from-size-2.json",
        &from2,
        stateful(
            "the client saw a different tree of size 2: a forked log",
            "InconsistentLog",
            vec![
                ("seen_size", "2".into()),
                ("seen_root", hex::encode(seq(0xee))),
            ],
        ),
    )?;
    w.case(
        "epoch-3.json",
        &fresh,
        stateful(
            "the client saw the log at size 5: a rolled-back log",
            "LogRolledBack",
            vec![
                ("seen_size", "5".into()),
                ("seen_root", hex::encode(seq(0xee))),
            ],
        ),
    )?;
    w.case(
        "epoch-3.json",
        &fresh,
        stateful(
            "the client accepted epoch 4 before",
            "EpochRollback",
            vec![("seen_epoch", "4".into())],
        ),
    )?;
    w.case(
        "epoch-3.json",
        &fresh,
        bad_with(
            "checked at not_after (the window excludes it)",
            "Expired",
            vec![("now", "1900000000".into())],
        ),
    )?;
    w.case(
        "epoch-3.json",
        &fresh,
        bad_with(
            "checked before not_before",
            "NotYetValid",
            vec![("now", "1799999999".into())],
        ),
    )?;
    w.case(
        "epoch-3.json",
        &fresh,
        bad_with(
            "a client of another namespace",
            "Namespace",
            vec![("namespace", "other".into())],
        ),
    )?;
    w.case(
        "epoch-3.json",
        &fresh,
        bad_with(
            "a client pinning another operator",
            "OperatorSignature",
            vec![(
                "operator_key",
                hex::encode(
                    SigningKey::from_bytes(&seq(0x45))
                        .verifying_key()
                        .to_bytes(),
                ),
            )],
        ),
    )?;
    let pkg = log.package(2, 0)?;
    let mut p = pkg.clone();
    p.auditor_signature[0] ^= 1;
    w.case(
        "auditor-signature-flipped.json",
        &json(&p)?,
        bad("an auditor signature bit flipped", "AuditorSignature"),
    )?;
    let mut p = pkg.clone();
    p.operator_signature[0] ^= 1;
    w.case(
        "operator-signature-flipped.json",
        &json(&p)?,
        bad(
            "an operator counter-signature bit flipped",
            "OperatorSignature",
        ),
    )?;
    let mut p = pkg.clone();
    let at = p.bundle.len() - 40; // inside not_after/evidence: still decodes
    p.bundle[at] ^= 1;
    w.case(
        "bundle-byte-flipped.json",
        &json(&p)?,
        bad("a bundle byte changed after signing", "AuditorSignature"),
    )?;
    let mut p = pkg.clone();
    p.leaf_index = 1;
    w.case(
        "wrong-leaf-index.json",
        &json(&p)?,
        bad("the proof names another leaf", "NotInLog"),
    )?;
    let mut p = pkg.clone();
    p.inclusion_proof.pop();
    w.case(
        "short-proof.json",
        &json(&p)?,
        bad("an inclusion proof missing a hash", "NotInLog"),
    )?;
    let mut p = pkg.clone();
    let impostor = SigningKey::from_bytes(&seq(0x34));
    p.checkpoint = log.checkpoint(3).sign(AUDITOR, &impostor)?;
    w.case(
        "checkpoint-by-another-key.json",
        &json(&p)?,
        bad(
            "a checkpoint signed by a key the client does not pin",
            "Checkpoint",
        ),
    )?;
    let mut p = pkg.clone();
    let mut cp = log.checkpoint(3);
    cp.origin = format!("{AUDITOR}/other");
    p.checkpoint = cp.sign(AUDITOR, &log.auditor)?;
    w.case(
        "checkpoint-of-another-log.json",
        &json(&p)?,
        bad(
            "the auditor's checkpoint of another namespace's log",
            "Origin",
        ),
    )?;
    // Bundle bytes that break a decoding rule; the signatures are over them, so only the rule
    // rejects them.
    let bad_bundle = |b: &Bundle| -> Result<Vec<u8>> {
        let bytes = bkv_wire::encode(b);
        let a = bundle::sign_auditor(&log.auditor, &bytes, b);
        let mut p = pkg.clone();
        p.operator_signature = bundle::sign_operator(&log.operator, &a).to_vec();
        p.auditor_signature = a.to_vec();
        p.bundle = bytes;
        json(&p)
    };
    let base = Bundle::decode(&pkg.bundle)?;
    let mut b = base.clone();
    b.version = 1;
    w.case(
        "bundle-version-1.json",
        &bad_bundle(&b)?,
        bad("bundle version 1 is no longer accepted", "Malformed"),
    )?;
    let mut b = base.clone();
    b.previous[0].fleet_id = b.fleet_id.clone();
    w.case(
        "previous-repeats-preferred.json",
        &bad_bundle(&b)?,
        bad(
            "a previous fleet with the preferred fleet's id",
            "Malformed",
        ),
    )?;
    let mut b = base.clone();
    b.previous = (0..5)
        .map(|i| BundleFleet {
            fleet_id: format!("old-{i}"),
            keys: fleet_keys(0x10),
            evidence_digest: [0; 32],
        })
        .collect();
    w.case(
        "five-previous-fleets.json",
        &bad_bundle(&b)?,
        bad("more than 4 previous fleets", "Malformed"),
    )?;
    // A previous fleet is one clients used before (issue 27): the log must prove it was the
    // preferred fleet of an earlier epoch, unless the client accepted such an epoch itself.
    let mut p = pkg.clone();
    p.previous_proofs.clear();
    let unproven = json(&p)?;
    w.case(
        "previous-fleet-unproven.json",
        &unproven,
        bad(
            "a previous fleet without the logged bundle in which it was preferred",
            "UnprovenPreviousFleet",
        ),
    )?;
    w.case(
        "previous-fleet-unproven.json",
        &unproven,
        CaseSpec {
            spec_valid: Some(false),
            params: vec![("seen_fleets", format!("fleet-1={}", hex::encode(seq(0x60))))],
            ..ok(
                "the same for a client that accepted an epoch with fleet-1 preferred",
                expect(),
            )
        },
    )?;
    let mut p = pkg.clone();
    if let Some(e) = p.previous_proofs.first_mut() {
        e.leaf_index = 0;
    }
    w.case(
        "previous-proof-not-in-log.json",
        &json(&p)?,
        bad(
            "the earlier bundle's inclusion proof names another leaf",
            "UnprovenPreviousFleet",
        ),
    )?;
    let mut p = pkg.clone();
    let mut forged = Bundle::decode(&log.bundles[0].0)?;
    forged.epoch = 3;
    if let Some(e) = p.previous_proofs.first_mut() {
        e.bundle = forged.encode();
    }
    w.case(
        "previous-proof-altered.json",
        &json(&p)?,
        bad(
            "an earlier bundle altered after signing (its epoch)",
            "UnprovenPreviousFleet",
        ),
    )?;
    w.finish()
}

fn checkpoint(log: &Log) -> Result<()> {
    let mut w = Writer::new(
        "checkpoint",
        "docs/auditor-api.md#checkpoints-c2sp-tlog-checkpoint-in-a-c2sp-signed-note",
        &[
            ("name", AUDITOR.into()),
            ("key", hex::encode(log.auditor.verifying_key().to_bytes())),
        ],
    )?;
    let expect = |size: usize| {
        vec![
            ("origin", format!("{AUDITOR}/{NS}")),
            ("size", size.to_string()),
            ("root", hex::encode(merkle::root(&log.leaves[..size]))),
        ]
    };
    let n3 = log.note(3)?;
    w.case(
        "size-3.note",
        n3.as_bytes(),
        ok("the log of the bundle vectors at size 3", expect(3)),
    )?;
    w.case(
        "size-0.note",
        log.note(0)?.as_bytes(),
        ok("the empty log: root SHA-256 of nothing", expect(0)),
    )?;
    // A witness cosigns by appending its own line; verifiers that do not know it ignore it.
    let witness = SigningKey::from_bytes(&seq(0x55));
    let text = log.checkpoint(3).text();
    let wnote = note::sign(&text, "witness.example", &witness)?;
    let wline = wnote
        .rsplit_once("\n\n")
        .map(|(_, l)| l)
        .context("witness line")?;
    let cosigned = format!("{n3}{wline}");
    w.case(
        "size-3-cosigned.note",
        cosigned.as_bytes(),
        ok(
            "a witness's cosignature line after the auditor's",
            expect(3),
        ),
    )?;
    let witness_first = format!(
        "{text}\n{wline}{}",
        n3.rsplit_once("\n\n").map(|(_, l)| l).context("line")?
    );
    w.case(
        "size-3-witness-first.note",
        witness_first.as_bytes(),
        ok("the witness's line before the auditor's", expect(3)),
    )?;
    w.case(
        "size-3-witness-only.note",
        wnote.as_bytes(),
        bad("signed by a witness only", "Unsigned"),
    )?;
    let sig_at = n3.len() - 3; // inside the base64 signature
    let mut flipped = n3.clone().into_bytes();
    flipped[sig_at] = if flipped[sig_at] == b'A' { b'B' } else { b'A' };
    w.case(
        "signature-changed.note",
        &flipped,
        bad("a signature character changed", "Unsigned"),
    )?;
    let changed = n3.replacen("\n3\n", "\n4\n", 1);
    w.case(
        "size-changed.note",
        changed.as_bytes(),
        bad("the size changed after signing", "Unsigned"),
    )?;
    let impostor = SigningKey::from_bytes(&seq(0x34));
    w.case(
        "by-another-key.note",
        log.checkpoint(3).sign(AUDITOR, &impostor)?.as_bytes(),
        bad("the auditor's name, another key", "Unsigned"),
    )?;
    w.case(
        "no-signature-block.note",
        text.as_bytes(),
        bad("checkpoint text without signatures", "Malformed"),
    )?;
    let emdash = n3.replace('\u{2014}', "-");
    w.case(
        "hyphen-not-em-dash.note",
        emdash.as_bytes(),
        bad("a signature line must start with an em dash", "Malformed"),
    )?;
    let unterminated = &n3[..n3.len() - 1];
    w.case(
        "no-final-newline.note",
        unterminated.as_bytes(),
        bad("the signature block must end in a newline", "Malformed"),
    )?;
    let padded_size = format!(
        "{AUDITOR}/{NS}\n03\n{}\n",
        B64.encode(merkle::root(&log.leaves))
    );
    w.case(
        "size-leading-zero.note",
        note::sign(&padded_size, AUDITOR, &log.auditor)?.as_bytes(),
        bad(
            "size 03: a size has one decimal form",
            "Checkpoint(\"size\")",
        ),
    )?;
    let short_root = format!("{AUDITOR}/{NS}\n3\n{}\n", B64.encode([7u8; 31]));
    w.case(
        "root-31-bytes.note",
        note::sign(&short_root, AUDITOR, &log.auditor)?.as_bytes(),
        bad("a root hash of 31 bytes", "Checkpoint(\"root hash\")"),
    )?;
    let big = format!("{}{}", n3, "x".repeat(16 * 1024));
    w.case(
        "oversize.note",
        big.as_bytes(),
        bad("over 16 KiB", "TooLarge"),
    )?;
    w.finish()
}

// ---------------------------------------------------------------- move ticket

/// The registration a ticket names: the `RegisterFinishMove` fields (test values).
fn moved_registration() -> (Vec<u8>, Vec<u8>, u32, [u8; 32]) {
    (vec![0x5a; 192], vec![0x6b; 73], 10, seq(0x7c))
}

fn move_ticket() -> Result<()> {
    use bkv_wire::vault::{MoveStep, MoveTicket, SignedMoveTicket, MOVE_TICKET_CONTEXT};
    let old_fleet = SigningKey::from_bytes(&seq(0x90));
    let (upload, wrapped, limit, confirm) = moved_registration();
    let digest = bkv_wire::vault::pending_digest(&upload, &wrapped, limit, &confirm);
    let record_id = bkv_wire::record_id("mover@example.org");
    let ticket = |version: u8, step: MoveStep, to_fleet: &str| MoveTicket {
        version,
        step,
        from_fleet: "fleet-old".into(),
        to_fleet: to_fleet.into(),
        record_id,
        pending_digest: digest,
        attempts: 3,
    };
    let sign = |t: &MoveTicket, key: &SigningKey| {
        let ticket = bkv_wire::encode(t);
        let mut m = MOVE_TICKET_CONTEXT.to_vec();
        m.extend_from_slice(&ticket);
        bkv_wire::encode(&SignedMoveTicket {
            signature: key.sign(&m).to_bytes().to_vec(),
            ticket,
        })
    };
    let mut w = Writer::new(
        "move-ticket",
        "docs/formats.md#moving-a-record-fleet-rotation",
        &[
            (
                "move_key",
                hex::encode(old_fleet.verifying_key().to_bytes()),
            ),
            ("from_fleet", "fleet-old".into()),
            ("fleet_id", "fleet-new".into()),
            ("record_id", hex::encode(record_id)),
            ("step", "Moved".into()),
            ("upload", hex::encode(&upload)),
            ("wrapped_key", hex::encode(&wrapped)),
            ("guess_limit", limit.to_string()),
            ("confirm_hash", hex::encode(confirm)),
        ],
    )?;
    let expect = |step: &str| {
        vec![
            ("step", step.to_owned()),
            ("pending_digest", hex::encode(digest)),
            ("attempts", "3".to_owned()),
        ]
    };
    let moved = sign(&ticket(1, MoveStep::Moved, "fleet-new"), &old_fleet);
    w.case(
        "moved.ticket",
        &moved,
        ok(
            "the old fleet's move ticket, naming the registration",
            expect("Moved"),
        ),
    )?;
    let intent = sign(&ticket(1, MoveStep::Intent, "fleet-new"), &old_fleet);
    w.case(
        "intent.ticket",
        &intent,
        ok_with(
            "an intent ticket, where the new fleet stores the registration",
            expect("Intent"),
            vec![("step", "Intent".into())],
        ),
    )?;
    w.case(
        "intent.ticket",
        &intent,
        bad("an intent where a move ticket is needed", "WrongStep"),
    )?;
    w.case(
        "signature-flipped.ticket",
        &flip(&moved, moved.len() - 1),
        bad("a signature bit flipped", "BadSignature"),
    )?;
    w.case(
        "by-another-key.ticket",
        &sign(
            &ticket(1, MoveStep::Moved, "fleet-new"),
            &SigningKey::from_bytes(&seq(0x91)),
        ),
        bad(
            "signed by a key the new fleet did not pin for the old fleet",
            "BadSignature",
        ),
    )?;
    w.case(
        "to-another-fleet.ticket",
        &sign(&ticket(1, MoveStep::Moved, "fleet-other"), &old_fleet),
        bad("a ticket moving the record to another fleet", "OtherFleet"),
    )?;
    w.case(
        "moved.ticket",
        &moved,
        bad_with(
            "presented for another record",
            "OtherRecord",
            vec![(
                "record_id",
                hex::encode(bkv_wire::record_id("someone-else")),
            )],
        ),
    )?;
    w.case(
        "moved.ticket",
        &moved,
        bad_with(
            "at a fleet that pinned no such predecessor",
            "UnknownPredecessor",
            vec![("from_fleet", "fleet-unknown".into())],
        ),
    )?;
    w.case(
        "version-2.ticket",
        &sign(&ticket(2, MoveStep::Moved, "fleet-new"), &old_fleet),
        bad("ticket version 2 is not defined", "Version"),
    )?;
    let mut trailing = moved.clone();
    trailing.push(0);
    w.case(
        "trailing-byte.ticket",
        &trailing,
        bad("a byte after the signed ticket", "Trailing"),
    )?;
    w.finish()
}

// ---------------------------------------------------------------- log entry

/// A deterministic "random" source for the vectors' nonces.
struct Counter(u8);

impl rand_core::RngCore for Counter {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            self.0 = self.0.wrapping_add(1);
            *d = self.0;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Counter {}

fn log_entry() -> Result<()> {
    use bkv_hsm_core::state::Mutation;
    use bkv_hsm_core::{EntryKey, LogEntry};
    let (k, fleet, proposer) = (seq(0xa0), "fleet-vectors", seq(0xc0));
    let key = EntryKey::from_bytes(k, fleet);
    let record_id = bkv_wire::record_id("guesser@example.org");
    let mut rng = Counter(0);
    let count = key.seal(
        proposer,
        1_800_000_000 << 20,
        &mut rng,
        &Mutation::CountGuess {
            record_id,
            generation: 7,
        },
    );
    let reset = key.seal(
        proposer,
        (1_800_000_000 << 20) + 1,
        &mut rng,
        &Mutation::ResetGuesses {
            record_id,
            generation: 7,
        },
    );
    let enc = |e: &LogEntry| bkv_wire::encode(e);
    let mut w = Writer::new(
        "log-entry",
        "docs/formats.md#log-entries",
        &[
            ("entry_key", hex::encode(k)),
            ("fleet_id", fleet.into()),
            ("proposer", hex::encode(proposer)),
        ],
    )?;
    let expect = |e: &LogEntry, kind: &str| {
        vec![
            ("seq", e.seq.to_string()),
            ("mutation", kind.to_owned()),
            ("record_id", hex::encode(record_id)),
            ("generation", "7".to_owned()),
        ]
    };
    w.case(
        "count-guess.entry",
        &enc(&count),
        ok(
            "a core's entry counting a guess",
            expect(&count, "CountGuess"),
        ),
    )?;
    w.case(
        "reset-guesses.entry",
        &enc(&reset),
        ok(
            "the same core's next entry, resetting the count",
            expect(&reset, "ResetGuesses"),
        ),
    )?;
    let last = enc(&count).len() - 1;
    w.case(
        "tag-flipped.entry",
        &flip(&enc(&count), last),
        bad("a bit of the authentication tag flipped", "Forged"),
    )?;
    w.case(
        "count-guess.entry",
        &enc(&count),
        bad_with(
            "opened as another fleet's entry",
            "Forged",
            vec![("fleet_id", "fleet-other".into())],
        ),
    )?;
    let mut renumbered = count.clone();
    renumbered.seq += 1;
    w.case(
        "renumbered.entry",
        &enc(&renumbered),
        bad("its sequence number changed by the host", "Forged"),
    )?;
    let mut reassigned = count.clone();
    reassigned.proposer = seq(0xd0);
    w.case(
        "other-proposer.entry",
        &enc(&reassigned),
        bad("passed off as another core's", "Forged"),
    )?;
    let forged = EntryKey::from_bytes(seq(0xa1), fleet).seal(
        proposer,
        count.seq,
        &mut Counter(0),
        &Mutation::ResetGuesses {
            record_id,
            generation: 7,
        },
    );
    w.case(
        "by-another-key.entry",
        &enc(&forged),
        bad("made under a key that is not the fleet's", "Forged"),
    )?;
    let mut v2 = count.clone();
    v2.version = 2;
    w.case(
        "version-2.entry",
        &enc(&v2),
        bad("entry format 2 is not defined", "Version"),
    )?;
    let mut trailing = enc(&count);
    trailing.push(0);
    w.case(
        "trailing-byte.entry",
        &trailing,
        bad("a byte after the entry", "Trailing"),
    )?;
    w.finish()
}

// --------------------------------------------------------------- snapshot stream

fn snapshot() -> Result<()> {
    use bkv_hsm_core::snapshot::SnapshotKey;
    use bkv_hsm_core::state::State;
    let (k, fleet, nonce) = (seq(0xb0), "fleet-vectors", seq(0xb8));
    let key = SnapshotKey::from_bytes(k, fleet);
    let state = State {
        next_generation: 8,
        chain: seq(0xcc),
        entries: 42,
        ..Default::default()
    };
    let root = seq(0xdd);
    let position = b"log position".to_vec();
    let header = key.seal_header(nonce, state.encode(), root, position.clone());
    let bucket = 7u16;
    let plain = b"the plain encoding of bucket 7".to_vec();
    let frame = key.frames(nonce).seal(bucket, &plain);
    let mut w = Writer::new(
        "snapshot",
        "docs/formats.md#replication-node-disk-and-peer-links",
        &[("snapshot_key", hex::encode(k)), ("fleet_id", fleet.into())],
    )?;
    let header_expect = vec![
        ("position", hex::encode(&position)),
        ("root", hex::encode(root)),
        ("next_generation", "8".to_owned()),
        ("chain", hex::encode(seq(0xcc))),
        ("entries", "42".to_owned()),
    ];
    w.case(
        "stream.header",
        &header,
        ok(
            "a sending core's header: the fleet part, the records' root and the log position",
            header_expect,
        ),
    )?;
    w.case(
        "stream.header",
        &header,
        bad_with(
            "opened as another fleet's header",
            "Forged",
            vec![("fleet_id", "fleet-other".into())],
        ),
    )?;
    let last = header.len() - 1;
    w.case(
        "tag-flipped.header",
        &flip(&header, last),
        bad("a bit of the header's authentication tag flipped", "Forged"),
    )?;
    let mut v3 = header.clone();
    // The version byte follows the codec's version byte.
    v3[1] = 3;
    w.case(
        "version-3.header",
        &v3,
        bad("snapshot format 3 is not defined", "Version"),
    )?;
    let frame_params =
        |b: u16, n: [u8; 32]| vec![("bucket", b.to_string()), ("stream_nonce", hex::encode(n))];
    w.case(
        "bucket-7.frame",
        &frame,
        ok_with(
            "bucket 7's frame in the stream of the header above",
            vec![("plain", hex::encode(&plain))],
            frame_params(bucket, nonce),
        ),
    )?;
    w.case(
        "bucket-7.frame",
        &frame,
        bad_with(
            "bucket 7's frame offered as bucket 8's",
            "Frame",
            frame_params(8, nonce),
        ),
    )?;
    w.case(
        "bucket-7.frame",
        &frame,
        bad_with(
            "bucket 7's frame offered in another stream",
            "Frame",
            frame_params(bucket, seq(0xb9)),
        ),
    )?;
    w.finish()
}

// --------------------------------------------------------------- core boundary

fn core_boundary() -> Result<()> {
    use bkv_core_service::protocol::{write_message, Request, Role, ToCore, PROTOCOL_VERSION};
    let framed = |m: &ToCore| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        write_message(&mut out, m)?;
        Ok(out)
    };
    let mut w = Writer::new(
        "core-boundary",
        "docs/formats.md#the-core-boundary-protocol-version-3-cratescore-servicesrcprotocolrs",
        &[],
    )?;
    let hello = |role| ToCore::Hello {
        version: PROTOCOL_VERSION,
        role,
    };
    w.case(
        "hello-core.msg",
        &framed(&hello(Role::Core))?,
        ok(
            "the agent's greeting on its core connection",
            vec![
                ("kind", "hello".into()),
                ("version", PROTOCOL_VERSION.to_string()),
                ("role", "0".into()),
            ],
        ),
    )?;
    let host = framed(&hello(Role::Host))?;
    w.case(
        "hello-host.msg",
        &host,
        ok(
            "the agent's greeting on its host connection",
            vec![
                ("kind", "hello".into()),
                ("version", PROTOCOL_VERSION.to_string()),
                ("role", "1".into()),
            ],
        ),
    )?;
    w.case(
        "counter-advance.msg",
        &framed(&ToCore::Call(Request::CounterAdvance { value: 300 }))?,
        ok(
            "a host request: raise the platform counter to 300",
            vec![("kind", "counter_advance".into()), ("value", "300".into())],
        ),
    )?;
    let mut role2 = host.clone();
    let last = role2.len() - 1;
    role2[last] = 2;
    w.case(
        "role-2.msg",
        &role2,
        bad("role 2 is not defined", "Malformed"),
    )?;
    let mut codec2 = host.clone();
    codec2[4] = 2;
    w.case(
        "codec-2.msg",
        &codec2,
        bad("codec version byte 2 is not defined", "Malformed"),
    )?;
    let mut huge = ((64u32 << 20) + 1).to_be_bytes().to_vec();
    huge.extend_from_slice(&host[4..]);
    w.case(
        "over-64-mib.msg",
        &huge,
        bad(
            "a length over 64 MiB is refused before anything is read",
            "TooLarge",
        ),
    )?;
    let mut short = host.clone();
    short.pop();
    w.case(
        "truncated.msg",
        &short,
        bad("the length names one more byte than follows", "Io"),
    )?;
    w.finish()
}
