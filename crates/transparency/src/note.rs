//! C2SP signed notes (`signed-note`) with Ed25519 signatures, and
//! `tlog-checkpoint` bodies, so independent witnesses can verify and cosign
//! the auditor's checkpoints with standard tooling.
//!
//! ```text
//! <origin>\n<tree size>\n<base64 root hash>\n
//! \n
//! — <key name> <base64(key id[4] || ed25519 signature[64])>\n
//! ```
//! key id = SHA-256(key name || "\n" || 0x01 || public key)[0..4].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Largest note accepted by [`open`].
pub const MAX_NOTE: usize = 16 * 1024;
const MAX_SIGNATURES: usize = 100;
const ED25519_ALG: u8 = 0x01;

/// Why a note, verifier key or checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteError {
    /// The note is longer than [`MAX_NOTE`] bytes.
    #[error("note is too large")]
    TooLarge,
    /// The note, a verifier key or a text to sign breaks the format; the message says what.
    #[error("note is malformed: {0}")]
    Malformed(&'static str),
    /// No signature line of this key name (given) verifies under the key.
    #[error("note carries no valid signature by {0}")]
    Unsigned(String),
    /// The checkpoint text is malformed; the text names the line (origin, size or root hash).
    #[error("checkpoint is malformed: {0}")]
    Checkpoint(&'static str),
}

/// The C2SP signed-note key id of an Ed25519 key: `SHA-256(name || "\n" || 0x01 || key)[0..4]`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519_ALG]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The standard verifier key string: `<name>+<hex key id>+<base64(0x01 || key)>`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut k = vec![ED25519_ALG];
    k.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, key)),
        B64.encode(k)
    )
}

/// Parses a verifier key string (`<name>+<hex key id>+<base64(0x01 || key)>`),
/// checking that the key id matches.
pub fn parse_verifier_key(s: &str) -> Result<(String, VerifyingKey), NoteError> {
    let bad = NoteError::Malformed("verifier key");
    // The base64 part may itself contain '+': split off name and id only.
    let mut parts = s.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(k)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad);
    };
    let raw = B64
        .decode(k)
        .map_err(|_| NoteError::Malformed("verifier key"))?;
    let (alg, key) = raw
        .split_first()
        .ok_or(NoteError::Malformed("verifier key"))?;
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| NoteError::Malformed("verifier key"))?;
    let vk = VerifyingKey::from_bytes(&key).map_err(|_| NoteError::Malformed("verifier key"))?;
    if *alg != ED25519_ALG || !valid_name(name) || hex::encode(key_id(name, &vk)) != id {
        return Err(NoteError::Malformed("verifier key"));
    }
    Ok((name.to_owned(), vk))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('+')
}

/// Signs `text` (which must end in a newline and contain no blank line).
pub fn sign(text: &str, name: &str, key: &SigningKey) -> Result<String, NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") || !valid_name(name) {
        return Err(NoteError::Malformed(
            "text must end in one newline and have no blank line",
        ));
    }
    let sig = key.sign(text.as_bytes());
    let mut blob = key_id(name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&sig.to_bytes());
    let note = format!("{text}\n\u{2014} {name} {}\n", B64.encode(blob));
    // Never sign what `open` would refuse (found by fuzzing).
    if note.len() > MAX_NOTE {
        return Err(NoteError::TooLarge);
    }
    Ok(note)
}

/// Verifies that `note` is signed by (`name`, `key`) and returns its text.
/// Signatures by other keys (e.g. witness cosignatures) are ignored.
pub fn open<'a>(note: &'a str, name: &str, key: &VerifyingKey) -> Result<&'a str, NoteError> {
    if note.len() > MAX_NOTE {
        return Err(NoteError::TooLarge);
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no signature block"))?;
    let text = &note[..=split];
    let sigs = &note[split + 2..];
    if !sigs.ends_with('\n') {
        return Err(NoteError::Malformed(
            "signature block must end in a newline",
        ));
    }
    let want = key_id(name, key);
    for (i, line) in sigs.lines().enumerate() {
        if i >= MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let rest = line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed(
            "signature line must start with an em dash",
        ))?;
        let (n, b) = rest
            .split_once(' ')
            .ok_or(NoteError::Malformed("signature line"))?;
        if n != name {
            continue;
        }
        let blob = B64
            .decode(b)
            .map_err(|_| NoteError::Malformed("signature base64"))?;
        if blob.len() != 68 || blob[..4] != want {
            continue;
        }
        let mut s = [0u8; 64];
        s.copy_from_slice(&blob[4..]);
        if key
            .verify_strict(text.as_bytes(), &Signature::from_bytes(&s))
            .is_ok()
        {
            return Ok(text);
        }
    }
    Err(NoteError::Unsigned(name.to_owned()))
}

/// Algorithm byte of a C2SP `tlog-cosignature` (`cosignature/v1`) key id.
const COSIGNATURE_ALG: u8 = 0x04;

