// One file on purpose: the specification of every vector (what each file must decode to, or why
// it must be rejected) is one table, checked against the files and the docs.
//! Independent readers of bkv's formats, written from `docs/formats.md` and
//! `docs/auditor-api.md` only: they parse the bytes field by field as documented and use the
//! primitives directly, never the bkv library. Errors are short descriptions of the first rule
//! a vector breaks.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A reader's result: the value, or a short description of the first rule the bytes break.
pub type SpecResult<T> = Result<T, &'static str>;

/// Reads the canonical codec (`docs/formats.md`, "Codec"): `0x01 || postcard(v)`, with postcard's
/// varint integers, length-prefixed byte strings and strings, fixed arrays as raw bytes, enum
/// variants and `Option` tags as varints.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader of an encoded value: checks and skips the codec version byte.
    pub fn encoded(bytes: &'a [u8]) -> SpecResult<Self> {
        match bytes.split_first() {
            Some((1, rest)) => Ok(Reader(rest)),
            Some(_) => Err("codec version byte is not 0x01"),
            None => Err("empty"),
        }
    }

    /// The next `n` bytes as they are.
    pub fn raw(&mut self, n: usize) -> SpecResult<&'a [u8]> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    /// The next `N` bytes: a fixed-size array, which postcard writes raw.
    pub fn fixed<const N: usize>(&mut self) -> SpecResult<[u8; N]> {
        self.raw(N)?.try_into().map_err(|_| "truncated")
    }

    /// The next byte (a `u8` is one raw byte).
    pub fn u8(&mut self) -> SpecResult<u8> {
        Ok(self.fixed::<1>()?[0])
    }

    /// LEB128, at most 10 bytes, no overlong final zero byte.
    pub fn varint(&mut self) -> SpecResult<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(7 * i)
                .ok_or("varint overflow")?;
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err("overlong varint");
                }
                return Ok(v);
            }
        }
        Err("varint too long")
    }

    /// A byte string: a varint length, then that many bytes.
    pub fn bytes(&mut self) -> SpecResult<&'a [u8]> {
        let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
        self.raw(n)
    }

    /// A string: a byte string that must be UTF-8.
    pub fn string(&mut self) -> SpecResult<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "string is not UTF-8")
    }

    /// Checks that no byte is left (trailing bytes are an error).
    pub fn end(&self) -> SpecResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

fn hkdf32(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(salt, ikm).expand(info, &mut out);
    out
}

fn ed25519_ok(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(sig) else {
        return false;
    };
    key.verify_strict(msg, &Signature::from_bytes(&sig)).is_ok()
}

// ---------------------------------------------------------------- backup file

/// `docs/formats.md`, "Backup file": returns the plaintext of a backup under `key`.
pub fn backup_decrypt(key: &[u8; 32], file: &[u8]) -> SpecResult<Vec<u8>> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let header: [u8; 44] = file
        .get(..44)
        .and_then(|h| h.try_into().ok())
        .ok_or("shorter than the header")?;
    if &header[0..4] != b"BKVB" {
        return Err("magic");
    }
    if header[4] != 1 {
        return Err("version");
    }
    if header[5] != 1 {
        return Err("aead");
    }
    if header[6] > 1 || header[7] > 1 {
        return Err("compression or content");
    }
    let chunk_size = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if !(4096..=16 << 20).contains(&chunk_size) {
        return Err("chunk size");
    }
    if header[43] != 0 {
        return Err("reserved");
    }
    let mut info = b"bkv backup v1".to_vec();
    info.extend_from_slice(&header);
    let ck = hkdf32(Some(&header[20..36]), key, &info);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &ck).map_err(|_| "key")?);
    let mut rest = &file[44..];
    let mut out = Vec::new();
    let mut counter: u32 = 0;
    loop {
        // Every chunk but the last is full; the last is 0..=chunk_size plaintext bytes.
        let last = rest.len() <= chunk_size + 16;
        let n = if last { rest.len() } else { chunk_size + 16 };
        if n < 16 {
            return Err("truncated chunk");
        }
        let (chunk, tail) = rest.split_at(n);
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(&header[36..43]);
        nonce[7..11].copy_from_slice(&counter.to_be_bytes());
        nonce[11] = u8::from(last);
        let mut buf = chunk.to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header),
                &mut buf,
            )
            .map_err(|_| "chunk authentication")?;
        out.extend_from_slice(plain);
        if last {
            return Ok(out);
        }
        rest = tail;
        counter = counter.checked_add(1).ok_or("too many chunks")?;
    }
}

// --------------------------------------------------------------- recovery key

const RK_ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";

