// One file on purpose: one plain function per decoder that sees outside bytes, shared by the
// fuzzer (fuzz/) and the corpus replay tests; the list is the attack surface, kept in one view.
//! Fuzz targets: every decoder bkv runs on bytes that come from the network
//! or from storage, as plain functions of one byte slice.
//!
//! A target must never panic, hang or allocate without bound, whatever the
//! input; where a cheap oracle exists it also checks one (a decoded value
//! re-encodes to itself, a backup that was not corrupted decrypts to what
//! was encrypted). `fuzz/` (outside the workspace, `cargo afl`) drives these
//! functions coverage-guided; this crate's tests replay every committed
//! corpus file (`fuzz/corpus/<target>/`) so CI catches regressions without
//! a fuzzer.
//!
//! Where a decoder sits behind a signature or an AEAD the fuzzer cannot
//! forge, the target builds valid signatures/ciphertexts with fixed test
//! keys around fuzzer-chosen contents, so the code *after* the check is
//! reached too (bundles, checkpoints, tokens, vault messages, backup chunks).

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

use bkv_hsm_core::{Core, FleetSecrets, FleetTrust, MemoryPlatform};
use bkv_transparency::bundle::{self, BundlePackage, ClientLogState, TrustAnchors};
use bkv_transparency::merkle;
use bkv_transparency::note::{self, Checkpoint};
use bkv_wire::vault::{SessionHello, VaultRequest, VaultResponse, MAX_VAULT_MESSAGE};
use bkv_wire::{NOISE_PATTERN, NOISE_PROLOGUE};
use ed25519_dalek::SigningKey;
use std::io::Read;
use std::sync::Arc;

/// A fuzz target: one input, no result; a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz/corpus/<name>` and of the
/// `fuzz/` binaries).
pub const TARGETS: &[(&str, Target)] = &[
    ("node_frame", node_frame),
    ("vault_session", vault_session),
    ("transparency", transparency),
    ("backup", backup),
    ("client_files", client_files),
    ("token", token),
    ("node_storage", node_storage),
];

/// Reads structured values off the front of a fuzz input; runs dry as zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, _| (acc << 8) | u64::from(self.u8()))
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    /// A length-prefixed (u16) piece.
    fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Decodes `T` and, when that succeeds, checks the canonical encoding
/// round-trips (postcard: one encoding per value).
fn roundtrip<T>(bytes: &[u8], limit: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = bkv_wire::decode::<T>(bytes, limit) {
        let again = bkv_wire::encode(&v);
        let back: T = bkv_wire::decode(&again, limit.max(again.len()))
            .unwrap_or_else(|e| panic!("re-encoded value does not decode: {e}"));
        assert_eq!(v, back, "decode/encode/decode changed the value");
    }
}

fn decode_only<T: serde::de::DeserializeOwned>(bytes: &[u8], limit: usize) {
    let _ = bkv_wire::decode::<T>(bytes, limit);
}

