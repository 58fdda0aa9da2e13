//! WebAuthn relying party for passkey protectors (webauthn-rs).
//!
//! Per user the RP keeps its passkeys (public keys) and, per passkey, a
//! random 32-byte *share* that it releases only after a valid assertion. The
//! client derives the slot secret from the PRF output *and* the share, so
//! deleting a passkey here revokes it even where storage kept old manifests.
//! The RP never sees PRF outputs. Ceremony state lives in memory for
//! [`CEREMONY_TTL`]; a restart only cancels ceremonies in flight.
//!
//! A bearer token alone cannot destroy anything: deleting a passkey, and
//! registering another one once the user has any, needs a *grant* — a
//! short-lived random value the RP hands out only for proof of a protector:
//! an assertion by one of the user's passkeys, or (via the frontend) a vault
//! session logged in with the user's password.
//!
//! Stored value per user (redb table `passkeys`): JSON
//! `{"version":1,"passkeys":[{"passkey":<webauthn-rs Passkey>,"rp_share":hex,"created_unix":n}]}`.

use crate::{now_secs, ApiError};
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rand::RngCore;
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use webauthn_rs::prelude::{
    CreationChallengeResponse, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid,
    Webauthn, WebauthnBuilder,
};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("passkeys");
/// Passkeys per user.
pub const MAX_PASSKEYS: usize = 16;
/// Time a client has to finish a ceremony.
pub const CEREMONY_TTL: Duration = Duration::from_secs(120);
/// Ceremonies in flight per user; another one ends the user's oldest.
pub const MAX_CEREMONIES_PER_USER: usize = 4;
/// Ceremonies in flight (all users); when full, the oldest ends. With the
/// per-user cap and the frontend's per-address rate limits, a flood of
/// throwaway accounts cannot push out a ceremony that is seconds old.
pub const DEFAULT_MAX_CEREMONIES: usize = 10_000;
/// How long a grant authorizes deletions and registrations.
pub const GRANT_TTL: Duration = Duration::from_secs(600);
/// Live grants per user (the oldest goes first).
const MAX_GRANTS_PER_USER: usize = 4;
/// Users with live grants.
const MAX_GRANT_USERS: usize = 100_000;
/// Largest stored value read back.
const MAX_RECORD: usize = 256 * 1024;

/// Relying-party settings.
#[derive(Debug, Clone)]
pub struct PasskeyConfig {
    /// RP id (a domain; `localhost` for development).
    pub rp_id: String,
    /// The origin clients' WebAuthn requests come from.
    pub origin: String,
    /// Further accepted origins (a web page served from another origin).
    pub extra_origins: Vec<String>,
    /// redb file with the registered passkeys.
    pub db_path: PathBuf,
}

/// Why the passkey relying party could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasskeyStoreError {
    /// The relying party's id or origin is not usable.
    #[error("relying party settings: {0}")]
    Config(String),
    /// The passkey database failed.
    #[error("passkey database: {0}")]
    Db(String),
}

fn db_err(e: impl std::fmt::Display) -> PasskeyStoreError {
    PasskeyStoreError::Db(e.to_string())
}

#[derive(Serialize, Deserialize)]
struct StoredPasskey {
    passkey: Passkey,
    rp_share: String,
    created_unix: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct UserPasskeys {
    version: u32,
    passkeys: Vec<StoredPasskey>,
}

enum Ceremony {
    Register(PasskeyRegistration),
    Assert(PasskeyAuthentication),
}

struct Pending {
    user: String,
    ceremony: Ceremony,
    started: Instant,
}

/// Per user: SHA-256 of each live grant and when it was issued.
type Grants = HashMap<String, Vec<([u8; 32], Instant)>>;

/// The WebAuthn relying party for passkey protectors: ceremonies, stored credentials and
/// grants, and the relying party's share of each protector key.
pub struct RelyingParty {
    webauthn: Webauthn,
    db: Database,
    pending: Mutex<HashMap<String, Pending>>,
    max_ceremonies: std::sync::atomic::AtomicUsize,
    grants: Mutex<Grants>,
}

fn forbidden_without_grant(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "protector_required",
        format!(
            "{what} needs proof of a protector: a grant from a passkey assertion or from a vault session logged in with the password"
        ),
    )
}