/// `docs/formats.md`, "Recovery key": the 32 key bytes a typed recovery key names.
pub fn recovery_key_decode(text: &str) -> SpecResult<[u8; 32]> {
    let symbols: Vec<u8> = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => Ok(0),
            'I' | 'L' => Ok(1),
            c => RK_ALPHABET
                .iter()
                .position(|&a| char::from(a) == c)
                .map(|p| p as u8)
                .ok_or("not a recovery key character"),
        })
        .collect::<SpecResult<_>>()?;
    if symbols.len() != 53 {
        return Err("length");
    }
    let (digits, check) = symbols.split_at(52);
    if digits.iter().any(|&d| d >= 32) {
        return Err("check-only symbol in a data position");
    }
    let rem = digits
        .iter()
        .fold(0u32, |acc, &d| (acc * 32 + u32::from(d)) % 37);
    if check != [rem as u8] {
        return Err("check symbol");
    }
    // 52 digits = 260 bits: 4 zero bits, then the key, most significant bit first.
    let mut acc: u128 = 0;
    let mut nbits = 0;
    let mut bits = Vec::with_capacity(260);
    for &d in digits {
        acc = (acc << 5) | u128::from(d);
        nbits += 5;
        while nbits > 0 {
            nbits -= 1;
            bits.push((acc >> nbits) & 1 == 1);
        }
    }
    if bits[..4].iter().any(|&b| b) {
        return Err("padding bits are not zero");
    }
    let mut key = [0u8; 32];
    for (i, byte) in bits[4..].chunks(8).enumerate() {
        key[i] = byte.iter().fold(0, |a, &b| (a << 1) | u8::from(b));
    }
    Ok(key)
}

/// The grouped display form of a recovery key (`XXXX-…-XXXX-C`).
pub fn recovery_key_encode(key: &[u8; 32]) -> String {
    let mut bits = vec![false; 4];
    for b in key {
        bits.extend((0..8).rev().map(|i| (b >> i) & 1 == 1));
    }
    let digits: Vec<u8> = bits
        .chunks(5)
        .map(|c| c.iter().fold(0, |a, &b| (a << 1) | u8::from(b)))
        .collect();
    let rem = digits
        .iter()
        .fold(0u32, |acc, &d| (acc * 32 + u32::from(d)) % 37);
    let mut s = String::new();
    for (i, &d) in digits.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            s.push('-');
        }
        s.push(char::from(RK_ALPHABET[usize::from(d)]));
    }
    s.push('-');
    s.push(char::from(RK_ALPHABET[rem as usize]));
    s
}

/// The X25519 secret of a recovery-key slot.
pub fn recovery_slot_secret(rk: &[u8; 32], slot_id: &str) -> [u8; 32] {
    hkdf32(Some(slot_id.as_bytes()), rk, b"bkv recovery-key slot v1")
}

/// The public key of a recovery-key slot.
pub fn recovery_slot_public(rk: &[u8; 32], slot_id: &str) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(recovery_slot_secret(rk, slot_id)).to_bytes()
}

// --------------------------------------------------------- protector manifest

/// What a protector manifest says.
pub struct ManifestView {
    /// The user the manifest belongs to.
    pub user_id: String,
    /// Id of the backup key K: `SHA-256("bkv key id v1" || K)[0..16]`.
    pub key_id: [u8; 16],
    /// The rotation generation (grows by one with every rotation).
    pub generation: u64,
    /// Ids of the manifest's protector slots, in order.
    pub slot_ids: Vec<String>,
    /// K, as opened from the slot of the recovery key given (if any).
    pub opened_key: Option<[u8; 32]>,
}

struct SlotView {
    id: String,
    kind: u64,
    public_key: [u8; 32],
    envelope: Vec<u8>,
}