/// Frontend↔node and admin-plane frames, vault messages after Noise, the
/// session hello inside the handshake, and the framed stream reader.
pub fn node_frame(data: &[u8]) {
    use bkv_wire::admin::{AdminRequest, AdminResponse, SignedAdminCommand, MAX_ADMIN_FRAME};
    use bkv_wire::node::{NodeRequest, NodeResponse};
    let mut input = Input(data);
    let selector = input.u8();
    let body = input.rest();
    match selector % 8 {
        0 => roundtrip::<NodeRequest>(body, bkv_wire::MAX_NODE_FRAME),
        1 => roundtrip::<NodeResponse>(body, bkv_wire::MAX_NODE_FRAME),
        2 => roundtrip::<VaultRequest>(body, MAX_VAULT_MESSAGE),
        3 => roundtrip::<VaultResponse>(body, MAX_VAULT_MESSAGE),
        4 => roundtrip::<SessionHello>(body, 1024),
        5 => decode_only::<AdminRequest>(body, MAX_ADMIN_FRAME),
        6 => {
            decode_only::<AdminResponse>(body, MAX_ADMIN_FRAME);
            decode_only::<SignedAdminCommand>(body, MAX_ADMIN_FRAME);
        }
        _ => {
            // A stream of frames as a node or the frontend reads it.
            let mut r = body;
            for _ in 0..64 {
                match bkv_wire::node::read_frame::<NodeRequest>(&mut r) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

thread_local! {
    /// The test fleet's secrets, sealed under the test platform's key.
    static VAULT: Vec<u8> = {
        let p = MemoryPlatform::new([9; 32]);
        let secrets = FleetSecrets::generate(&p, FleetTrust::for_tests())
            .unwrap_or_else(|e| panic!("test fleet secrets: {e}"));
        secrets.seal(&p).unwrap_or_else(|e| panic!("seal: {e}"))
    };
}

/// A fresh core on the fixed test platform's sealing key (same keys every input, so the
/// fuzzer sees stable behaviour) and fresh counters: each input is a new node, not one put
/// back behind what an earlier input's core answered (`Core::serving`).
fn test_core() -> Core {
    VAULT.with(|sealed| {
        let p = Arc::new(MemoryPlatform::new([9; 32]));
        let secrets = FleetSecrets::unseal(&*p, sealed).unwrap_or_else(|e| panic!("unseal: {e}"));
        let identity =
            bkv_hsm_core::NodeIdentity::generate(&*p).unwrap_or_else(|e| panic!("identity: {e}"));
        let mut core = Core::new(p, secrets, &identity).unwrap_or_else(|e| panic!("core: {e}"));
        core.set_session_limits(8, 10);
        core
    })
}

/// Runs one message as a one-node host does (the test kit's loop): `None` when the core
/// refused it.
fn drive(
    core: &mut Core,
    sid: &bkv_wire::node::SessionId,
    user: &str,
    ct: &[u8],
) -> Option<Vec<u8>> {
    bkv_testkit::one_node::drive(core, sid, user, ct).ok()
}

/// The vault as the untrusted frontend (or anyone on the path) reaches it:
/// Noise NK handshakes with arbitrary bytes, then a real client encrypting
/// arbitrary vault messages (so OPAQUE message parsing and the guess rule
/// run on fuzzer input), mixed with raw ciphertext and resends.
pub fn vault_session(data: &[u8]) {
    let _ = run_vault_session(data);
}

/// [`vault_session`], returning the core for tests to inspect.
fn run_vault_session(data: &[u8]) -> Core {
    let mut input = Input(data);
    let mut core = test_core();
    let mode = input.u8();
    let user = match input.u8() % 3 {
        0 => "alice".to_string(),
        1 => "bob".to_string(),
        _ => String::from_utf8_lossy(input.piece()).into_owned(),
    };
    if mode.is_multiple_of(4) {
        // Raw first handshake message.
        let _ = core.open_session(&user, input.rest());
        return core;
    }
    let key = core.noise_public_key();
    let Ok(mut hs) = snow::Builder::new(NOISE_PATTERN.parse().unwrap_or_else(|_| unreachable!()))
        .remote_public_key(&key)
        .and_then(|b| b.prologue(NOISE_PROLOGUE))
        .and_then(|b| b.build_initiator())
    else {
        panic!("noise initiator");
    };
    // The hello is fuzzed too: a well-formed one for `user`, or raw bytes.
    let hello = if mode % 4 == 1 {
        input.piece().to_vec()
    } else {
        bkv_wire::encode(&SessionHello {
            version: 1,
            user_id: user.clone(),
        })
    };
    let mut m1 = vec![0u8; 70_000];
    let Ok(n) = hs.write_message(&hello, &mut m1) else {
        return core;
    };
    let Ok((sid, m2)) = core.open_session(&user, m1.get(..n).unwrap_or_default()) else {
        return core;
    };
    let mut buf = vec![0u8; 70_000];
    let Ok(mut t) = hs
        .read_message(&m2, &mut buf)
        .ok()
        .and_then(|_| hs.into_transport_mode().ok())
        .ok_or(())
    else {
        panic!("the core's handshake reply did not verify");
    };
    let mut last_ct: Option<Vec<u8>> = None;
    for _ in 0..32 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        match op % 8 {
            // Raw bytes as ciphertext: must fail cleanly.
            0 => {
                let _ = drive(&mut core, &sid, &user, input.piece());
            }
            // A resend of the last message: the core must answer it from its
            // reply cache (or refuse), never count it twice.
            1 => {
                if let Some(ct) = &last_ct {
                    let _ = drive(&mut core, &sid, &user, ct);
                }
            }
            // Another user's id on this session: refused.
            2 => {
                let _ = core.session_message(&sid, "mallory", input.piece());
            }
            3 => {
                let _ = core.session_logged_in(&sid, &user);
            }
            // An encrypted, fuzzer-chosen vault message.
            _ => {
                let plain = input.piece();
                let mut ct = vec![0u8; plain.len() + 64];
                let Ok(n) = t.write_message(plain, &mut ct) else {
                    continue;
                };
                ct.truncate(n);
                let reply = drive(&mut core, &sid, &user, &ct);
                last_ct = Some(ct);
                let Some(reply) = reply else {
                    // The session is gone or out of sync: the rest is raw.
                    continue;
                };
                let Ok(n) = t.read_message(&reply, &mut buf) else {
                    panic!("a reply from the core did not decrypt");
                };
                if bkv_wire::decode::<VaultResponse>(
                    buf.get(..n).unwrap_or_default(),
                    MAX_VAULT_MESSAGE,
                )
                .is_err()
                {
                    panic!("a reply from the core did not decode");
                }
            }
        }
    }
    // Whatever happened, every record's guess count stays within its limit.
    for u in ["alice", "bob", user.as_str()] {
        if let Some((cred, used, _)) = core.state().active(&bkv_wire::record_id(u)) {
            assert!(
                used <= cred.guess_limit,
                "guesses {used} beyond limit {}",
                cred.guess_limit
            );
        }
    }
    core
}

fn fixed_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

const NS: &str = "fuzz";
const AUDITOR: &str = "auditor.fuzz";
const ORIGIN: &str = "bkv.fuzz/fuzz";

fn anchors() -> TrustAnchors {
    TrustAnchors {
        namespace: NS.into(),
        origin: ORIGIN.into(),
        auditor_name: AUDITOR.into(),
        auditor_key: fixed_key(1).verifying_key(),
        operator_key: fixed_key(2).verifying_key(),
    }
}

/// Bundles, checkpoint notes, Merkle proofs, membership records and
/// deployment evidence: what a client, an auditor or a node accepts from
/// the log.
pub fn transparency(data: &[u8]) {
    let mut input = Input(data);
    let selector = input.u8();
    match selector % 8 {
        0 => {
            if let Ok(b) = bundle::Bundle::decode(input.rest()) {
                let again = b.encode();
                assert_eq!(bundle::Bundle::decode(&again).ok(), Some(b));
            }
        }
        1 => {
            // A delivered package, as JSON from the frontend.
            if let Ok(pkg) = serde_json::from_slice::<BundlePackage>(input.rest()) {
                let _ = bundle::verify(&anchors(), &ClientLogState::default(), &pkg, 1_000);
            }
        }
        2 => signed_bundle(&mut input),
        3 => {
            let text = String::from_utf8_lossy(input.rest());
            let _ = Checkpoint::parse(&text);
            let _ = note::open(&text, AUDITOR, &fixed_key(1).verifying_key());
            let _ = note::parse_verifier_key(&text);
        }
        4 => {
            // A note with a valid signature over fuzzer text: the body parser
            // runs behind the signature check.
            let text = String::from_utf8_lossy(input.rest());
            if let Ok(signed) = note::sign(&text, AUDITOR, &fixed_key(1)) {
                let opened = note::open(&signed, AUDITOR, &fixed_key(1).verifying_key());
                assert!(opened.is_ok(), "a note signed here did not open");
                let _ = Checkpoint::open(&signed, AUDITOR, &fixed_key(1).verifying_key());
            }
        }
        5 => {
            let leaf_index = input.u64() % 64;
            let size = input.u64() % 128;
            let first = input.u64() % 128;
            let leaf: [u8; 32] = merkle::leaf_hash(input.bytes(8));
            let root = merkle::leaf_hash(input.bytes(8));
            let proof: Vec<[u8; 32]> = input
                .rest()
                .chunks(8)
                .take(80)
                .map(merkle::leaf_hash)
                .collect();
            let _ = merkle::verify_inclusion(leaf_index, size, &leaf, &proof, &root);
            let _ = merkle::verify_consistency(first, size, &leaf, &root, &proof);
        }
        6 => {
            use bkv_transparency::membership;
            let rest = input.rest();
            let _ = membership::MembershipRecord::decode(rest);
            if let Ok(s) = bkv_wire::decode::<bkv_wire::admin::SignedStatement>(rest, 64 * 1024) {
                let _ = membership::verify_statement(&s);
            }
            if let Ok(p) = bkv_wire::decode::<bkv_wire::admin::LogProof>(rest, 64 * 1024) {
                let _ = membership::verify_logged_record(&anchors(), rest, &p);
            }
        }
        _ => {
            use bkv_transparency::evidence;
            if let Ok(e) = evidence::parse(input.rest()) {
                let _ = evidence::verify(&e, &[]);
            }
        }
    }
}

/// Fuzzer-chosen bundle bytes, correctly co-signed and logged in a
/// fuzzer-shaped tree, checked against a fuzzer-chosen earlier view: the
/// whole of `bundle::verify` runs, not only its first signature check.
fn signed_bundle(input: &mut Input<'_>) {
    let leaves_n = usize::from(input.u8() % 9) + 1;
    let index = usize::from(input.u8()) % leaves_n;
    let seen_size = usize::from(input.u8()) % (leaves_n + 1);
    let now = input.u64() % 4_000_000_000;
    let tamper = input.u8();
    let bundle_bytes = input.piece().to_vec();
    let Ok(b) = bundle::Bundle::decode(&bundle_bytes) else {
        return;
    };
    let d = bundle::digest(&bundle_bytes);
    let auditor_sig = bundle::sign_auditor(&fixed_key(1), &bundle_bytes, &b);
    let operator_sig = bundle::sign_operator(&fixed_key(2), &auditor_sig);
    let mut leaves: Vec<[u8; 32]> = (0..leaves_n)
        .map(|i| merkle::leaf_hash(&[i as u8]))
        .collect();
    if let Some(l) = leaves.get_mut(index) {
        *l = merkle::leaf_hash(&bundle::leaf_data(b.epoch, &d));
    }
    let root = merkle::root(&leaves);
    let cp = Checkpoint {
        origin: ORIGIN.into(),
        size: leaves_n as u64,
        root,
    };
    let Ok(checkpoint) = cp.sign(AUDITOR, &fixed_key(1)) else {
        return;
    };
    let seen = if seen_size == 0 {
        ClientLogState::default()
    } else {
        ClientLogState {
            checkpoint_size: seen_size as u64,
            checkpoint_root: merkle::root(leaves.get(..seen_size).unwrap_or_default()),
            accepted_epoch: input.u64() % 8,
            preferred_fleets: Vec::new(),
        }
    };
    let mut pkg = BundlePackage {
        bundle: bundle_bytes,
        auditor_signature: auditor_sig.to_vec(),
        operator_signature: operator_sig.to_vec(),
        leaf_index: index as u64,
        checkpoint,
        inclusion_proof: merkle::inclusion_proof(index, &leaves),
        consistency_from: seen_size as u64,
        consistency_proof: merkle::consistency_proof(seen_size, &leaves),
        previous_proofs: Vec::new(),
    };
    let kind = tamper % 8;
    let honest = kind == 0;
    match kind {
        1 => pkg.leaf_index = pkg.leaf_index.wrapping_add(1),
        2 => {
            if let Some(h) = pkg.inclusion_proof.first_mut() {
                h[0] ^= 1;
            } else {
                pkg.leaf_index = leaves_n as u64;
            }
        }
        3 => pkg.auditor_signature[0] ^= 1,
        4 => pkg.operator_signature[63] ^= 0x80,
        5 => pkg.checkpoint = pkg.checkpoint.replacen('\n', "\n\n", 1),
        6 => pkg.consistency_from = pkg.consistency_from.wrapping_add(1),
        _ => {}
    }
    let result = bundle::verify(&anchors(), &seen, &pkg, now);
    // Every tampering that matters must be refused (a client that saw no
    // checkpoint before is not asked for a consistency proof).
    let must_refuse = matches!(kind, 1..=5) || (kind == 6 && seen_size > 0);
    if must_refuse {
        assert!(result.is_err(), "tampered package accepted ({kind})");
    }
    if honest && b.namespace == NS && b.epoch >= seen.accepted_epoch {
        let in_window = now >= b.not_before && now < b.not_after;
        let has_keys =
            b.noise_key().is_some() && b.previous.iter().all(|p| p.noise_key().is_some());
        if in_window && has_keys {
            assert!(result.is_ok(), "honest package refused: {result:?}");
        }
    }
}

/// Backup files: the header, then chunks. Raw files are tried with a fixed
/// key; a structure-aware mode encrypts fuzzer plaintext and corrupts the
/// file at fuzzer-chosen places: an uncorrupted file must decrypt to the
/// plaintext, a corrupted one must fail (never decrypt to something else).
pub fn backup(data: &[u8]) {
    use bkv_client::BackupKey;
    use bkv_client::{
        Compression, Content, DecryptReader, EncryptWriter, Header, HEADER_LEN, MIN_CHUNK_SIZE,
    };
    let key = BackupKey::from_bytes([5; 32]);
    let mut input = Input(data);
    let mode = input.u8();
    match mode % 4 {
        0 => {
            let h = input.bytes(HEADER_LEN);
            if let Ok(h) = <[u8; HEADER_LEN]>::try_from(h) {
                if let Ok(header) = Header::decode(&h) {
                    assert_eq!(header.encode(), h, "header is not canonical");
                }
            }
        }
        1 => {
            if let Ok(mut r) = DecryptReader::new(input.rest(), &key) {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink);
            }
        }
        _ => {
            let compression = if input.u8().is_multiple_of(2) {
                Compression::None
            } else {
                Compression::Zstd
            };
            let chunk_size = MIN_CHUNK_SIZE << (input.u8() % 3);
            let flips: Vec<(u16, u8)> = (0..usize::from(input.u8() % 4))
                .map(|_| (input.u16(), input.u8()))
                .collect();
            let cut = input.u16();
            let plain = input.rest();
            let header = Header::new(compression, Content::File, chunk_size);
            let Ok(mut w) = EncryptWriter::new(Vec::new(), &key, &header) else {
                panic!("encrypt writer");
            };
            use std::io::Write;
            if w.write_all(plain).is_err() {
                panic!("encrypt write");
            }
            let Ok(mut file) = w.finish() else {
                panic!("encrypt finish");
            };
            let mut corrupted = false;
            for (at, x) in flips {
                let at = usize::from(at) % file.len().max(1);
                if x != 0 {
                    if let Some(b) = file.get_mut(at) {
                        *b ^= x;
                        corrupted = true;
                    }
                }
            }
            if mode % 4 == 3 {
                let keep = usize::from(cut) % (file.len() + 1);
                if keep < file.len() {
                    file.truncate(keep);
                    corrupted = true;
                }
            }
            let out = DecryptReader::new(file.as_slice(), &key).and_then(|mut r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v)?;
                Ok(v)
            });
            match out {
                Ok(v) => {
                    // A change that still decrypts (none should) must at
                    // least never yield different plaintext.
                    assert!(
                        v == plain,
                        "a backup decrypted to different plaintext (corrupted: {corrupted})"
                    );
                }
                Err(_) => assert!(corrupted, "an intact backup did not decrypt"),
            }
        }
    }
}

