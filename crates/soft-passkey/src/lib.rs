//! A software WebAuthn authenticator (1Password's `passkey` crates) with the
//! PRF extension, whose credentials live in a file. It stands in for a
//! platform's synced passkey store: copy the file to a "new device" and the
//! passkey comes along; delete it and the passkey is gone.
//!
//! The file holds private keys: it is written with mode 0600, replaced
//! atomically. Format (JSON, version 1):
//! `{"version":1,"passkeys":[{"credential_id","rp_id","user_handle",
//! "counter","cose_key","hmac_with_uv","hmac_without_uv"}]}` with binary
//! fields in unpadded base64url and `cose_key` the CBOR COSE_Key.
#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use bkv_client::{Authenticator, PasskeyError};
use futures::future::BoxFuture;
use passkey_authenticator::extensions::HmacSecretConfig;
use passkey_authenticator::{MemoryStore, UiHint, UserCheck, UserValidationMethod};
use passkey_client::{Client, WebauthnError};
use passkey_crypto::coset::{CborSerializable, CoseKey};
use passkey_crypto::AvailableBackend;
use passkey_types::ctap2::{Aaguid, Ctap2Error};
use passkey_types::webauthn::{CredentialCreationOptions, CredentialRequestOptions};
use passkey_types::{CredentialExtensions, Passkey, StoredHmacSecret};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest credential file read.
const MAX_FILE: u64 = 1024 * 1024;

/// Why the passkey store file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("passkey store {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file is not a store this crate wrote.
    #[error("passkey store {0} is not a valid store file: {1}")]
    Format(PathBuf, String),
}

/// The user "approves" every request with verification, as a platform
/// authenticator does after a biometric check.
struct AlwaysVerified;

#[async_trait::async_trait]
impl UserValidationMethod for AlwaysVerified {
    type PasskeyItem = Passkey;
    async fn check_user<'a>(
        &self,
        _hint: UiHint<'a, Passkey>,
        _presence: bool,
        _verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        Ok(UserCheck {
            presence: true,
            verification: true,
        })
    }
    fn is_presence_enabled(&self) -> bool {
        true
    }
    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(Serialize, Deserialize)]
struct StoredPasskey {
    credential_id: String,
    rp_id: String,
    user_handle: Option<String>,
    counter: Option<u32>,
    cose_key: String,
    hmac_with_uv: Option<String>,
    hmac_without_uv: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    passkeys: Vec<StoredPasskey>,
}

fn b64(b: &[u8]) -> String {
    B64URL.encode(b)
}

/// The software authenticator over a credential file.
pub struct SoftAuthenticator {
    path: PathBuf,
}

impl SoftAuthenticator {
    /// Uses `path` as the credential store; it need not exist yet.
    pub fn new(path: &Path) -> Self {
        SoftAuthenticator {
            path: path.to_owned(),
        }
    }

    /// Credentials in the store.
    pub fn count(&self) -> Result<usize, StoreError> {
        Ok(self.load()?.len())
    }

    fn format_err(&self, m: impl Into<String>) -> StoreError {
        StoreError::Format(self.path.clone(), m.into())
    }

    fn load(&self) -> Result<MemoryStore, StoreError> {
        let mut store = MemoryStore::new();
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(e) => return Err(StoreError::Io(self.path.clone(), e)),
        };
        if meta.len() > MAX_FILE {
            return Err(self.format_err("too large"));
        }
        let bytes = std::fs::read(&self.path).map_err(|e| StoreError::Io(self.path.clone(), e))?;
        let file: StoreFile =
            serde_json::from_slice(&bytes).map_err(|e| self.format_err(e.to_string()))?;
        if file.version != 1 {
            return Err(self.format_err(format!("unknown version {}", file.version)));
        }
        let dec = |s: &str| {
            B64URL
                .decode(s)
                .map_err(|_| self.format_err("bad base64url"))
        };
        for p in file.passkeys {
            let credential_id = dec(&p.credential_id)?;
            let key =
                CoseKey::from_slice(&dec(&p.cose_key)?).map_err(|_| self.format_err("bad key"))?;
            let hmac_secret = match p.hmac_with_uv {
                Some(w) => Some(StoredHmacSecret {
                    cred_with_uv: dec(&w)?,
                    cred_without_uv: p.hmac_without_uv.as_deref().map(dec).transpose()?,
                }),
                None => None,
            };
            let pk = Passkey {
                key,
                credential_id: credential_id.clone().into(),
                rp_id: p.rp_id,
                user_handle: p
                    .user_handle
                    .as_deref()
                    .map(dec)
                    .transpose()?
                    .map(Into::into),
                username: None,
                user_display_name: None,
                counter: p.counter,
                extensions: CredentialExtensions { hmac_secret },
            };
            store.insert(credential_id, pk);
        }
        Ok(store)
    }

    /// Writes the store: temp file (0600), fsync, rename.
    fn save(&self, store: &MemoryStore) -> Result<(), StoreError> {
        let mut passkeys = Vec::new();
        for pk in store.values() {
            let key = pk
                .key
                .clone()
                .to_vec()
                .map_err(|_| self.format_err("key does not encode"))?;
            passkeys.push(StoredPasskey {
                credential_id: b64(&pk.credential_id),
                rp_id: pk.rp_id.clone(),
                user_handle: pk.user_handle.as_ref().map(|h| b64(h)),
                counter: pk.counter,
                cose_key: b64(&key),
                hmac_with_uv: pk
                    .extensions
                    .hmac_secret
                    .as_ref()
                    .map(|h| b64(&h.cred_with_uv)),
                hmac_without_uv: pk
                    .extensions
                    .hmac_secret
                    .as_ref()
                    .and_then(|h| h.cred_without_uv.as_deref().map(b64)),
            });
        }
        passkeys.sort_by(|a, b| a.credential_id.cmp(&b.credential_id));
        let body = serde_json::to_vec_pretty(&StoreFile {
            version: 1,
            passkeys,
        })
        .map_err(|e| self.format_err(e.to_string()))?;
        let io = |e| StoreError::Io(self.path.clone(), e);
        bkv_private_files::write_private_file(&self.path, &body).map_err(io)
    }

    fn authenticator(
        &self,
    ) -> Result<
        passkey_authenticator::Authenticator<MemoryStore, AlwaysVerified, AvailableBackend>,
        PasskeyError,
    > {
        let store = self
            .load()
            .map_err(|e| PasskeyError::Authenticator(e.to_string()))?;
        let auth = passkey_authenticator::Authenticator::new(
            Aaguid::new_empty(),
            store,
            AlwaysVerified,
            AvailableBackend,
        )
        .hmac_secret(HmacSecretConfig::new_with_uv_only().enable_on_make_credential());
        Ok(auth)
    }
}