/// `docs/formats.md`, "Protector manifest": decodes, checks the MAC under `k`, and opens the
/// recovery-key slot `rk` opens.
pub fn manifest_open(file: &[u8], k: &[u8; 32], rk: Option<&[u8; 32]>) -> SpecResult<ManifestView> {
    if file.len() > 64 * 1024 {
        return Err("over 64 KiB");
    }
    let split = file.len().checked_sub(32).ok_or("shorter than the MAC")?;
    let (encoded_manifest, mac) = file.split_at(split);
    let mut r = Reader::encoded(encoded_manifest)?;
    if r.u8()? != 1 {
        return Err("manifest version");
    }
    let user_id = r.string()?;
    let key_id: [u8; 16] = r.fixed()?;
    let generation = r.varint()?;
    let n = r.varint()?;
    if n > 32 {
        return Err("more than 32 slots");
    }
    let mut slots = Vec::new();
    for _ in 0..n {
        let id = r.string()?;
        let kind = r.varint()?;
        if kind > 1 {
            return Err("slot kind");
        }
        let _created = r.varint()?;
        let public_key: [u8; 32] = r.fixed()?;
        let envelope = r.bytes()?.to_vec();
        match r.u8()? {
            0 => {}
            1 => {
                let _rp_id = r.string()?;
                let _credential_id = r.bytes()?;
                let _prf_salt: [u8; 32] = r.fixed()?;
            }
            _ => return Err("option tag"),
        }
        slots.push(SlotView {
            id,
            kind,
            public_key,
            envelope,
        });
    }
    r.end()?;
    let mac_key = hkdf32(None, k, b"bkv manifest mac v1");
    let mut h = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).map_err(|_| "hmac key")?;
    h.update(encoded_manifest);
    h.verify_slice(mac).map_err(|_| "MAC")?;
    let expected_key_id = Sha256::new()
        .chain_update(b"bkv key id v1")
        .chain_update(k)
        .finalize();
    if key_id[..] != expected_key_id[..16] {
        return Err("key id is not this K's");
    }
    let opened_key = match rk {
        None => None,
        Some(rk) => Some(
            slots
                .iter()
                .filter(|s| s.kind == 0)
                .find_map(|s| open_envelope(s, rk, &user_id, &key_id).ok())
                .ok_or("no recovery-key slot opens")?,
        ),
    };
    Ok(ManifestView {
        user_id,
        key_id,
        generation,
        slot_ids: slots.into_iter().map(|s| s.id).collect(),
        opened_key,
    })
}

fn open_envelope(
    slot: &SlotView,
    rk: &[u8; 32],
    user_id: &str,
    key_id: &[u8; 16],
) -> SpecResult<[u8; 32]> {
    let sk = recovery_slot_secret(rk, &slot.id);
    if MontgomeryPoint::mul_base_clamped(sk).to_bytes() != slot.public_key {
        return Err("not this slot's key");
    }
    let eph: [u8; 32] = slot
        .envelope
        .get(..32)
        .and_then(|e| e.try_into().ok())
        .ok_or("envelope")?;
    let nonce = slot.envelope.get(32..56).ok_or("envelope")?;
    let ct = slot.envelope.get(56..).ok_or("envelope")?;
    let shared = MontgomeryPoint(eph).mul_clamped(sk).to_bytes();
    if shared == [0; 32] {
        return Err("low-order ephemeral key");
    }
    let mut ctx = b"bkv slot envelope v1\0".to_vec();
    ctx.extend_from_slice(&eph);
    ctx.extend_from_slice(&slot.public_key);
    ctx.extend_from_slice(key_id);
    ctx.extend_from_slice(user_id.as_bytes());
    ctx.push(0);
    ctx.extend_from_slice(slot.id.as_bytes());
    let k = hkdf32(None, &shared, &ctx);
    let pt = XChaCha20Poly1305::new((&k).into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &ctx })
        .map_err(|_| "envelope authentication")?;
    pt.try_into().map_err(|_| "envelope is not 32 bytes")
}

// --------------------------------------------------------------- sealed value

/// `docs/formats.md`, "Sealed values", version 1 (software platform).
pub fn unseal_v1(key: &[u8; 32], slot: &str, label: &[u8], sealed: &[u8]) -> SpecResult<Vec<u8>> {
    let (&version, rest) = sealed.split_first().ok_or("empty")?;
    if version != 1 {
        return Err("not version 1");
    }
    if rest.len() < 24 + 16 {
        return Err("truncated");
    }
    let (nonce, ct) = rest.split_at(24);
    let mut aad = b"bkv-seal-v1".to_vec();
    aad.extend_from_slice(slot.as_bytes());
    aad.push(0);
    aad.extend_from_slice(label);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| "authentication")
}

// --------------------------------------------------------- platform statement

/// What a platform statement says.
pub struct StatementView {
    /// The node's peer-link identity key (X25519 public key).
    pub identity_key: [u8; 32],
    /// The platform's Ed25519 signing key, which signed the statement.
    pub signing_key: [u8; 32],
    /// 0 Software, 1 Pkcs11, 2 Memory.
    pub kind: u64,
    /// The platform's description, e.g. a token's maker, model, serial and label (≤ 256 bytes).
    pub token: String,
    /// SHA-256 of the `bkv-hsm` executable.
    pub binary_sha256: [u8; 32],
}

