//! The operations the page calls, as JSON in and out (docs/api.md "Browser client").
//!
//! Every request carries the settings (`config`): the frontend and storage URLs, the user and
//! token, the trust anchors (`trust`: the auditor's and operator's keys for the bundle, or a
//! pinned fleet key), the log state kept from the last bundle (`log_state`), the guess limit
//! and the passkey origin. Errors are `{code, message, guesses_remaining?}` with the codes of
//! [`bkv_client::ClientError::code`], the CLI's exit classes.

use crate::host::{self, FetchHttp, FileSlices, Pieces, WebAuthn};
use bkv_client::{
    Account, BackupStore, ClientError, Endpoint, FleetTarget, Http, HttpStore, RecoveryKey, Unlock,
    Unlocked,
};
use bkv_transparency::bundle::{ClientLogState, TrustAnchors};
use bkv_wire::vault::RecordState;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// How the fleet's key is trusted.
#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
enum Trust {
    /// From the bundle the auditor co-signed and logged (what the CLI's `ota` mode does).
    Ota {
        namespace: String,
        origin: String,
        auditor_name: String,
        auditor_key: String,
        operator_key: String,
    },
    /// One pinned fleet key.
    Pinned {
        #[serde(default)]
        fleet_id: Option<String>,
        noise_public_key: String,
    },
}

/// The settings every request carries.
#[derive(Deserialize)]
struct Config {
    frontend: String,
    storage: String,
    user: String,
    token: String,
    trust: Trust,
    #[serde(default)]
    log_state: Option<ClientLogState>,
    guess_limit: u32,
    passkey_origin: String,
}

/// A protector presented to unlock the backup key.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum With {
    Password(String),
    RecoveryKey(String),
    Passkey {},
}

/// One request.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Status {
        config: Config,
    },
    Protectors {
        config: Config,
    },
    Backup {
        config: Config,
        password: String,
    },
    Restore {
        config: Config,
        with: With,
    },
    AddRecoveryKey {
        config: Config,
        password: String,
    },
    AddPasskey {
        config: Config,
        password: String,
    },
    ChangePassword {
        config: Config,
        password: String,
        new_password: String,
    },
    RemoveProtector {
        config: Config,
        password: String,
        id: String,
    },
}

/// A failed request: the error's JSON (`code`, `message`, `guesses_remaining`?).
struct Fail(Value);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        let mut v = json!({ "code": e.code(), "message": e.to_string() });
        if let ClientError::WrongPassword { guesses_remaining } = e {
            v["guesses_remaining"] = guesses_remaining.into();
        }
        Fail(v)
    }
}

fn usage(message: &str) -> Fail {
    Fail(json!({ "code": "usage", "message": message }))
}

fn key(hex_key: &str, what: &str) -> Result<[u8; 32], Fail> {
    bkv_wire::key_from_hex(hex_key).map_err(|e| usage(&format!("{what}: {e}")))
}

fn password(p: String) -> Result<SecretString, Fail> {
    if p.is_empty() {
        return Err(usage("the password is empty"));
    }
    Ok(SecretString::from(p))
}

/// The account, unlocked with the password (a guess like any other).
async fn with_password(
    config: &Config,
    pw: String,
) -> Result<(Account, Unlocked, SecretString), Fail> {
    let pw = password(pw)?;
    let a = account(config).await?;
    let unlocked = a.unlock(Unlock::Password(&pw)).await?;
    Ok((a, unlocked, pw))
}

/// Runs one request (the JSON the page sent).
pub async fn run(request: &str) -> Result<Value, Value> {
    serve(request).await.map_err(|Fail(v)| v)
}

