//! The PKCS#11 platform: the sealing key (AES-256), the platform signing key
//! (Ed25519) and the monotonic counter live in a token; sealing, signing and
//! randomness happen inside it. Tested against SoftHSM2.
//!
//! Objects (all `CKA_TOKEN`, found by label):
//! - `bkv-sealing`: AES-256 secret key, `CKA_SENSITIVE=true`,
//!   `CKA_EXTRACTABLE=false`, encrypt/decrypt only (`CKM_AES_GCM`).
//! - `bkv-signing`: Ed25519 key pair (`CKM_EC_EDWARDS_KEY_PAIR_GEN`), the
//!   private half sensitive and never extractable, sign only (`CKM_EDDSA`).
//! - `bkv-counter`: private data objects holding the monotonic counter
//!   (8 bytes, big-endian). Tokens such as SoftHSM2 do not let a data
//!   object's value change, so advancing creates an object with the new
//!   value and then destroys the older ones; the counter is the largest
//!   value present (a crash in between leaves two, never none).
//! - `bkv-core-counter`: the same kind of counter, the core's (`Counter::Core`), made with
//!   the keys (a token of the release before has none: it serves a new fleet's node only after
//!   being set up anew, docs/operations.md).
//! - `bkv-seal-iv-epoch`: the same kind of counter; each process that seals
//!   reserves a fresh epoch from it (see the sealed format below).
//!
//! Sealed format (version 2): `0x02 || iv (12) || AES-256-GCM(plaintext) ||
//! tag (16)` with the associated data of every platform
//! ([`bkv_hsm_core::platform::seal_aad`]). The IV is `epoch (8, BE) ||
//! sequence (4, BE)`: deterministic and never repeated under one key
//! (NIST SP 800-38D 8.2.1), because every process reserves a new epoch in
//! the token before its first seal and after 2^32 seals. One process per
//! token: the node locks its data directory.

use crate::PlatformOpenError;
use bkv_hsm_core::platform::seal_aad;
use bkv_hsm_core::{Counter, Platform, PlatformError, SealSlot};
use bkv_wire::admin::{PlatformDescription, PlatformKind};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The token object label of the sealing key (AES-256).
pub const SEALING_LABEL: &str = "bkv-sealing";
/// The token object label of the signing key pair (Ed25519).
pub const SIGNING_LABEL: &str = "bkv-signing";
/// The token object label of the host's (raft) counter.
pub const COUNTER_LABEL: &str = "bkv-counter";
/// The token object label of the core's counter.
pub const CORE_COUNTER_LABEL: &str = "bkv-core-counter";
/// The token object label of the sealing IV epoch.
pub const IV_EPOCH_LABEL: &str = "bkv-seal-iv-epoch";
const SEAL_VERSION: u8 = 2;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// DER of the Ed25519 curve OID 1.3.101.112 (`CKA_EC_PARAMS`).
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// Where a node's token is.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so` for SoftHSM2).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// File holding the user PIN (never on the command line).
    pub pin_file: PathBuf,
}

struct Inner {
    session: Session,
    /// The reserved IV epoch and the next sequence number under it.
    iv: Option<(u64, u32)>,
}

/// A monotonic counter kept in token data objects (see the module docs).
struct TokenCounter {
    label: &'static str,
}

impl TokenCounter {
    fn objects(&self, session: &Session) -> Result<Vec<(ObjectHandle, u64)>, CkError> {
        let handles = session.find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(self.label.as_bytes().to_vec()),
        ])?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push((h, read_u64(session, h)?));
        }
        Ok(out)
    }

    fn exists(&self, session: &Session) -> Result<bool, CkError> {
        Ok(!self.objects(session)?.is_empty())
    }

    fn read(&self, session: &Session) -> Result<u64, CkError> {
        Ok(self
            .objects(session)?
            .iter()
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0))
    }

    /// Raises the counter to `v`: the new object first, then the old ones go.
    fn advance_to(&self, session: &Session, v: u64) -> Result<(), CkError> {
        let old = self.objects(session)?;
        if old.iter().any(|(_, x)| *x >= v) {
            return Ok(());
        }
        create_counter_object(session, self.label, v)?;
        for (h, _) in old {
            session.destroy_object(h)?;
        }
        Ok(())
    }
}