/// `docs/formats.md`, "Platform statement": decodes `encode(SignedStatement)` and checks the
/// signature by the signing key the statement names.
pub fn statement_verify(file: &[u8]) -> SpecResult<StatementView> {
    let mut outer = Reader::encoded(file)?;
    let statement = outer.bytes()?;
    let signature = outer.bytes()?;
    outer.end()?;
    let mut r = Reader::encoded(statement)?;
    if r.u8()? != 1 {
        return Err("statement version");
    }
    let identity_key = r.fixed()?;
    let signing_key = r.fixed()?;
    let kind = r.varint()?;
    if kind > 2 {
        return Err("platform kind");
    }
    let token = r.string()?;
    if token.len() > 256 {
        return Err("token description over 256 bytes");
    }
    let binary_sha256 = r.fixed()?;
    r.end()?;
    let mut msg = b"bkv platform statement v1\0".to_vec();
    msg.extend_from_slice(statement);
    if !ed25519_ok(&signing_key, &msg, signature) {
        return Err("signature");
    }
    Ok(StatementView {
        identity_key,
        signing_key,
        kind,
        token,
        binary_sha256,
    })
}

// -------------------------------------------------------- checkpoint (note)

/// What a checkpoint says.
pub struct CheckpointView {
    /// The origin line, which names the log.
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The tree's root hash.
    pub root: [u8; 32],
}

/// The C2SP signed-note key id: `SHA-256(name || "\n" || 0x01 || key)[0..4]`.
pub fn note_key_id(name: &str, key: &[u8; 32]) -> [u8; 4] {
    let d = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n\x01")
        .chain_update(key)
        .finalize();
    [d[0], d[1], d[2], d[3]]
}

/// `docs/auditor-api.md`, "Checkpoints": opens a note signed by `name`/`key` and parses the
/// checkpoint in it. Signature lines of other keys are ignored.
pub fn checkpoint_open(note: &str, name: &str, key: &[u8; 32]) -> SpecResult<CheckpointView> {
    if note.len() > 16 * 1024 {
        return Err("note over 16 KiB");
    }
    // Signature lines hold no blank line, so the last one ends the text.
    let split = note.rfind("\n\n").ok_or("no blank line")?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err("signature block");
    }
    let id = note_key_id(name, key);
    let mut signed = false;
    for line in sigs[..sigs.len() - 1].split('\n') {
        let rest = line.strip_prefix("— ").ok_or("signature line")?;
        let (line_name, b64) = rest.split_once(' ').ok_or("signature line")?;
        if line_name != name {
            continue; // another key's line (a witness): not ours to judge
        }
        let blob = B64.decode(b64).map_err(|_| "signature base64")?;
        if blob.len() == 68 && blob[..4] == id && ed25519_ok(key, text.as_bytes(), &blob[4..]) {
            signed = true;
        }
    }
    if !signed {
        return Err("no valid signature by the key");
    }
    let mut lines = text.split('\n');
    let origin = lines.next().filter(|o| !o.is_empty()).ok_or("origin")?;
    let size_s = lines.next().ok_or("size")?;
    if size_s.is_empty()
        || (size_s.len() > 1 && size_s.starts_with('0'))
        || !size_s.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("size");
    }
    let size = size_s.parse().map_err(|_| "size")?;
    let root = lines
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or("root hash")?;
    Ok(CheckpointView {
        origin: origin.to_owned(),
        size,
        root,
    })
}

// ---------------------------------------------------------------------- bundle

/// RFC 9162 §2.1.3.2: verifies an inclusion proof.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8; 32],
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode, mut r) = (index, size - 1, *leaf);
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(l)
        .chain_update(r)
        .finalize()
        .into()
}

fn leaf_hash(data: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(data)
        .finalize()
        .into()
}

/// What a verified bundle says.
pub struct BundleView {
    /// The bundle's namespace.
    pub namespace: String,
    /// The bundle's epoch.
    pub epoch: u64,
    /// Id of the preferred fleet.
    pub fleet_id: String,
    /// The preferred fleet's Noise static key.
    pub noise_key: [u8; 32],
    /// Ids of the previous fleets, in the bundle's order.
    pub previous_fleets: Vec<String>,
}

/// What a client pins, for [`bundle_verify`].
pub struct Anchors<'a> {
    /// The namespace whose bundles are accepted.
    pub namespace: &'a str,
    /// Checkpoint origin of the namespace's log.
    pub origin: &'a str,
    /// The auditor's signed-note key name.
    pub auditor_name: &'a str,
    /// The auditor's Ed25519 public key.
    pub auditor_key: &'a [u8; 32],
    /// The operator's Ed25519 public key.
    pub operator_key: &'a [u8; 32],
}

/// Reads `[FleetKey]` and returns the Noise static key (role 0), if any.
fn fleet_keys(r: &mut Reader<'_>) -> SpecResult<Option<[u8; 32]>> {
    let mut noise = None;
    for _ in 0..r.varint()? {
        let role = r.varint()?;
        let key: [u8; 32] = r.fixed()?;
        match role {
            0 => noise = noise.or(Some(key)),
            1 => {}
            _ => return Err("key role"),
        }
    }
    Ok(noise)
}