fn origin_url(origin: &str) -> Result<url::Url, PasskeyError> {
    url::Url::parse(origin).map_err(|e| PasskeyError::Authenticator(format!("origin: {e}")))
}

fn webauthn_err(e: WebauthnError) -> PasskeyError {
    let text = format!("{e:?}");
    if text.contains("NoCredentials") || text.contains("CredentialNotFound") {
        PasskeyError::NoCredential
    } else {
        PasskeyError::Authenticator(text)
    }
}

impl Authenticator for SoftAuthenticator {
    fn create<'a>(
        &'a mut self,
        origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<Value, PasskeyError>> {
        Box::pin(async move {
            let options: CredentialCreationOptions = serde_json::from_value(options)
                .map_err(|e| PasskeyError::Authenticator(format!("creation options: {e}")))?;
            let mut client = Client::new(self.authenticator()?).allows_insecure_localhost(true);
            let cred = client
                .register(&origin_url(origin)?, options, None)
                .await
                .map_err(webauthn_err)?;
            self.save(client.authenticator().store())
                .map_err(|e| PasskeyError::Authenticator(e.to_string()))?;
            serde_json::to_value(&cred).map_err(|e| PasskeyError::Authenticator(e.to_string()))
        })
    }

    fn get<'a>(
        &'a mut self,
        origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<Value, PasskeyError>> {
        Box::pin(async move {
            let options: CredentialRequestOptions = serde_json::from_value(options)
                .map_err(|e| PasskeyError::Authenticator(format!("request options: {e}")))?;
            let mut client = Client::new(self.authenticator()?).allows_insecure_localhost(true);
            let cred = client
                .authenticate(&origin_url(origin)?, options, None)
                .await
                .map_err(webauthn_err)?;
            // Counters may have moved.
            self.save(client.authenticator().store())
                .map_err(|e| PasskeyError::Authenticator(e.to_string()))?;
            serde_json::to_value(&cred).map_err(|e| PasskeyError::Authenticator(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::json;

    fn creation_options(challenge: &[u8]) -> Value {
        json!({"publicKey": {
            "rp": {"id": "localhost", "name": "bkv"},
            "user": {"id": B64.encode(b"user-handle"), "name": "u", "displayName": "u"},
            "challenge": B64.encode(challenge),
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "authenticatorSelection": {"residentKey": "discouraged", "userVerification": "required"},
            "extensions": {"prf": {"eval": {"first": B64.encode([7u8; 32])}}}
        }})
    }

    fn request_options(cred_id: &str, salt: [u8; 32]) -> Value {
        json!({"publicKey": {
            "challenge": B64.encode(b"challenge-2"),
            "rpId": "localhost",
            "allowCredentials": [{"type": "public-key", "id": cred_id}],
            "userVerification": "required",
            "extensions": {"prf": {"eval": {"first": B64.encode(salt)}}}
        }})
    }

    fn prf(v: &Value) -> String {
        v.pointer("/clientExtensionResults/prf/results/first")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no PRF output in {v}"))
            .to_owned()
    }

    /// The store file survives a "device change": a second authenticator
    /// over a copy of the file gives the same PRF output for the same salt,
    /// another salt gives another output, and an empty store has no passkey.
    #[tokio::test]
    async fn the_store_file_carries_the_credential_and_its_prf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.json");
        let mut a = SoftAuthenticator::new(&path);
        let created = a
            .create("https://localhost", creation_options(b"challenge-1"))
            .await
            .unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        assert_eq!(a.count().unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "store must not be readable by others");

        let copy = dir.path().join("new-device.json");
        std::fs::copy(&path, &copy).unwrap();
        let mut b = SoftAuthenticator::new(&copy);
        let one = b
            .get("https://localhost", request_options(&id, [1; 32]))
            .await
            .unwrap();
        let again = a
            .get("https://localhost", request_options(&id, [1; 32]))
            .await
            .unwrap();
        let other = b
            .get("https://localhost", request_options(&id, [2; 32]))
            .await
            .unwrap();
        assert_eq!(prf(&one), prf(&again));
        assert_ne!(prf(&one), prf(&other));

        let mut empty = SoftAuthenticator::new(&dir.path().join("none.json"));
        let e = empty
            .get("https://localhost", request_options(&id, [1; 32]))
            .await
            .unwrap_err();
        assert!(matches!(e, PasskeyError::NoCredential), "{e:?}");
        std::fs::write(&copy, b"{not json").unwrap();
        assert!(SoftAuthenticator::new(&copy).count().is_err());
    }
}