const COUNTER: TokenCounter = TokenCounter {
    label: COUNTER_LABEL,
};
const CORE_COUNTER: TokenCounter = TokenCounter {
    label: CORE_COUNTER_LABEL,
};
const IV_EPOCH: TokenCounter = TokenCounter {
    label: IV_EPOCH_LABEL,
};

fn token_counter(c: Counter) -> &'static TokenCounter {
    match c {
        Counter::Raft => &COUNTER,
        Counter::Core(_) => &CORE_COUNTER,
    }
}

/// A node's platform in a PKCS#11 token: keys that never leave it, counters as token objects.
pub struct Pkcs11Platform {
    inner: Mutex<Inner>,
    sealing: ObjectHandle,
    signing: ObjectHandle,
    signing_public: [u8; 32],
    description: PlatformDescription,
    // Last: the module is finalized only after the session closed.
    _ctx: Pkcs11,
}

fn token(e: CkError) -> PlatformError {
    PlatformError::KeyStore(e.to_string())
}

fn open_err(what: &str) -> impl FnOnce(CkError) -> PlatformOpenError + '_ {
    move |e| PlatformOpenError::Token(format!("{what}: {e}"))
}

fn find(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, CkError> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    Ok(found.first().copied())
}

fn read_pin(path: &Path) -> Result<AuthPin, PlatformOpenError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| PlatformOpenError::Io {
                path: path.to_owned(),
                source,
            })?,
        );
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(PlatformOpenError::Corrupt(format!(
            "PIN file {} is empty",
            path.display()
        )));
    }
    Ok(AuthPin::from(pin.to_owned()))
}

impl Pkcs11Platform {
    /// Opens the token and its keys. With `create`, missing keys and
    /// counters are generated inside the token; without, a missing key is an
    /// error (the node's sealed data cannot be opened without it).
    pub fn open(cfg: &Pkcs11Config, create: bool) -> Result<Self, PlatformOpenError> {
        let pin = read_pin(&cfg.pin_file)?;
        let ctx = Pkcs11::new(&cfg.module).map_err(|e| {
            PlatformOpenError::Token(format!("load PKCS#11 module {}: {e}", cfg.module.display()))
        })?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(open_err("initialize the PKCS#11 module"))?;
        let mut slot = None;
        for s in ctx
            .get_slots_with_token()
            .map_err(open_err("list token slots"))?
        {
            let info = ctx.get_token_info(s).map_err(open_err("read token info"))?;
            if info.label().trim_end() == cfg.token_label {
                slot = Some((s, info));
                break;
            }
        }
        let Some((slot, info)) = slot else {
            return Err(PlatformOpenError::Missing(format!(
                "PKCS#11 token {:?} was not found in {}: without it this node's keys \
                 and sealed data cannot be opened",
                cfg.token_label,
                cfg.module.display()
            )));
        };
        let description = PlatformDescription {
            kind: PlatformKind::Pkcs11,
            token: format!(
                "{} {} serial {} label {}",
                info.manufacturer_id().trim_end(),
                info.model().trim_end(),
                info.serial_number().trim_end(),
                info.label().trim_end()
            ),
        };
        let session = ctx
            .open_rw_session(slot)
            .map_err(open_err("open a token session"))?;
        session
            .login(UserType::User, Some(&pin))
            .map_err(|e| match e {
                CkError::Pkcs11(RvError::PinIncorrect, _) => PlatformOpenError::Token(format!(
                    "the PIN in {} is wrong for token {:?}",
                    cfg.pin_file.display(),
                    cfg.token_label
                )),
                other => PlatformOpenError::Token(format!("log in to the token: {other}")),
            })?;
        let missing = |what: &str| {
            PlatformOpenError::Missing(format!(
                "token {:?} holds no {what}: the node's sealed data cannot be opened \
                 (was the token replaced or its objects deleted?)",
                cfg.token_label
            ))
        };
        let sealing = match find(&session, ObjectClass::SECRET_KEY, SEALING_LABEL)
            .map_err(open_err("find the sealing key"))?
        {
            Some(h) => h,
            None if create => generate_sealing_key(&session)?,
            None => return Err(missing("sealing key")),
        };
        let (signing, public) = match (
            find(&session, ObjectClass::PRIVATE_KEY, SIGNING_LABEL)
                .map_err(open_err("find the signing key"))?,
            find(&session, ObjectClass::PUBLIC_KEY, SIGNING_LABEL)
                .map_err(open_err("find the signing key"))?,
        ) {
            (Some(s), Some(p)) => (s, p),
            _ if create => generate_signing_key(&session)?,
            _ => return Err(missing("signing key")),
        };
        let signing_public = ed25519_public(&session, public)?;
        // Every counter is made with the keys: a missing one is a token that lost an object
        // (or had it deleted, which would reset it), not one to start from 0 again.
        for (counter, what) in [
            (&COUNTER, "counter"),
            (&IV_EPOCH, "IV epoch"),
            (&CORE_COUNTER, "core counter"),
        ] {
            if !counter
                .exists(&session)
                .map_err(open_err("find a counter"))?
            {
                if !create {
                    return Err(missing(what));
                }
                create_counter_object(&session, counter.label, 0)
                    .map_err(open_err("create a counter object in the token"))?;
            }
        }
        Ok(Pkcs11Platform {
            inner: Mutex::new(Inner { session, iv: None }),
            sealing,
            signing,
            signing_public,
            description,
            _ctx: ctx,
        })
    }