fn json_b64(v: &serde_json::Value, field: &str) -> SpecResult<Vec<u8>> {
    v.get(field)
        .and_then(|s| s.as_str())
        .and_then(|s| B64.decode(s).ok())
        .ok_or("package field")
}

/// A decoded bundle (version 2).
struct ParsedBundle {
    namespace: String,
    epoch: u64,
    fleet_id: String,
    noise_key: [u8; 32],
    not_before: u64,
    not_after: u64,
    /// Previous fleets: id and Noise key.
    previous: Vec<(String, [u8; 32])>,
}

fn parse_bundle(bundle: &[u8]) -> SpecResult<ParsedBundle> {
    if bundle.len() > 16 * 1024 {
        return Err("bundle over 16 KiB");
    }
    let mut r = Reader::encoded(bundle)?;
    if r.u8()? != 2 {
        return Err("bundle version");
    }
    let namespace = r.string()?;
    let epoch = r.varint()?;
    let fleet_id = r.string()?;
    let noise_key = fleet_keys(&mut r)?.ok_or("no Noise key")?;
    let not_before = r.varint()?;
    let not_after = r.varint()?;
    let _evidence: [u8; 32] = r.fixed()?;
    let n_prev = r.varint()?;
    if n_prev > 4 {
        return Err("more than 4 previous fleets");
    }
    let mut previous = Vec::new();
    for _ in 0..n_prev {
        let id = r.string()?;
        if id == fleet_id {
            return Err("previous fleet repeats the preferred one");
        }
        let key = fleet_keys(&mut r)?.ok_or("previous fleet without a Noise key")?;
        let _evidence: [u8; 32] = r.fixed()?;
        previous.push((id, key));
    }
    r.end()?;
    Ok(ParsedBundle {
        namespace,
        epoch,
        fleet_id,
        noise_key,
        not_before,
        not_after,
        previous,
    })
}

/// Whether the auditor signed `encode((namespace, epoch, SHA-256(bundle)))` (codec byte, string,
/// varint, raw 32 bytes) under its context.
fn auditor_signed(anchors: &Anchors<'_>, bundle: &[u8], b: &ParsedBundle, sig: &[u8]) -> bool {
    let mut msg = b"bkv bundle auditor signature v1\0\x01".to_vec();
    push_varint(&mut msg, b.namespace.len() as u64);
    msg.extend_from_slice(b.namespace.as_bytes());
    push_varint(&mut msg, b.epoch);
    msg.extend_from_slice(&Sha256::digest(bundle));
    ed25519_ok(anchors.auditor_key, &msg, sig)
}

/// Whether the operator counter-signed the auditor's signature bytes.
fn operator_signed(anchors: &Anchors<'_>, auditor_sig: &[u8], sig: &[u8]) -> bool {
    let mut msg = b"bkv bundle operator countersignature v1\0".to_vec();
    msg.extend_from_slice(auditor_sig);
    ed25519_ok(anchors.operator_key, &msg, sig)
}

/// The bundle's leaf hash: `0x00 || "bkv-leaf-v1\0" || epoch (u64 BE) || SHA-256(bundle)`.
fn bundle_leaf(bundle: &[u8], epoch: u64) -> [u8; 32] {
    let mut leaf = b"bkv-leaf-v1\0".to_vec();
    leaf.extend_from_slice(&epoch.to_be_bytes());
    leaf.extend_from_slice(&Sha256::digest(bundle));
    leaf_hash(&leaf)
}

fn json_proof(v: &serde_json::Value) -> SpecResult<Vec<[u8; 32]>> {
    v.get("inclusion_proof")
        .and_then(|p| p.as_array())
        .ok_or("package field")?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(|s| B64.decode(s).ok())
                .and_then(|b| b.try_into().ok())
                .ok_or("proof hash")
        })
        .collect()
}