async fn serve(request: &str) -> Result<Value, Fail> {
    // Where, not what: serde's message quotes values, and a value may be a password.
    let req: Request = serde_json::from_str(request).map_err(|e| {
        usage(&format!(
            "the request is not valid ({:?} at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    match req {
        Request::Status { config } => {
            let a = account(&config).await?;
            let record = match a.record_state().await? {
                RecordState::Active {
                    attempts,
                    guess_limit,
                } => json!({
                    "state": "active",
                    "attempts": attempts,
                    "guess_limit": guess_limit,
                    "guesses_remaining": guess_limit.saturating_sub(attempts),
                }),
                RecordState::Absent => json!({ "state": "absent" }),
                RecordState::Pending => json!({ "state": "pending" }),
                RecordState::Destroyed => json!({ "state": "destroyed" }),
                RecordState::Moved => json!({ "state": "moved" }),
            };
            Ok(json!({ "record": record, "latest": a.store.latest().await? }))
        }
        Request::Protectors { config } => Ok(json!(account(&config).await?.list().await?)),
        Request::Backup {
            config,
            password: pw,
        } => {
            let pw = password(pw)?;
            let a = account(&config).await?;
            let (k, registered) = a.key_for_backup(Unlock::Password(&pw)).await?;
            let latest = a
                .store
                .create_streamed(&k, &mut FileSlices, bkv_client::DEFAULT_CHUNK_SIZE)
                .await?;
            Ok(json!({ "latest": latest, "registered": registered }))
        }
        Request::Restore { config, with } => {
            let a = account(&config).await?;
            // Checked first so that a password guess is not spent on nothing.
            if a.store.latest().await?.is_none() && a.store.list().await?.is_empty() {
                return Err(ClientError::NoBackup.into());
            }
            let unlocked = match with {
                With::Password(p) => a.unlock(Unlock::Password(&password(p)?)).await?,
                With::RecoveryKey(rk) => {
                    let rk = RecoveryKey::parse(&rk).map_err(ClientError::from)?;
                    a.unlock(Unlock::RecoveryKey(&rk)).await?
                }
                With::Passkey {} => a.unlock(Unlock::Passkey(&mut WebAuthn)).await?,
            };
            let (latest, _) = a.store.restore_streamed(&unlocked.key, &mut Pieces).await?;
            Ok(json!({ "latest": latest, "via": unlocked.via }))
        }
        Request::AddRecoveryKey {
            config,
            password: pw,
        } => {
            let (a, unlocked, _) = with_password(&config, pw).await?;
            let (id, rk) = a.add_recovery_key(&unlocked).await?;
            Ok(json!({ "id": id, "recovery_key": rk.display() }))
        }
        Request::AddPasskey {
            config,
            password: pw,
        } => {
            let (a, unlocked, _) = with_password(&config, pw).await?;
            let id = a.add_passkey(&unlocked, &mut WebAuthn).await?;
            Ok(json!({ "id": id }))
        }
        Request::ChangePassword {
            config,
            password: pw,
            new_password,
        } => {
            let (pw, new) = (password(pw)?, password(new_password)?);
            account(&config).await?.change_password(&pw, &new).await?;
            Ok(json!({}))
        }
        Request::RemoveProtector {
            config,
            password: pw,
            id,
        } => {
            if id == "password" {
                return Err(usage(
                    "the password is this page's way in: change it instead of removing it",
                ));
            }
            let (a, unlocked, pw) = with_password(&config, pw).await?;
            Ok(json!(a.rotate(unlocked, Some(&pw), &[id], false).await?))
        }
    }
}

/// The user's account: the fleet's key checked as the config says (a new log state is handed
/// to the page to keep before the fleet is used), storage through the storage endpoint.
async fn account(c: &Config) -> Result<Account, Fail> {
    let http: Arc<dyn Http> = Arc::new(FetchHttp);
    let mut fleets = match &c.trust {
        Trust::Ota {
            namespace,
            origin,
            auditor_name,
            auditor_key,
            operator_key,
        } => {
            let vk = |h: &str, what: &str| {
                ed25519_dalek::VerifyingKey::from_bytes(&key(h, what)?)
                    .map_err(|_| usage(&format!("{what} is not an Ed25519 key")))
            };
            let anchors = TrustAnchors {
                namespace: namespace.clone(),
                origin: origin.clone(),
                auditor_name: auditor_name.clone(),
                auditor_key: vk(auditor_key, "auditor_key")?,
                operator_key: vk(operator_key, "operator_key")?,
            };
            let seen = c.log_state.clone().unwrap_or_default();
            let (fleets, next) =
                bkv_client::fleets_after(&*http, &c.frontend, &anchors, &seen).await?;
            if next != seen {
                let state = serde_json::to_value(&next).map_err(|e| usage(&e.to_string()))?;
                host::save_state(state).await?;
            }
            fleets
        }
        Trust::Pinned {
            fleet_id,
            noise_public_key,
        } => vec![FleetTarget {
            fleet_id: fleet_id.clone().unwrap_or_default(),
            key: key(noise_public_key, "noise_public_key")?,
        }],
    }
    .into_iter();
    let fleet = fleets
        .next()
        .ok_or_else(|| usage("the bundle lists no fleet"))?;
    let store = HttpStore::new(http.clone(), &c.storage, None);
    Ok(Account {
        endpoint: Some(Endpoint {
            http,
            frontend_url: c.frontend.clone(),
            token: SecretString::from(c.token.clone()),
            fleet,
            previous: fleets.collect(),
        }),
        store: BackupStore::with_store(Arc::new(store), &c.user),
        user: c.user.clone(),
        guess_limit: c.guess_limit,
        passkey_origin: c.passkey_origin.clone(),
    })
}