/// Files the client reads from its own disk or from backup storage: the
/// key manifest, the typed recovery key, the client config and the saved
/// log state.
pub fn client_files(data: &[u8]) {
    let mut input = Input(data);
    let selector = input.u8();
    let rest = input.rest();
    match selector % 4 {
        0 => {
            if let Ok((m, _tag)) = bkv_client::Manifest::decode_unverified(rest) {
                let key = bkv_client::BackupKey::from_bytes([5; 32]);
                let _ = m.verify(&[0; 32], &key);
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(k) = bkv_client::RecoveryKey::parse(&text) {
                let again = bkv_client::RecoveryKey::parse(&k.display());
                assert!(again.is_ok(), "a displayed recovery key did not parse");
            }
        }
        2 => {
            let text = String::from_utf8_lossy(rest);
            let _ = bkv_cli::ClientConfig::parse(&text, std::path::Path::new("/fuzz/bkv.toml"));
        }
        _ => {
            let _ = serde_json::from_slice::<ClientLogState>(rest);
        }
    }
}

/// Bearer tokens as the frontend verifies them: raw strings, and tokens
/// correctly signed over fuzzer-chosen header and claims JSON (so the
/// claims checks run behind the signature).
pub fn token(data: &[u8]) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use bkv_frontend::token;
    use ed25519_dalek::Signer;
    let key = fixed_key(3);
    let keys = token::KeySet::ed25519(&key.verifying_key());
    let policy = token::Policy {
        leeway_secs: 0,
        ..token::Policy::new("bkv")
    };
    let mut input = Input(data);
    let mode = input.u8();
    let now = input.u64() % 4_000_000_000;
    // What every accepted token must satisfy (`aud` and the signature are the crate's checks).
    let accepted = |c: &token::Verified| {
        assert!(now < c.exp, "an expired token was accepted");
        assert!(
            c.exp <= now + policy.max_lifetime_secs,
            "a token living too long was accepted"
        );
        assert!(
            c.nbf.is_none_or(|nbf| nbf <= now),
            "a future token was accepted"
        );
        assert!(bkv_wire::validate_user_id(&c.sub).is_ok());
    };
    if mode.is_multiple_of(2) {
        let t = String::from_utf8_lossy(input.rest());
        if let Ok(c) = token::verify(&keys, &policy, now, &t) {
            accepted(&c);
        }
        return;
    }
    let header = input.piece();
    let claims = input.rest();
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = key.sign(signing_input.as_bytes());
    let t = format!("{signing_input}.{}", B64.encode(sig.to_bytes()));
    if let Ok(c) = token::verify(&keys, &policy, now, &t) {
        accepted(&c);
    }
    // The same claims under another key must never verify.
    let other = token::KeySet::ed25519(&fixed_key(4).verifying_key());
    assert!(token::verify(&other, &policy, now, &t).is_err());
}