/// `docs/formats.md`, "Validation bundle", and `docs/auditor-api.md`: checks a bundle package
/// (as the frontend serves it) against the pinned keys at time `now`, without any remembered
/// state: decoding, both signatures, the checkpoint, inclusion, the validity window, and for
/// every previous fleet a logged earlier bundle naming it as the preferred fleet.
pub fn bundle_verify(package: &[u8], anchors: &Anchors<'_>, now: u64) -> SpecResult<BundleView> {
    let v: serde_json::Value = serde_json::from_slice(package).map_err(|_| "package JSON")?;
    let bundle = json_b64(&v, "bundle")?;
    let b = parse_bundle(&bundle)?;
    if b.namespace != anchors.namespace {
        return Err("namespace");
    }
    let auditor_sig = json_b64(&v, "auditor_signature")?;
    let operator_sig = json_b64(&v, "operator_signature")?;
    if !auditor_signed(anchors, &bundle, &b, &auditor_sig) {
        return Err("auditor signature");
    }
    if !operator_signed(anchors, &auditor_sig, &operator_sig) {
        return Err("operator signature");
    }
    let note = v
        .get("checkpoint")
        .and_then(|c| c.as_str())
        .ok_or("package field")?;
    let cp = checkpoint_open(note, anchors.auditor_name, anchors.auditor_key)?;
    if cp.origin != anchors.origin {
        return Err("checkpoint origin");
    }
    let index = v
        .get("leaf_index")
        .and_then(|i| i.as_u64())
        .ok_or("package field")?;
    if !verify_inclusion(
        index,
        cp.size,
        &bundle_leaf(&bundle, b.epoch),
        &json_proof(&v)?,
        &cp.root,
    ) {
        return Err("inclusion proof");
    }
    if now < b.not_before || now >= b.not_after {
        return Err("outside the validity window");
    }
    let proofs = v
        .get("previous_proofs")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    for (id, key) in &b.previous {
        let proven = proofs.iter().any(|e| {
            let (Ok(earlier), Ok(a), Ok(o)) = (
                json_b64(e, "bundle"),
                json_b64(e, "auditor_signature"),
                json_b64(e, "operator_signature"),
            ) else {
                return false;
            };
            let (Ok(p), Ok(proof), Some(i)) = (
                parse_bundle(&earlier),
                json_proof(e),
                e.get("leaf_index").and_then(|i| i.as_u64()),
            ) else {
                return false;
            };
            p.namespace == b.namespace
                && p.epoch < b.epoch
                && p.fleet_id == *id
                && p.noise_key == *key
                && auditor_signed(anchors, &earlier, &p, &a)
                && operator_signed(anchors, &a, &o)
                && verify_inclusion(
                    i,
                    cp.size,
                    &bundle_leaf(&earlier, p.epoch),
                    &proof,
                    &cp.root,
                )
        });
        if !proven {
            return Err("a previous fleet the log does not prove was preferred");
        }
    }
    Ok(BundleView {
        namespace: b.namespace,
        epoch: b.epoch,
        fleet_id: b.fleet_id,
        noise_key: b.noise_key,
        previous_fleets: b.previous.into_iter().map(|(id, _)| id).collect(),
    })
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What a move ticket says.
pub struct MoveTicketView {
    /// 0 Intent, 1 Moved.
    pub step: u64,
    /// The registration on the new fleet it names ([`pending_digest`]).
    pub pending_digest: [u8; 32],
    /// The guesses the old record had counted.
    pub attempts: u64,
}

/// The pinned side of a move-ticket check: the new fleet, its predecessor's move key, the
/// record, the step expected.
pub struct MoveAnchors<'a> {
    /// The predecessor's Ed25519 move key (public).
    pub move_key: &'a [u8; 32],
    /// Id of the predecessor fleet the ticket must come from.
    pub from_fleet: &'a str,
    /// Id of the new fleet, which the ticket must name as `to_fleet`.
    pub fleet_id: &'a str,
    /// The record the ticket must name.
    pub record_id: &'a [u8; 32],
    /// 0 Intent, 1 Moved.
    pub step: u64,
}

/// `docs/formats.md`, "Moving a record": decodes `encode(SignedMoveTicket)`, then the ticket
/// (version 1), and checks it names the expected step, predecessor, fleet and record and is
/// signed by the predecessor's move key over `"bkv move ticket v1\0" || ticket`.
pub fn move_ticket_verify(file: &[u8], a: &MoveAnchors<'_>) -> SpecResult<MoveTicketView> {
    let mut outer = Reader::encoded(file)?;
    if file.len() > 2048 {
        return Err("signed ticket too large");
    }
    let ticket = outer.bytes()?;
    let signature = outer.bytes()?;
    outer.end()?;
    let mut r = Reader::encoded(ticket)?;
    if r.u8()? != 1 {
        return Err("ticket version");
    }
    let step = r.varint()?;
    let from_fleet = r.string()?;
    let to_fleet = r.string()?;
    let record_id: [u8; 32] = r.fixed()?;
    let pending_digest: [u8; 32] = r.fixed()?;
    let attempts = r.varint()?;
    r.end()?;
    if step > 1 {
        return Err("ticket step");
    }
    if step != a.step {
        return Err("a ticket of another step");
    }
    if to_fleet != a.fleet_id {
        return Err("the ticket moves the record elsewhere");
    }
    if &record_id != a.record_id {
        return Err("the ticket names another record");
    }
    if from_fleet != a.from_fleet {
        return Err("the ticket comes from an unpinned fleet");
    }
    let mut msg = b"bkv move ticket v1\0".to_vec();
    msg.extend_from_slice(ticket);
    if !ed25519_ok(a.move_key, &msg, signature) {
        return Err("move ticket signature");
    }
    Ok(MoveTicketView {
        step,
        pending_digest,
        attempts,
    })
}

