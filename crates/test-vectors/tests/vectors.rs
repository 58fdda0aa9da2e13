//! Runs every vector in `tests/vectors/` through the bkv library and through the independent
//! reader of the documented format ([`bkv_test_vectors::spec`]); both must reach the verdict
//! the vector's index records, and valid vectors must decode to the recorded values.

use bkv_client::BackupKey;
use bkv_client::{format_error, DecryptReader};
use bkv_client::{Manifest, RecoveryKey};
use bkv_test_vectors::{backup_plaintext, spec, vectors_dir, Case, Index, FORMATS};
use bkv_transparency::bundle::{self, BundlePackage, ClientLogState, TrustAnchors};
use bkv_transparency::note::Checkpoint;
use bkv_wire::admin::SignedStatement;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Read;

fn load(format: &str) -> Index {
    let path = vectors_dir().join(format).join("index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let index: Index =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    assert_eq!(index.format, format);
    assert!(!index.cases.is_empty(), "{format}: no vectors");
    assert!(
        index.cases.iter().any(|c| c.valid) && index.cases.iter().any(|c| !c.valid),
        "{format}: needs both valid and rejected vectors"
    );
    index
}

fn bytes(index: &Index, case: &Case) -> Vec<u8> {
    let path = vectors_dir().join(&index.format).join(&case.file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn input<'a>(index: &'a Index, case: &'a Case, name: &str) -> &'a str {
    index
        .input(case, name)
        .unwrap_or_else(|| panic!("{}: input {name} missing", case.file))
}

fn hex32(index: &Index, case: &Case, name: &str) -> [u8; 32] {
    hex::decode(input(index, case, name))
        .ok()
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(|| panic!("{}: {name} is not 32 hex bytes", case.file))
}

fn expect<'a>(case: &'a Case, name: &str) -> &'a str {
    case.expect
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("{}: expected value {name} missing", case.file))
}

/// `Debug` of the library's error matches the recorded one: equal, or the recorded variant name
/// followed by its fields.
fn error_matches(found: &str, want: &str) -> bool {
    found == want
        || found.starts_with(&format!("{want}("))
        || found.starts_with(&format!("{want} {{"))
}

/// Checks the verdicts of one case; returns the library's value for a valid one.
fn verdict<T, E: Debug, S>(
    case: &Case,
    library: Result<T, E>,
    spec: Result<S, &str>,
) -> Option<(T, S)> {
    assert_eq!(
        spec.is_ok(),
        case.spec_valid,
        "{}: the documented format says {:?}, the index says spec_valid = {}",
        case.file,
        spec.as_ref().err(),
        case.spec_valid
    );
    match (library, case.valid) {
        (Ok(v), true) => spec.ok().map(|s| (v, s)),
        (Err(e), true) => panic!("{}: valid vector rejected by the library: {e:?}", case.file),
        (Ok(_), false) => panic!("{} ({}): the library accepted it", case.file, case.comment),
        (Err(e), false) => {
            let want = case.error.as_deref().unwrap_or_default();
            let found = format!("{e:?}");
            assert!(
                error_matches(&found, want),
                "{}: the library's error is {found}, the index says {want}",
                case.file
            );
            None
        }
    }
}

/// Every file in a format's directory is a vector and every vector's file exists.
#[test]
fn every_file_is_indexed_and_every_format_has_vectors() {
    let dirs: BTreeSet<String> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let formats: BTreeSet<String> = FORMATS.iter().map(|f| f.to_string()).collect();
    assert_eq!(dirs, formats, "vector directories and FORMATS differ");
    for format in FORMATS {
        let index = load(format);
        let listed: BTreeSet<&str> = index.cases.iter().map(|c| c.file.as_str()).collect();
        let present: BTreeSet<String> = std::fs::read_dir(vectors_dir().join(format))
            .expect("format directory")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "index.json")
            .collect();
        let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
        assert_eq!(listed, present, "{format}: files and index differ");
        let doc_file = index.doc.split(['#', ' ']).next().unwrap_or_default();
        assert!(
            vectors_dir().join("../..").join(doc_file).is_file(),
            "{format}: documented in {doc_file}, which does not exist"
        );
    }
}