    fn inner(&self) -> Result<std::sync::MutexGuard<'_, Inner>, PlatformError> {
        self.inner
            .lock()
            .map_err(|_| PlatformError::KeyStore("token session lock poisoned".into()))
    }

    /// The next IV: reserves a new epoch in the token when none is
    /// reserved yet or the sequence is used up.
    fn next_iv(&self, inner: &mut Inner) -> Result<[u8; IV_LEN], PlatformError> {
        let (epoch, seq) = match inner.iv {
            Some((e, s)) if s < u32::MAX => (e, s),
            _ => {
                let e = IV_EPOCH
                    .read(&inner.session)
                    .map_err(token)?
                    .checked_add(1)
                    .ok_or_else(|| PlatformError::KeyStore("IV epochs exhausted".into()))?;
                IV_EPOCH.advance_to(&inner.session, e).map_err(token)?;
                (e, 0)
            }
        };
        inner.iv = Some((epoch, seq + 1));
        let mut iv = [0u8; IV_LEN];
        iv[..8].copy_from_slice(&epoch.to_be_bytes());
        iv[8..].copy_from_slice(&seq.to_be_bytes());
        Ok(iv)
    }
}

fn generate_sealing_key(session: &Session) -> Result<ObjectHandle, PlatformOpenError> {
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                // Least privilege: this key seals and nothing else.
                Attribute::Sign(false),
                Attribute::Verify(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::ValueLen(32.into()),
                Attribute::Label(SEALING_LABEL.as_bytes().to_vec()),
            ],
        )
        .map_err(open_err("generate the sealing key in the token"))
}

fn generate_signing_key(
    session: &Session,
) -> Result<(ObjectHandle, ObjectHandle), PlatformOpenError> {
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::EccEdwardsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
                Attribute::Derive(false),
                Attribute::EcParams(ED25519_OID.to_vec()),
                Attribute::Label(SIGNING_LABEL.as_bytes().to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Label(SIGNING_LABEL.as_bytes().to_vec()),
            ],
        )
        .map_err(open_err("generate the Ed25519 signing key in the token"))?;
    Ok((private, public))
}