/// `docs/formats.md`, "Moving a record": the digest of a `RegisterFinishMove`'s fields,
/// `SHA-256("bkv move pending v1\0" || encode((upload, wrapped_key, guess_limit, confirm_hash)))`.
pub fn pending_digest(
    upload: &[u8],
    wrapped_key: &[u8],
    guess_limit: u64,
    confirm_hash: &[u8; 32],
) -> [u8; 32] {
    let mut e = vec![1u8];
    push_varint(&mut e, upload.len() as u64);
    e.extend_from_slice(upload);
    push_varint(&mut e, wrapped_key.len() as u64);
    e.extend_from_slice(wrapped_key);
    push_varint(&mut e, guess_limit);
    e.extend_from_slice(confirm_hash);
    Sha256::new()
        .chain_update(b"bkv move pending v1\0")
        .chain_update(&e)
        .finalize()
        .into()
}

// ---------------------------------------------------------------- log entry

/// What a log entry says.
pub struct LogEntryView {
    /// The proposing core's sequence number of the entry.
    pub seq: u64,
    /// The mutation's variant index (`docs/formats.md`, "Log entries": 2 CountGuess,
    /// 3 ResetGuesses, ...).
    pub mutation: u64,
    /// The record the mutation changes.
    pub record_id: [u8; 32],
    /// The record generation the mutation names.
    pub generation: u64,
}

/// `docs/formats.md`, "Log entries", format 1: decodes `encode(LogEntry)` (version u8, proposer
/// [32], seq varint, nonce [24], sealed bytes), opens `sealed` with XChaCha20-Poly1305 under the
/// entry key with associated data `"bkv/log-entry/v1\0" || u16 BE len || fleet id || proposer ||
/// seq (u64 BE)`, and reads a record mutation that names a record and a generation (variants 2
/// to 5).
pub fn log_entry_open(file: &[u8], key: &[u8; 32], fleet_id: &str) -> SpecResult<LogEntryView> {
    let mut r = Reader::encoded(file)?;
    let version = r.u8()?;
    let proposer: [u8; 32] = r.fixed()?;
    let seq = r.varint()?;
    let nonce: [u8; 24] = r.fixed()?;
    let sealed = r.bytes()?;
    r.end()?;
    if version != 1 {
        return Err("entry format");
    }
    let mut aad = b"bkv/log-entry/v1\0".to_vec();
    aad.extend_from_slice(
        &u16::try_from(fleet_id.len())
            .map_err(|_| "fleet id")?
            .to_be_bytes(),
    );
    aad.extend_from_slice(fleet_id.as_bytes());
    aad.extend_from_slice(&proposer);
    aad.extend_from_slice(&seq.to_be_bytes());
    let plain = XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| "authentication")?;
    let mut m = Reader::encoded(&plain)?;
    let mutation = m.varint()?;
    if !(2..=5).contains(&mutation) {
        return Err("not a mutation this reader decodes");
    }
    let record_id: [u8; 32] = m.fixed()?;
    let generation = m.varint()?;
    m.end()?;
    Ok(LogEntryView {
        seq,
        mutation,
        record_id,
        generation,
    })
}

/// What a snapshot header says (`docs/formats.md`, "Snapshot stream").
pub struct SnapshotView {
    /// The record table's position the snapshot is of (its encoded bytes).
    pub position: Vec<u8>,
    /// The hash the snapshot's buckets must hash to.
    pub root: [u8; 32],
    /// The state's next record generation counter.
    pub next_generation: u64,
    /// The hash chain over every log entry the state processed.
    pub chain: [u8; 32],
    /// How many log entries that chain covers.
    pub entries: u64,
}

/// A stream key: HKDF-SHA-256 with the stream nonce as salt and the fleet's snapshot key as
/// input, `info` naming the part ("header" or "frames").
fn snapshot_stream_key(snapshot_key: &[u8; 32], nonce: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    // 32 bytes is within HKDF-SHA-256's output limit.
    let _ = Hkdf::<Sha256>::new(Some(nonce), snapshot_key).expand(info, &mut k);
    k
}