fn internal(m: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
}

/// WebAuthn's user handle: a UUID derived from the user id, so it is stable
/// and reveals nothing about the id.
fn user_uuid(user: &str) -> Uuid {
    let d = Sha256::new()
        .chain_update(b"bkv webauthn user v1\0")
        .chain_update(user.as_bytes())
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid::from_bytes(b)
}

pub use bkv_api::passkeys::{Finished, PasskeyEntry as Listed, Started};

impl RelyingParty {
    /// Opens (or creates) the passkey database the config names.
    pub fn open(config: &PasskeyConfig) -> Result<Self, PasskeyStoreError> {
        let origin = Url::parse(&config.origin)
            .map_err(|e| PasskeyStoreError::Config(format!("origin: {e}")))?;
        let mut builder = WebauthnBuilder::new(&config.rp_id, &origin)
            .map_err(|e| PasskeyStoreError::Config(e.to_string()))?
            .rp_name("bkv backups");
        for o in &config.extra_origins {
            let o = Url::parse(o).map_err(|e| PasskeyStoreError::Config(format!("{o}: {e}")))?;
            builder = builder.append_allowed_origin(&o);
        }
        let webauthn = builder
            .build()
            .map_err(|e| PasskeyStoreError::Config(e.to_string()))?;
        if let Some(dir) = config.db_path.parent() {
            std::fs::create_dir_all(dir).map_err(db_err)?;
        }
        // Passkey public keys and RP shares: readable by the service only.
        crate::private_file(&config.db_path).map_err(db_err)?;
        let db = Database::create(&config.db_path).map_err(db_err)?;
        let w = db.begin_write().map_err(db_err)?;
        w.open_table(TABLE).map_err(db_err)?;
        w.commit().map_err(db_err)?;
        Ok(RelyingParty {
            webauthn,
            db,
            pending: Mutex::new(HashMap::new()),
            max_ceremonies: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_CEREMONIES),
            grants: Mutex::new(HashMap::new()),
        })
    }

    /// Bounds the ceremonies in flight (all users).
    pub fn set_max_ceremonies(&self, max: usize) {
        self.max_ceremonies
            .store(max.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn load(&self, user: &str) -> Result<UserPasskeys, ApiError> {
        let r = self.db.begin_read().map_err(|_| internal("db read"))?;
        let t = r.open_table(TABLE).map_err(|_| internal("db table"))?;
        match t.get(user).map_err(|_| internal("db get"))? {
            Some(v) => {
                let v = v.value();
                if v.len() > MAX_RECORD {
                    return Err(internal("stored passkeys too large"));
                }
                serde_json::from_slice(v).map_err(|_| internal("stored passkeys unreadable"))
            }
            None => Ok(UserPasskeys {
                version: 1,
                passkeys: Vec::new(),
            }),
        }
    }

    /// Writes the user's passkeys in one durable transaction.
    fn save(&self, user: &str, p: &UserPasskeys) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(p).map_err(|_| internal("encode passkeys"))?;
        let w = self.db.begin_write().map_err(|_| internal("db write"))?;
        {
            let mut t = w.open_table(TABLE).map_err(|_| internal("db table"))?;
            if p.passkeys.is_empty() {
                t.remove(user).map_err(|_| internal("db remove"))?;
            } else {
                t.insert(user, bytes.as_slice())
                    .map_err(|_| internal("db insert"))?;
            }
        }
        w.commit().map_err(|_| internal("db commit"))
    }

    fn park(&self, user: &str, ceremony: Ceremony) -> Result<String, ApiError> {
        let mut pending = self.pending.lock().map_err(|_| internal("lock"))?;
        pending.retain(|_, p| p.started.elapsed() < CEREMONY_TTL);
        let oldest = |pending: &HashMap<String, Pending>, of: Option<&str>| {
            pending
                .iter()
                .filter(|(_, p)| of.is_none_or(|u| p.user == u))
                .min_by_key(|(_, p)| p.started)
                .map(|(id, _)| id.clone())
        };
        let mine = pending.values().filter(|p| p.user == user).count();
        let victim = if mine >= MAX_CEREMONIES_PER_USER {
            oldest(&pending, Some(user))
        } else if pending.len()
            >= self
                .max_ceremonies
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            oldest(&pending, None)
        } else {
            None
        };
        if let Some(v) = victim {
            pending.remove(&v);
        }
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        pending.insert(
            id.clone(),
            Pending {
                user: user.to_owned(),
                ceremony,
                started: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Takes a ceremony out (one use only); it must belong to `user`.
    fn take(&self, user: &str, id: &str) -> Result<Ceremony, ApiError> {
        let mut pending = self.pending.lock().map_err(|_| internal("lock"))?;
        let unknown = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_ceremony",
                "no such passkey ceremony (finished, expired, or another user's)",
            )
        };
        match pending.get(id) {
            Some(p) if p.user == user && p.started.elapsed() < CEREMONY_TTL => {}
            _ => return Err(unknown()),
        }
        pending.remove(id).map(|p| p.ceremony).ok_or_else(unknown)
    }

    /// Issues a grant to `user` (the caller checked a protector).
    pub fn issue_grant(&self, user: &str) -> Result<String, ApiError> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let digest: [u8; 32] = Sha256::digest(raw).into();
        let mut grants = self.grants.lock().map_err(|_| internal("lock"))?;
        if grants.len() >= MAX_GRANT_USERS {
            grants.retain(|_, v| {
                v.retain(|(_, t)| t.elapsed() < GRANT_TTL);
                !v.is_empty()
            });
            if grants.len() >= MAX_GRANT_USERS {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many grants outstanding; try again shortly",
                ));
            }
        }
        let v = grants.entry(user.to_owned()).or_default();
        v.retain(|(_, t)| t.elapsed() < GRANT_TTL);
        if v.len() >= MAX_GRANTS_PER_USER {
            v.remove(0);
        }
        v.push((digest, Instant::now()));
        Ok(hex::encode(raw))
    }

    /// Whether `grant` is a live grant of `user` (constant-time compare).
    pub fn check_grant(&self, user: &str, grant: Option<&str>) -> Result<bool, ApiError> {
        use subtle::ConstantTimeEq;
        let Some(raw) = grant.and_then(|g| hex::decode(g).ok()) else {
            return Ok(false);
        };
        let digest: [u8; 32] = Sha256::digest(&raw).into();
        let grants = self.grants.lock().map_err(|_| internal("lock"))?;
        Ok(grants.get(user).is_some_and(|v| {
            v.iter()
                .any(|(d, t)| t.elapsed() < GRANT_TTL && bool::from(d.ct_eq(&digest)))
        }))
    }

    /// Starts registering a passkey. The user's first passkey needs only the
    /// token; another one needs a grant, so a stolen token cannot add a
    /// passkey that would then mint grants.
    pub fn start_registration(
        &self,
        user: &str,
        grant: Option<&str>,
    ) -> Result<Started<CreationChallengeResponse>, ApiError> {
        let existing = self.load(user)?;
        if !existing.passkeys.is_empty() && !self.check_grant(user, grant)? {
            return Err(forbidden_without_grant("registering another passkey"));
        }
        if existing.passkeys.len() >= MAX_PASSKEYS {
            return Err(bad(format!(
                "at most {MAX_PASSKEYS} passkeys per user; remove one first"
            )));
        }
        let exclude = existing
            .passkeys
            .iter()
            .map(|p| p.passkey.cred_id().clone())
            .collect::<Vec<_>>();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_uuid(user), user, user, Some(exclude))
            .map_err(|e| bad(format!("webauthn: {e}")))?;
        let ceremony = self.park(user, Ceremony::Register(state))?;
        Ok(Started { ceremony, options })
    }

    /// Finishes a registration ceremony with the authenticator's credential.
    pub fn finish_registration(
        &self,
        user: &str,
        ceremony: &str,
        credential: &RegisterPublicKeyCredential,
    ) -> Result<Finished, ApiError> {
        let Ceremony::Register(state) = self.take(user, ceremony)? else {
            return Err(bad("that ceremony is an assertion"));
        };
        let passkey = self
            .webauthn
            .finish_passkey_registration(credential, &state)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "passkey_rejected",
                    format!("registration rejected: {e}"),
                )
            })?;
        let mut share = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut share);
        let mut all = self.load(user)?;
        if all.passkeys.len() >= MAX_PASSKEYS {
            return Err(bad(format!("at most {MAX_PASSKEYS} passkeys per user")));
        }
        let credential_id = B64URL.encode(passkey.cred_id());
        all.version = 1;
        all.passkeys.push(StoredPasskey {
            passkey,
            rp_share: hex::encode(share),
            created_unix: now_secs(),
        });
        self.save(user, &all)?;
        Ok(Finished {
            credential_id,
            rp_share: hex::encode(share),
            grant: None,
        })
    }

    /// Starts an assertion with the passkey `credential_id` names.
    pub fn start_assertion(
        &self,
        user: &str,
        credential_id: &str,
    ) -> Result<Started<RequestChallengeResponse>, ApiError> {
        let all = self.load(user)?;
        let wanted = B64URL
            .decode(credential_id)
            .map_err(|_| bad("credential_id must be base64url"))?;
        let Some(p) = all
            .passkeys
            .iter()
            .find(|p| p.passkey.cred_id().as_slice() == wanted.as_slice())
        else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_passkey",
                "this passkey is not registered for the user (it was removed)",
            ));
        };
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(std::slice::from_ref(&p.passkey))
            .map_err(|e| bad(format!("webauthn: {e}")))?;
        let ceremony = self.park(user, Ceremony::Assert(state))?;
        Ok(Started { ceremony, options })
    }

    /// Finishes an assertion: the share, and a grant for further changes.
    pub fn finish_assertion(
        &self,
        user: &str,
        ceremony: &str,
        credential: &PublicKeyCredential,
    ) -> Result<Finished, ApiError> {
        let Ceremony::Assert(state) = self.take(user, ceremony)? else {
            return Err(bad("that ceremony is a registration"));
        };
        let result = self
            .webauthn
            .finish_passkey_authentication(credential, &state)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "passkey_rejected",
                    format!("assertion rejected: {e}"),
                )
            })?;
        let mut all = self.load(user)?;
        let Some(p) = all
            .passkeys
            .iter_mut()
            .find(|p| p.passkey.cred_id() == result.cred_id())
        else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_passkey",
                "this passkey was removed during the assertion",
            ));
        };
        let out = Finished {
            credential_id: B64URL.encode(p.passkey.cred_id()),
            rp_share: p.rp_share.clone(),
            grant: Some(self.issue_grant(user)?),
        };
        if p.passkey.update_credential(&result) == Some(true) {
            self.save(user, &all)?;
        }
        Ok(out)
    }

    /// The user's passkeys.
    pub fn list(&self, user: &str) -> Result<Vec<Listed>, ApiError> {
        Ok(self
            .load(user)?
            .passkeys
            .iter()
            .map(|p| Listed {
                credential_id: B64URL.encode(p.passkey.cred_id()),
                created_unix: p.created_unix,
            })
            .collect())
    }

    /// Deletes one passkey (or all with `None`); returns how many went.
    /// Needs a live grant of the user.
    pub fn delete(
        &self,
        user: &str,
        credential_id: Option<&str>,
        grant: Option<&str>,
    ) -> Result<usize, ApiError> {
        if !self.check_grant(user, grant)? {
            return Err(forbidden_without_grant("deleting passkeys"));
        }
        let mut all = self.load(user)?;
        let before = all.passkeys.len();
        match credential_id {
            Some(id) => {
                let wanted = B64URL
                    .decode(id)
                    .map_err(|_| bad("credential_id must be base64url"))?;
                all.passkeys
                    .retain(|p| p.passkey.cred_id().as_slice() != wanted.as_slice());
            }
            None => all.passkeys.clear(),
        }
        let n = before - all.passkeys.len();
        if n > 0 {
            self.save(user, &all)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_handles_are_stable_and_distinct() {
        assert_eq!(user_uuid("alice"), user_uuid("alice"));
        assert_ne!(user_uuid("alice"), user_uuid("bob"));
    }

    #[test]
    fn ceremonies_are_single_use_and_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let rp = RelyingParty::open(&PasskeyConfig {
            rp_id: "localhost".into(),
            origin: "https://localhost".into(),
            extra_origins: Vec::new(),
            db_path: dir.path().join("p.redb"),
        })
        .unwrap();
        let s = rp.start_registration("alice", None).unwrap();
        assert!(rp.take("bob", &s.ceremony).is_err());
        assert!(rp.take("alice", &s.ceremony).is_ok());
        assert!(rp.take("alice", &s.ceremony).is_err());
        assert!(rp.start_assertion("alice", "AAAA").is_err());
        assert!(rp.list("alice").unwrap().is_empty());
    }

    fn rp(dir: &std::path::Path) -> RelyingParty {
        RelyingParty::open(&PasskeyConfig {
            rp_id: "localhost".into(),
            origin: "https://localhost".into(),
            extra_origins: Vec::new(),
            db_path: dir.join("p.redb"),
        })
        .unwrap()
    }

    #[test]
    fn deleting_needs_a_live_grant_of_the_same_user() {
        let dir = tempfile::tempdir().unwrap();
        let rp = rp(dir.path());
        let code = |r: Result<usize, ApiError>| r.map_err(|e| e.code);
        assert_eq!(
            code(rp.delete("alice", None, None)),
            Err("protector_required")
        );
        assert_eq!(
            code(rp.delete("alice", None, Some("zz"))),
            Err("protector_required")
        );
        let g = rp.issue_grant("bob").unwrap();
        assert_eq!(
            code(rp.delete("alice", None, Some(&g))),
            Err("protector_required")
        );
        let g = rp.issue_grant("alice").unwrap();
        assert_eq!(code(rp.delete("alice", None, Some(&g))), Ok(0));
        // Grants are bounded per user: the oldest goes first.
        let first = rp.issue_grant("alice").unwrap();
        for _ in 0..MAX_GRANTS_PER_USER {
            rp.issue_grant("alice").unwrap();
        }
        assert!(!rp.check_grant("alice", Some(&first)).unwrap());
    }

    #[test]
    fn ceremonies_are_capped_per_user_without_touching_others() {
        let dir = tempfile::tempdir().unwrap();
        let rp = rp(dir.path());
        let victim = rp.start_registration("victim", None).unwrap();
        let mut mine = Vec::new();
        for i in 0..50 {
            mine.push(
                rp.start_registration(&format!("flood{}", i % 5), None)
                    .unwrap(),
            );
        }
        let pending = rp.pending.lock().unwrap();
        assert_eq!(pending.len(), 1 + 5 * MAX_CEREMONIES_PER_USER);
        assert!(pending.contains_key(&victim.ceremony));
        // Each flooding user keeps only their newest ceremonies.
        assert!(!pending.contains_key(&mine[0].ceremony));
        assert!(pending.contains_key(&mine[49].ceremony));
    }
}