/// A witness's C2SP `cosignature/v1` key id: `SHA-256(name || "\n" || 0x04 || key)[0..4]`.
pub fn cosignature_key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([COSIGNATURE_ALG]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn cosigned_message(text: &str, time: u64) -> Vec<u8> {
    let mut m = format!("cosignature/v1\ntime {time}\n").into_bytes();
    m.extend_from_slice(text.as_bytes());
    m
}

/// A witness's C2SP `tlog-cosignature` line over checkpoint `text` at unix time `time`:
/// `— <name> base64(key id[4] || time (u64 BE) || Ed25519(key, "cosignature/v1\ntime <time>\n"
/// || text)[64])`. Appended to the note's signature block, it leaves the auditor's signature
/// as it was.
pub fn cosign(text: &str, name: &str, key: &SigningKey, time: u64) -> Result<String, NoteError> {
    if !text.ends_with('\n') || text.contains("\n\n") || !valid_name(name) {
        return Err(NoteError::Malformed("checkpoint text or witness name"));
    }
    let sig = key.sign(&cosigned_message(text, time));
    let mut blob = cosignature_key_id(name, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&time.to_be_bytes());
    blob.extend_from_slice(&sig.to_bytes());
    Ok(format!("\u{2014} {name} {}\n", B64.encode(blob)))
}

/// The time of `note`'s `cosignature/v1` by (`name`, `key`), if it carries a valid one.
pub fn cosigned_at(note: &str, name: &str, key: &VerifyingKey) -> Result<u64, NoteError> {
    if note.len() > MAX_NOTE {
        return Err(NoteError::TooLarge);
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no signature block"))?;
    let text = note.get(..=split).ok_or(NoteError::Malformed("note"))?;
    let sigs = note.get(split + 2..).ok_or(NoteError::Malformed("note"))?;
    let want = cosignature_key_id(name, key);
    for line in sigs.lines().take(MAX_SIGNATURES) {
        let Some((n, b)) = line
            .strip_prefix("\u{2014} ")
            .and_then(|r| r.split_once(' '))
        else {
            continue;
        };
        let Ok(blob) = B64.decode(b) else { continue };
        if n != name || blob.len() != 76 || blob.get(..4) != Some(&want[..]) {
            continue;
        }
        let (Some(t), Some(sig)) = (blob.get(4..12), blob.get(12..76)) else {
            continue;
        };
        let time = u64::from_be_bytes(t.try_into().map_err(|_| NoteError::Malformed("time"))?);
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| NoteError::Malformed("signature"))?;
        if key
            .verify_strict(&cosigned_message(text, time), &Signature::from_bytes(&sig))
            .is_ok()
        {
            return Ok(time);
        }
    }
    Err(NoteError::Unsigned(name.to_owned()))
}

/// A C2SP `tlog-checkpoint`: the log's origin, tree size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The origin line, which names the log.
    pub origin: String,
    /// Number of leaves in the tree (decimal, no leading zero, in the text).
    pub size: u64,
    /// RFC 9162 root hash of the tree (base64 in the text).
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body: `<origin>\n<size>\n<base64 root>\n`.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses checkpoint text (extension lines after the third are ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("origin"))?;
        let size_s = lines.next().ok_or(NoteError::Checkpoint("size"))?;
        if size_s.is_empty()
            || (size_s.len() > 1 && size_s.starts_with('0'))
            || !size_s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::Checkpoint("size"));
        }
        let size: u64 = size_s.parse().map_err(|_| NoteError::Checkpoint("size"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(NoteError::Checkpoint("root hash"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs the checkpoint body as a note by (`name`, `key`).
    pub fn sign(&self, name: &str, key: &SigningKey) -> Result<String, NoteError> {
        sign(&self.text(), name, key)
    }

    /// Verifies a signed checkpoint note and parses it.
    pub fn open(note: &str, name: &str, key: &VerifyingKey) -> Result<Self, NoteError> {
        Self::parse(open(note, name, key)?)
    }
}

#[cfg(test)]
mod tests {
    /// `sign` refuses a text whose note `open` would refuse as too large
    /// (a fuzzing finding: the two disagreed).
    #[test]
    fn sign_refuses_what_open_would_refuse() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let long = format!("{}\n", "a".repeat(MAX_NOTE));
        assert!(matches!(sign(&long, "n", &key), Err(NoteError::TooLarge)));
        let fits = format!("{}\n", "a".repeat(MAX_NOTE - 200));
        let note = sign(&fits, "n", &key).unwrap();
        assert_eq!(open(&note, "n", &key.verifying_key()).unwrap(), fits);
    }

    use super::*;

    /// The sample in docs/auditor-api.md is a real, verifiable checkpoint.
    #[test]
    fn documented_sample_verifies() {
        let doc = include_str!("../../../docs/auditor-api.md");
        let vkey = doc
            .split("the key with verifier key `")
            .nth(1)
            .and_then(|r| r.split('`').next())
            .unwrap();
        let (name, key) = parse_verifier_key(vkey).unwrap();
        let block = doc
            .split("```text\n")
            .nth(1)
            .and_then(|r| r.split("```").next())
            .unwrap();
        let cp = Checkpoint::open(block, &name, &key).unwrap();
        assert_eq!((cp.origin.as_str(), cp.size), ("bkv-auditor/dev", 1));
    }

    /// A witness's `cosignature/v1` line verifies under its key only, over the checkpoint text
    /// and the time it names, and leaves the auditor's signature valid.
    #[test]
    fn a_cosignature_verifies_and_names_its_time() {
        let auditor = SigningKey::from_bytes(&[1; 32]);
        let witness = SigningKey::from_bytes(&[2; 32]);
        let cp = Checkpoint {
            origin: "aud/ns".into(),
            size: 3,
            root: [7; 32],
        };
        let note = cp.sign("aud", &auditor).unwrap();
        let line = cosign(&cp.text(), "w", &witness, 1_800_000_000).unwrap();
        let cosigned = format!("{note}{line}");
        assert_eq!(
            cosigned_at(&cosigned, "w", &witness.verifying_key()),
            Ok(1_800_000_000)
        );
        assert_eq!(
            Checkpoint::open(&cosigned, "aud", &auditor.verifying_key()).unwrap(),
            cp
        );
        // Another key, another name, or another checkpoint: no valid cosignature.
        let other = SigningKey::from_bytes(&[3; 32]).verifying_key();
        assert!(cosigned_at(&cosigned, "w", &other).is_err());
        assert!(cosigned_at(&cosigned, "x", &witness.verifying_key()).is_err());
        let moved = Checkpoint {
            size: 4,
            ..cp.clone()
        }
        .sign("aud", &auditor)
        .unwrap();
        assert!(cosigned_at(&format!("{moved}{line}"), "w", &witness.verifying_key()).is_err());
        // An ordinary note signature by the witness key is not a cosignature.
        let plain = cp.sign("w", &witness).unwrap();
        assert!(cosigned_at(&plain, "w", &witness.verifying_key()).is_err());
    }

    #[test]
    fn sign_open_and_reject() {
        let k = SigningKey::from_bytes(&[3; 32]);
        let vk = k.verifying_key();
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 7,
            root: [9; 32],
        };
        let note = cp.sign("auditor", &k).unwrap();
        assert!(note.starts_with("example.com/log\n7\n"));
        assert!(note.contains("\n\n\u{2014} auditor "));
        assert_eq!(Checkpoint::open(&note, "auditor", &vk).unwrap(), cp);
        // Other keys, names, or edited text fail.
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(Checkpoint::open(&note, "auditor", &other).is_err());
        assert!(Checkpoint::open(&note, "someone", &vk).is_err());
        let edited = note.replacen("\n7\n", "\n8\n", 1);
        assert_eq!(
            Checkpoint::open(&edited, "auditor", &vk).unwrap_err(),
            NoteError::Unsigned("auditor".into())
        );
        // A witness cosignature line of another key is ignored.
        let w = SigningKey::from_bytes(&[5; 32]);
        let cosigned = format!(
            "{note}{}",
            sign(&cp.text(), "witness", &w)
                .unwrap()
                .rsplit("\n\n")
                .next()
                .unwrap()
        );
        assert_eq!(Checkpoint::open(&cosigned, "auditor", &vk).unwrap(), cp);
        assert_eq!(
            Checkpoint::open(&cosigned, "witness", &w.verifying_key()).unwrap(),
            cp
        );
        assert!(verifier_key("auditor", &vk).starts_with("auditor+"));
        let (n, k) = parse_verifier_key(&verifier_key("auditor", &vk)).unwrap();
        assert_eq!((n.as_str(), k), ("auditor", vk));
        // Keys whose base64 contains '+' (found by the cross-test with random keys).
        for i in 0..=255u8 {
            let vk = SigningKey::from_bytes(&[i; 32]).verifying_key();
            let vks = verifier_key("w", &vk);
            assert_eq!(parse_verifier_key(&vks).unwrap().1, vk, "{vks}");
        }
        assert!(parse_verifier_key("auditor+00000000+AAAA").is_err());
        for bad in ["", "x", "o\n01\nAAAA\n", "o\n1\nnot-base64\n"] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary input to the note and checkpoint decoders is an error, never a panic.
        #[test]
        fn decoders_never_panic(s in "(?s).{0,400}", bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let k = SigningKey::from_bytes(&[3; 32]).verifying_key();
            let _ = open(&s, "a", &k);
            let _ = Checkpoint::parse(&s);
            let _ = parse_verifier_key(&s);
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = Checkpoint::open(&lossy, "a", &k);
            let with_sig = format!("o\n1\n{}\n\n\u{2014} a {}\n", "A".repeat(44), lossy.trim());
            let _ = Checkpoint::open(&with_sig, "a", &k);
        }
    }
}