thread_local! {
    static PEER: (bkv_hsm_core::SharedPlatform, bkv_hsm_core::NodeIdentity) = {
        let p = MemoryPlatform::shared([8; 32]);
        let id = bkv_hsm_core::NodeIdentity::generate(&*p)
            .unwrap_or_else(|e| panic!("test identity: {e}"));
        (p, id)
    };
}

/// What a node reads back from its own storage after unsealing (the
/// operator controls the disk, but not the sealing key: these decoders run
/// on bytes a bug or a rolled-back disk could shape) and what a peer sends
/// over an authenticated link.
pub fn node_storage(data: &[u8]) {
    use bkv_hsm_core::state::{Mutation, State};
    use bkv_hsm_node::replication::TypeConfig;
    use bkv_hsm_node::replication::{PeerRequest, PeerResponse, MAX_PEER_MESSAGE};
    let mut input = Input(data);
    let selector = input.u8();
    let rest = input.rest();
    match selector % 12 {
        0 => {
            let _ = State::decode(rest, 1 << 20);
        }
        // A log entry as a core opens it (issue 28), with the fleet's key and with another.
        10 => {
            if let Ok(e) = bkv_hsm_core::LogEntry::decode(rest) {
                for k in [[5u8; 32], [6; 32]] {
                    let _ = bkv_hsm_core::EntryKey::from_bytes(k, "fleet").open(&e);
                }
            }
        }
        // A snapshot stream's header as a receiving core opens it.
        11 => {
            let _ =
                bkv_hsm_core::snapshot::SnapshotKey::from_bytes([5; 32], "fleet").open_header(rest);
        }
        // A bucket's plain encoding (2, or 1 of an earlier release), as a snapshot carries it.
        7 => {
            let _ = bkv_hsm_core::commitment::Bucket::decode(rest);
        }
        // A move ticket as a new fleet's core checks it.
        8 => {
            if let Ok(t) = bkv_wire::decode::<bkv_wire::vault::SignedMoveTicket>(rest, 4096) {
                let trust = bkv_hsm_core::FleetTrust {
                    predecessors: vec![bkv_hsm_core::Predecessor {
                        fleet_id: "fleet-old".into(),
                        move_key: [9; 32],
                    }],
                    ..FleetTrust::for_tests()
                };
                for step in [
                    bkv_wire::vault::MoveStep::Intent,
                    bkv_wire::vault::MoveStep::Moved,
                ] {
                    let _ =
                        bkv_hsm_core::verify_move_ticket(&trust, "fleet-new", &[7; 32], step, &t);
                }
            }
        }
        // A fleet statement of either version.
        9 => {
            let _ = bkv_wire::admin::FleetStatement::decode(rest, 1 << 16);
        }
        1 => decode_only::<Mutation>(rest, 1 << 20),
        2 => decode_only::<openraft::Entry<TypeConfig>>(rest, 1 << 20),
        3 => decode_only::<PeerRequest>(rest, MAX_PEER_MESSAGE),
        4 => decode_only::<PeerResponse>(rest, MAX_PEER_MESSAGE),
        // The peer link's Noise IK handshake as a responder sees it, and a
        // fleet-secrets transfer envelope as a joining node opens it.
        5 => PEER.with(|(p, id)| {
            if let Ok(mut hs) = id.respond(p) {
                let mut out = vec![0u8; 70_000];
                let _ = hs.read_message(rest, &mut out);
            }
        }),
        _ => PEER.with(|(_, id)| {
            let _ = id.open_secrets(rest);
        }),
    }
    // A decoded state must be usable: applying a decoded mutation to it
    // never panics.
    if selector.is_multiple_of(7) {
        if let Ok(mut s) = State::decode(rest, 1 << 20) {
            let m = bkv_wire::decode::<Mutation>(
                rest.get(rest.len() / 2..).unwrap_or_default(),
                1 << 20,
            );
            if let Ok(m) = m {
                let _ = s.apply(&m);
            }
        }
    }
}

/// Seed inputs per target: valid messages and files, so the fuzzer starts
/// from the formats' structure rather than from nothing. `scripts/fuzz.sh`
/// writes them into the corpora; the tests run them too.
pub mod seeds;