#[test]
fn backup_file() {
    let index = load("backup-file");
    for case in &index.cases {
        let k = hex32(&index, case, "key");
        let file = bytes(&index, case);
        let library = (|| {
            let mut r = DecryptReader::new(&file[..], &BackupKey::from_bytes(k))?;
            let mut out = Vec::new();
            r.read_to_end(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })()
        .map_err(|e| {
            Raw(match format_error(&e) {
                Some(f) => format!("{f:?}"),
                None => e.to_string(),
            })
        });
        if let Some((plain, spec_plain)) = verdict(case, library, spec::backup_decrypt(&k, &file)) {
            let n: usize = expect(case, "plaintext_len").parse().expect("length");
            assert_eq!(plain, backup_plaintext(n), "{}", case.file);
            assert_eq!(spec_plain, plain, "{}", case.file);
            assert_eq!(
                hex::encode(Sha256::digest(&plain)),
                expect(case, "plaintext_sha256")
            );
        }
    }
}

/// An error already in `Debug` form.
struct Raw(String);
impl Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[test]
fn recovery_key() {
    let index = load("recovery-key");
    for case in &index.cases {
        let text = String::from_utf8(bytes(&index, case)).expect("UTF-8");
        if let Some((rk, spec_key)) = verdict(
            case,
            RecoveryKey::parse(&text),
            spec::recovery_key_decode(&text),
        ) {
            let key = hex32(&index, case, "key");
            let slot = input(&index, case, "slot_id");
            assert_eq!(spec_key, key, "{}", case.file);
            assert_eq!(rk.display(), expect(case, "display"), "{}", case.file);
            assert_eq!(spec::recovery_key_encode(&key), expect(case, "display"));
            let public = hex::encode(rk.slot_secret(slot).public_key());
            assert_eq!(public, expect(case, "slot_public_key"), "{}", case.file);
            assert_eq!(hex::encode(spec::recovery_slot_public(&key, slot)), public);
        }
    }
}

#[test]
fn protector_manifest() {
    let index = load("protector-manifest");
    for case in &index.cases {
        let k = hex32(&index, case, "key");
        let rk_text = input(&index, case, "recovery_key");
        let rk = RecoveryKey::parse(rk_text).expect("recovery key");
        let rk_bytes = spec::recovery_key_decode(rk_text).expect("recovery key");
        let file = bytes(&index, case);
        let key = BackupKey::from_bytes(k);
        let library = Manifest::decode_unverified(&file).and_then(|(m, tag)| {
            m.verify(&tag, &key)?;
            let opened = m.open_with_recovery_key(&rk)?;
            Ok((m, opened))
        });
        if let Some(((m, opened), view)) = verdict(
            case,
            library,
            spec::manifest_open(&file, &k, Some(&rk_bytes)),
        ) {
            assert_eq!(
                opened.expose(),
                &k,
                "{}: the recovery key opens K",
                case.file
            );
            assert_eq!(view.opened_key, Some(k));
            assert_eq!(m.user_id, expect(case, "user_id"));
            assert_eq!(view.user_id, m.user_id);
            assert_eq!(m.generation.to_string(), expect(case, "generation"));
            assert_eq!(view.generation, m.generation);
            assert_eq!(view.key_id, m.key_id);
            let ids: Vec<&str> = m.slots.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(ids.join(","), expect(case, "slots"));
            assert_eq!(view.slot_ids, ids);
        }
    }
}

#[test]
fn sealed_value() {
    let index = load("sealed-value");
    for case in &index.cases {
        let key = hex32(&index, case, "sealing_key");
        let slot = input(&index, case, "slot");
        let label = hex::decode(input(&index, case, "label")).expect("label hex");
        let file = bytes(&index, case);
        let library = bkv_hsm_core::seal::unseal_xchacha(&key, slot, &label, &file);
        if let Some((plain, spec_plain)) =
            verdict(case, library, spec::unseal_v1(&key, slot, &label, &file))
        {
            assert_eq!(
                hex::encode(&*plain),
                expect(case, "plaintext"),
                "{}",
                case.file
            );
            assert_eq!(spec_plain, *plain);
        }
    }
}

#[test]
fn platform_statement() {
    let index = load("platform-statement");
    for case in &index.cases {
        let file = bytes(&index, case);
        let library =
            bkv_wire::decode::<SignedStatement>(&file, bkv_transparency::membership::MAX_RECORD)
                .map_err(|e| Raw(format!("{e:?}")))
                .and_then(|s| {
                    bkv_transparency::membership::verify_statement(&s)
                        .map_err(|e| Raw(format!("{e:?}")))
                });
        if let Some((s, view)) = verdict(case, library, spec::statement_verify(&file)) {
            assert_eq!(hex::encode(s.identity_key), expect(case, "identity_key"));
            assert_eq!(hex::encode(s.signing_key), expect(case, "signing_key"));
            assert_eq!(format!("{:?}", s.platform.kind), expect(case, "kind"));
            assert_eq!(s.platform.token, expect(case, "token"));
            assert_eq!(hex::encode(s.binary_sha256), expect(case, "binary_sha256"));
            assert_eq!(
                (view.identity_key, view.signing_key, view.binary_sha256),
                (s.identity_key, s.signing_key, s.binary_sha256)
            );
            assert_eq!(view.token, s.platform.token);
            let kinds = ["Software", "Pkcs11", "Memory"];
            assert_eq!(
                kinds.get(view.kind as usize).copied(),
                Some(expect(case, "kind"))
            );
        }
    }
}

fn verifying_key(index: &Index, case: &Case, name: &str) -> VerifyingKey {
    VerifyingKey::from_bytes(&hex32(index, case, name)).expect("Ed25519 public key")
}

#[test]
fn bundle() {
    let index = load("bundle");
    for case in &index.cases {
        let file = bytes(&index, case);
        let anchors = TrustAnchors {
            namespace: input(&index, case, "namespace").to_owned(),
            origin: input(&index, case, "origin").to_owned(),
            auditor_name: input(&index, case, "auditor_name").to_owned(),
            auditor_key: verifying_key(&index, case, "auditor_key"),
            operator_key: verifying_key(&index, case, "operator_key"),
        };
        let seen = ClientLogState {
            checkpoint_size: input(&index, case, "seen_size").parse().expect("size"),
            checkpoint_root: hex32(&index, case, "seen_root"),
            accepted_epoch: input(&index, case, "seen_epoch").parse().expect("epoch"),
            // `id=noise key hex`, comma-separated: fleets the client accepted as preferred.
            preferred_fleets: input(&index, case, "seen_fleets")
                .split(',')
                .filter(|f| !f.is_empty())
                .map(|f| {
                    let (id, key) = f.split_once('=').expect("id=key");
                    bundle::KnownFleet {
                        fleet_id: id.to_owned(),
                        noise_key: hex::decode(key)
                            .ok()
                            .and_then(|k| k.try_into().ok())
                            .expect("32 hex bytes"),
                    }
                })
                .collect(),
        };
        let now: u64 = input(&index, case, "now").parse().expect("now");
        let library = serde_json::from_slice::<BundlePackage>(&file)
            .map_err(|e| Raw(format!("Json({e})")))
            .and_then(|pkg| {
                bundle::verify(&anchors, &seen, &pkg, now).map_err(|e| Raw(format!("{e:?}")))
            });
        let spec_anchors = spec::Anchors {
            namespace: &anchors.namespace,
            origin: &anchors.origin,
            auditor_name: &anchors.auditor_name,
            auditor_key: &hex32(&index, case, "auditor_key"),
            operator_key: &hex32(&index, case, "operator_key"),
        };
        if let Some(((b, state), view)) = verdict(
            case,
            library,
            spec::bundle_verify(&file, &spec_anchors, now),
        ) {
            assert_eq!(b.epoch.to_string(), expect(case, "epoch"));
            assert_eq!(b.fleet_id, expect(case, "fleet_id"));
            assert_eq!(
                b.noise_key().map(hex::encode).as_deref(),
                Some(expect(case, "noise_key"))
            );
            let previous: Vec<&str> = b.previous.iter().map(|p| p.fleet_id.as_str()).collect();
            assert_eq!(previous.join(","), expect(case, "previous_fleets"));
            assert_eq!(
                (view.epoch, &view.fleet_id, view.noise_key),
                (b.epoch, &b.fleet_id, b.noise_key().unwrap_or_default())
            );
            assert_eq!(view.namespace, b.namespace);
            assert_eq!(view.previous_fleets, previous);
            assert_eq!(
                state.accepted_epoch, b.epoch,
                "the client remembers the epoch it accepted"
            );
        }
    }
}

#[test]
fn checkpoint() {
    let index = load("checkpoint");
    for case in &index.cases {
        let name = input(&index, case, "name");
        let key = hex32(&index, case, "key");
        let note = String::from_utf8(bytes(&index, case)).expect("UTF-8");
        let library = Checkpoint::open(&note, name, &verifying_key(&index, case, "key"));
        if let Some((cp, view)) = verdict(case, library, spec::checkpoint_open(&note, name, &key)) {
            assert_eq!(cp.origin, expect(case, "origin"));
            assert_eq!(cp.size.to_string(), expect(case, "size"));
            assert_eq!(hex::encode(cp.root), expect(case, "root"));
            assert_eq!(
                (view.origin, view.size, view.root),
                (cp.origin, cp.size, cp.root)
            );
        }
    }
}

#[test]
fn move_ticket() {
    use bkv_wire::vault::{MoveStep, SignedMoveTicket};
    let index = load("move-ticket");
    for case in &index.cases {
        let file = bytes(&index, case);
        let step = match input(&index, case, "step") {
            "Intent" => MoveStep::Intent,
            _ => MoveStep::Moved,
        };
        let trust = bkv_hsm_core::FleetTrust {
            namespace: "vectors".into(),
            auditor_name: "a".into(),
            auditor_key: [0; 32],
            operator_key: [0; 32],
            max_guess_limit: 10,
            predecessors: vec![bkv_hsm_core::Predecessor {
                fleet_id: input(&index, case, "from_fleet").to_owned(),
                move_key: hex32(&index, case, "move_key"),
            }],
        };
        let record_id = hex32(&index, case, "record_id");
        let fleet_id = input(&index, case, "fleet_id");
        let library =
            bkv_wire::decode::<SignedMoveTicket>(&file, bkv_wire::vault::MAX_MOVE_TICKET * 2)
                .map_err(|e| Raw(format!("{e:?}")))
                .and_then(|t| {
                    bkv_hsm_core::verify_move_ticket(&trust, fleet_id, &record_id, step, &t)
                        .map_err(|e| Raw(format!("{e:?}")))
                });
        let anchors = spec::MoveAnchors {
            move_key: &hex32(&index, case, "move_key"),
            from_fleet: input(&index, case, "from_fleet"),
            fleet_id,
            record_id: &record_id,
            step: u64::from(step == MoveStep::Moved),
        };
        if let Some((t, view)) = verdict(case, library, spec::move_ticket_verify(&file, &anchors)) {
            assert_eq!(format!("{:?}", t.step), expect(case, "step"));
            assert_eq!(
                hex::encode(t.pending_digest),
                expect(case, "pending_digest")
            );
            assert_eq!(t.attempts.to_string(), expect(case, "attempts"));
            assert_eq!(
                (view.pending_digest, view.attempts),
                (t.pending_digest, u64::from(t.attempts))
            );
            // The digest is the documented one of the registration's fields, both ways.
            let field = |n: &str| hex::decode(input(&index, case, n)).expect("hex");
            let limit: u32 = input(&index, case, "guess_limit").parse().expect("limit");
            let confirm = hex32(&index, case, "confirm_hash");
            let d = bkv_wire::vault::pending_digest(
                &field("upload"),
                &field("wrapped_key"),
                limit,
                &confirm,
            );
            assert_eq!(d, t.pending_digest);
            assert_eq!(
                spec::pending_digest(
                    &field("upload"),
                    &field("wrapped_key"),
                    u64::from(limit),
                    &confirm
                ),
                d
            );
        }
    }
}

#[test]
fn log_entry() {
    use bkv_hsm_core::state::Mutation;
    let index = load("log-entry");
    for case in &index.cases {
        let file = bytes(&index, case);
        let key = hex32(&index, case, "entry_key");
        let fleet = input(&index, case, "fleet_id");
        let library = bkv_hsm_core::LogEntry::decode(&file)
            .map_err(|e| Raw(format!("{e:?}")))
            .and_then(|e| {
                bkv_hsm_core::EntryKey::from_bytes(key, fleet)
                    .open(&e)
                    .map(|m| (e.seq, m))
                    .map_err(|r| Raw(format!("{r:?}")))
            });
        if let Some(((seq, m), view)) =
            verdict(case, library, spec::log_entry_open(&file, &key, fleet))
        {
            let (kind, record_id, generation) = match m {
                Mutation::CountGuess {
                    record_id,
                    generation,
                } => ("CountGuess", record_id, generation),
                Mutation::ResetGuesses {
                    record_id,
                    generation,
                } => ("ResetGuesses", record_id, generation),
                other => panic!("{}: unexpected {other:?}", case.file),
            };
            assert_eq!(kind, expect(case, "mutation"));
            assert_eq!(seq.to_string(), expect(case, "seq"));
            assert_eq!(hex::encode(record_id), expect(case, "record_id"));
            assert_eq!(generation.to_string(), expect(case, "generation"));
            assert_eq!(
                (view.seq, view.record_id, view.generation),
                (seq, record_id, generation)
            );
            assert_eq!(view.mutation, if kind == "CountGuess" { 2 } else { 3 });
        }
    }
}

#[test]
fn snapshot() {
    let index = load("snapshot");
    for case in &index.cases {
        let file = bytes(&index, case);
        let key = hex32(&index, case, "snapshot_key");
        let fleet = input(&index, case, "fleet_id");
        let keys = bkv_hsm_core::snapshot::SnapshotKey::from_bytes(key, fleet);
        if case.file.ends_with(".header") {
            let library = keys.open_header(&file).map_err(|e| Raw(format!("{e:?}")));
            if let Some((h, view)) = verdict(
                case,
                library,
                spec::snapshot_header_open(&file, &key, fleet),
            ) {
                assert_eq!(hex::encode(&h.position), expect(case, "position"));
                assert_eq!(hex::encode(h.root), expect(case, "root"));
                assert_eq!(
                    h.state.next_generation.to_string(),
                    expect(case, "next_generation")
                );
                assert_eq!(hex::encode(h.state.chain), expect(case, "chain"));
                assert_eq!(h.state.entries.to_string(), expect(case, "entries"));
                assert_eq!(
                    (
                        view.position,
                        view.root,
                        view.next_generation,
                        view.chain,
                        view.entries
                    ),
                    (
                        h.position,
                        h.root,
                        h.state.next_generation,
                        h.state.chain,
                        h.state.entries
                    )
                );
            }
        } else {
            let nonce = hex32(&index, case, "stream_nonce");
            let bucket: u16 = input(&index, case, "bucket").parse().expect("bucket");
            let library = keys
                .frames(nonce)
                .open(bucket, &file)
                .map(|p| p.to_vec())
                .map_err(|e| Raw(format!("{e:?}")));
            if let Some((plain, view)) = verdict(
                case,
                library,
                spec::snapshot_frame_open(&file, &key, &nonce, bucket),
            ) {
                assert_eq!(hex::encode(&plain), expect(case, "plain"));
                assert_eq!(view, plain);
            }
        }
    }
}

#[test]
fn core_boundary() {
    use bkv_core_service::protocol::{read_message, Request, Role, ToCore};
    let index = load("core-boundary");
    for case in &index.cases {
        let file = bytes(&index, case);
        let library = read_message::<ToCore>(&mut file.as_slice());
        let library = library.map_err(|e| Raw(format!("{e:?}")));
        if let Some((m, view)) = verdict(case, library, spec::core_boundary_to_core(&file)) {
            match (m, view) {
                (
                    ToCore::Hello { version, role },
                    spec::BoundaryMessage::Hello {
                        version: v,
                        role: r,
                    },
                ) => {
                    assert_eq!(expect(case, "kind"), "hello");
                    assert_eq!(version.to_string(), expect(case, "version"));
                    assert_eq!(u64::from(version), v);
                    let role = match role {
                        Role::Core => 0,
                        Role::Host => 1,
                    };
                    assert_eq!(role.to_string(), expect(case, "role"));
                    assert_eq!(role, r);
                }
                (
                    ToCore::Call(Request::CounterAdvance { value }),
                    spec::BoundaryMessage::CounterAdvance(v),
                ) => {
                    assert_eq!(expect(case, "kind"), "counter_advance");
                    assert_eq!(value.to_string(), expect(case, "value"));
                    assert_eq!(value, v);
                }
                (m, v) => panic!("{}: library {m:?}, spec {v:?}", case.file),
            }
        }
    }
}