/// The Ed25519 public key from `CKA_EC_POINT` (a DER OCTET STRING of 32
/// bytes, or the raw 32 bytes on some tokens).
fn ed25519_public(session: &Session, public: ObjectHandle) -> Result<[u8; 32], PlatformOpenError> {
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(open_err("read the signing public key"))?;
    let point = attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    });
    let raw = match point.as_deref() {
        Some([0x04, 0x20, rest @ ..]) if rest.len() == 32 => rest,
        Some(p) if p.len() == 32 => p,
        _ => {
            return Err(PlatformOpenError::Token(
                "the token's signing public key is not an Ed25519 point".into(),
            ))
        }
    };
    let mut k = [0u8; 32];
    k.copy_from_slice(raw);
    Ok(k)
}

fn create_counter_object(session: &Session, label: &str, v: u64) -> Result<ObjectHandle, CkError> {
    session.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Application(b"bkv".to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(v.to_be_bytes().to_vec()),
    ])
}

fn read_u64(session: &Session, h: ObjectHandle) -> Result<u64, CkError> {
    let attrs = session.get_attributes(h, &[AttributeType::Value])?;
    for a in attrs {
        if let Attribute::Value(v) = a {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_slice()) {
                return Ok(u64::from_be_bytes(b));
            }
        }
    }
    Err(CkError::NotSupported)
}

impl Platform for Pkcs11Platform {
    fn describe(&self) -> PlatformDescription {
        self.description.clone()
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), PlatformError> {
        self.inner()?
            .session
            .generate_random_slice(out)
            .map_err(|e| PlatformError::Random(e.to_string()))
    }

    fn now_unix_secs(&self) -> u64 {
        crate::unix_now()
    }

    fn seal(
        &self,
        slot: SealSlot,
        label: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PlatformError> {
        let aad = seal_aad(slot.name(), label);
        let mut inner = self.inner()?;
        let mut iv = self.next_iv(&mut inner)?;
        let iv_copy = iv;
        let params = GcmParams::new(&mut iv, &aad, (TAG_LEN as u64 * 8).into()).map_err(token)?;
        let ct = inner
            .session
            .encrypt(&Mechanism::AesGcm(params), self.sealing, plaintext)
            .map_err(token)?;
        let mut out = Vec::with_capacity(1 + IV_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&iv_copy);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(
        &self,
        slot: SealSlot,
        label: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
        let (version, rest) = sealed.split_first().ok_or(PlatformError::Malformed)?;
        if *version != SEAL_VERSION || rest.len() < IV_LEN + TAG_LEN {
            return Err(PlatformError::Malformed);
        }
        let (iv, ct) = rest.split_at(IV_LEN);
        let mut iv: [u8; IV_LEN] = iv.try_into().map_err(|_| PlatformError::Malformed)?;
        let aad = seal_aad(slot.name(), label);
        let params = GcmParams::new(&mut iv, &aad, (TAG_LEN as u64 * 8).into()).map_err(token)?;
        let inner = self.inner()?;
        match inner
            .session
            .decrypt(&Mechanism::AesGcm(params), self.sealing, ct)
        {
            Ok(p) => Ok(Zeroizing::new(p)),
            // SoftHSM2 reports a failed GCM tag as CKR_GENERAL_ERROR.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::GeneralError,
                _,
            )) => Err(PlatformError::Auth),
            Err(e) => Err(token(e)),
        }
    }

    fn signing_public_key(&self) -> [u8; 32] {
        self.signing_public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], PlatformError> {
        let sig = self
            .inner()?
            .session
            .sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                self.signing,
                message,
            )
            .map_err(token)?;
        sig.as_slice()
            .try_into()
            .map_err(|_| PlatformError::KeyStore("the token's signature is not 64 bytes".into()))
    }

    fn counter_read(&self, c: Counter) -> Result<u64, PlatformError> {
        token_counter(c)
            .read(&self.inner()?.session)
            .map_err(|e| PlatformError::Counter(e.to_string()))
    }

    fn counter_advance_to(&self, c: Counter, value: u64) -> Result<(), PlatformError> {
        token_counter(c)
            .advance_to(&self.inner()?.session, value)
            .map_err(|e| PlatformError::Counter(e.to_string()))
    }
}