/// Opens a snapshot header with the fleet's snapshot key, as the documented format says, and
/// reads the fleet part (only a state with no records, members or proposers: what the vectors
/// hold).
pub fn snapshot_header_open(
    file: &[u8],
    snapshot_key: &[u8; 32],
    fleet_id: &str,
) -> SpecResult<SnapshotView> {
    use chacha20poly1305::ChaCha20Poly1305;
    let mut r = Reader::encoded(file)?;
    let version = r.u8()?;
    let nonce: [u8; 32] = r.fixed()?;
    let sealed = r.bytes()?;
    r.end()?;
    if version != 2 {
        return Err("snapshot format");
    }
    let mut aad = b"bkv/snapshot/v2\0".to_vec();
    aad.extend_from_slice(
        &u16::try_from(fleet_id.len())
            .map_err(|_| "fleet id")?
            .to_be_bytes(),
    );
    aad.extend_from_slice(fleet_id.as_bytes());
    aad.extend_from_slice(&nonce);
    let key = snapshot_stream_key(snapshot_key, &nonce, b"header");
    let body = ChaCha20Poly1305::new((&key).into())
        .decrypt(
            (&[0u8; 12]).into(),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| "authentication")?;
    let mut b = Reader::encoded(&body)?;
    let position = b.bytes()?.to_vec();
    let root: [u8; 32] = b.fixed()?;
    let state = b.bytes()?;
    b.end()?;
    // State encoding 3: records, next_generation, members {admin_seq, nodes, last_record_leaf,
    // clock}, proposers, chain, entries.
    let mut s = match state.split_first() {
        Some((3, rest)) => Reader(rest),
        _ => return Err("state encoding"),
    };
    if s.varint()? != 0 {
        return Err("a snapshot header's state holds no records");
    }
    let next_generation = s.varint()?;
    let _admin_seq = s.varint()?;
    if s.varint()? != 0 || s.varint()? != 0 {
        return Err("members: not read by this reader");
    }
    let _clock = s.varint()?;
    if s.varint()? != 0 {
        return Err("proposers: not read by this reader");
    }
    let chain: [u8; 32] = s.fixed()?;
    let entries = s.varint()?;
    s.end()?;
    Ok(SnapshotView {
        position,
        root,
        next_generation,
        chain,
        entries,
    })
}

/// Opens bucket `bucket`'s frame of the stream with `nonce`.
pub fn snapshot_frame_open(
    file: &[u8],
    snapshot_key: &[u8; 32],
    nonce: &[u8; 32],
    bucket: u16,
) -> SpecResult<Vec<u8>> {
    use chacha20poly1305::ChaCha20Poly1305;
    let key = snapshot_stream_key(snapshot_key, nonce, b"frames");
    let mut n = [0u8; 12];
    n[10..].copy_from_slice(&bucket.to_be_bytes());
    let mut aad = b"bkv/snapshot-frame/v2\0".to_vec();
    aad.extend_from_slice(nonce);
    aad.extend_from_slice(&bucket.to_be_bytes());
    ChaCha20Poly1305::new((&key).into())
        .decrypt(
            (&n).into(),
            Payload {
                msg: file,
                aad: &aad,
            },
        )
        .map_err(|_| "authentication")
}

/// A message from the host agent to its core service as docs/formats.md "The core boundary"
/// describes it (the kinds the vectors hold).
#[derive(Debug, PartialEq, Eq)]
pub enum BoundaryMessage {
    /// `ToCore::Hello`: protocol version and role (0 core, 1 host).
    Hello {
        /// The boundary protocol version the agent speaks.
        version: u64,
        /// The connection's role: 0 core, 1 host.
        role: u8,
    },
    /// `ToCore::Call(Request::CounterAdvance { value })`.
    CounterAdvance(u64),
}

/// Reads one framed message from the agent: `u32 big-endian length || encode(ToCore)`, at most
/// 64 MiB; `ToCore` variant 0 is `Hello { version, role }`, variant 1 `Call(Request)`, whose
/// variant 33 is `CounterAdvance { value }`.
pub fn core_boundary_to_core(file: &[u8]) -> SpecResult<BoundaryMessage> {
    let (len, rest) = file.split_at_checked(4).ok_or("no length")?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| "no length")?) as usize;
    if len > 64 << 20 {
        return Err("message over 64 MiB");
    }
    if rest.len() != len {
        return Err("length does not match the message");
    }
    let mut r = Reader::encoded(rest)?;
    let m = match r.varint()? {
        0 => {
            let version = r.varint()?;
            let role = r.u8()?;
            if role > 1 {
                return Err("role");
            }
            BoundaryMessage::Hello { version, role }
        }
        1 => match r.varint()? {
            33 => BoundaryMessage::CounterAdvance(r.varint()?),
            _ => return Err("a request the vectors do not hold"),
        },
        _ => return Err("message kind"),
    };
    r.end()?;
    Ok(m)
}
