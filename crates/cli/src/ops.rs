//! User operations shared by the CLI commands and the demo.

use bkv_client::archive::Options;
use bkv_client::storage::Latest;
use bkv_client::{BackupKey, BackupStore, ClientError, Endpoint, VaultClient};
use bkv_wire::vault::RecordState;
use secrecy::SecretString;
use std::path::PathBuf;

pub type Report = Box<dyn FnMut(u64) + Send>;

pub struct Ctx {
    pub endpoint: Endpoint,
    pub storage_dir: PathBuf,
    pub guess_limit: u32,
}

pub struct Created {
    pub latest: Latest,
    pub registered: bool,
}

/// Backs up `source`. A user without a usable record gets a fresh backup key
/// registered under `password`; otherwise the key is recovered with it.
pub async fn create(
    ctx: &Ctx,
    user: &str,
    password: &SecretString,
    source: PathBuf,
    opts: Options,
    report: Report,
) -> Result<Created, ClientError> {
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    let (key, registered) = match vault.status().await? {
        RecordState::Active { .. } => {
            let logged_in = vault.login(password).await?;
            logged_in.session.close().await;
            (logged_in.key, false)
        }
        RecordState::Absent | RecordState::Pending | RecordState::Destroyed => {
            let key = BackupKey::generate();
            vault
                .register(password, &key, ctx.guess_limit, None)
                .await?;
            (key, true)
        }
    };
    let store = BackupStore::local(&ctx.storage_dir, user)?;
    let latest = store.create(&key, source, opts, report).await?;
    Ok(Created { latest, registered })
}

pub async fn restore(
    ctx: &Ctx,
    user: &str,
    password: &SecretString,
    out: PathBuf,
    report: Report,
) -> Result<Latest, ClientError> {
    let store = BackupStore::local(&ctx.storage_dir, user)?;
    if store.latest().await?.is_none() {
        return Err(ClientError::Storage(
            "no backup found in storage for this user".into(),
        ));
    }
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    let logged_in = vault.login(password).await?;
    logged_in.session.close().await;
    let (latest, _) = store.restore(&logged_in.key, out, report).await?;
    Ok(latest)
}

pub struct Status {
    pub record: RecordState,
    pub latest: Option<Latest>,
}

pub async fn status(ctx: &Ctx, user: &str) -> Result<Status, ClientError> {
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    let record = vault.status().await?;
    let store = BackupStore::local(&ctx.storage_dir, user)?;
    Ok(Status {
        record,
        latest: store.latest().await?,
    })
}

/// Deletes the vault record (after a successful login) and every stored object.
pub async fn disable(ctx: &Ctx, user: &str, password: &SecretString) -> Result<usize, ClientError> {
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    match vault.delete(password).await {
        Ok(()) => {}
        // Without a usable record the stored backups can never be opened
        // again; remove them anyway.
        Err(ClientError::NoRecord) | Err(ClientError::Destroyed) => {}
        Err(e) => return Err(e),
    }
    let store = BackupStore::local(&ctx.storage_dir, user)?;
    store.delete_all().await
}

pub fn describe_record(r: &RecordState) -> String {
    match r {
        RecordState::Absent => "none (no backup set up)".into(),
        RecordState::Pending => "registration not completed".into(),
        RecordState::Active {
            attempts,
            guess_limit,
        } => format!(
            "active ({} of {} guesses used, {} remaining)",
            attempts,
            guess_limit,
            guess_limit.saturating_sub(*attempts)
        ),
        RecordState::Destroyed => "destroyed after too many wrong guesses".into(),
    }
}

/// Adds a recovery-key protector (needs the password to recover K) and
/// returns the key to show the user once.
pub async fn add_recovery_key(
    ctx: &Ctx,
    user: &str,
    password: &SecretString,
) -> Result<(String, bkv_client::protectors::RecoveryKey), ClientError> {
    use bkv_client::protectors::{Manifest, RecoveryKey};
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    let logged_in = vault.login(password).await?;
    logged_in.session.close().await;
    let key = logged_in.key;
    let store = BackupStore::local(&ctx.storage_dir, user)?;
    let mut manifest = match store.manifest().await? {
        Some(bytes) => {
            let (m, tag) = Manifest::decode_unverified(&bytes)?;
            if m.key_id == bkv_client::protectors::key_id(&key) {
                m.verify(&tag, &key)?;
                m
            } else {
                // Slots for an older backup key open nothing current.
                Manifest::new(user, &key)
            }
        }
        None => Manifest::new(user, &key),
    };
    let rk = RecoveryKey::generate();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = manifest.add_recovery_key(&key, &rk, now)?;
    store.put_manifest(manifest.seal(&key)).await?;
    Ok((id, rk))
}

/// Restores the latest backup with a recovery key (no vault involved).
pub async fn restore_with_recovery_key(
    storage_dir: &std::path::Path,
    user: &str,
    rk: &bkv_client::protectors::RecoveryKey,
    out: PathBuf,
    report: Report,
) -> Result<Latest, ClientError> {
    use bkv_client::protectors::Manifest;
    let store = BackupStore::local(storage_dir, user)?;
    let bytes = store
        .manifest()
        .await?
        .ok_or_else(|| ClientError::Storage("no recovery key was set up for this user".into()))?;
    let (m, tag) = Manifest::decode_unverified(&bytes)?;
    let key = m.open_with_recovery_key(rk)?;
    m.verify(&tag, &key)?;
    let (latest, _) = store.restore(&key, out, report).await?;
    Ok(latest)
}

pub struct ProtectorInfo {
    pub id: String,
    pub kind: String,
    pub detail: String,
}

pub async fn list_protectors(ctx: &Ctx, user: &str) -> Result<Vec<ProtectorInfo>, ClientError> {
    let mut out = Vec::new();
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    if let RecordState::Active { .. } = vault.status().await? {
        out.push(ProtectorInfo {
            id: "password".into(),
            kind: "password".into(),
            detail: describe_record(&vault.status().await?),
        });
    }
    let store = BackupStore::local(&ctx.storage_dir, user)?;
    if let Some(bytes) = store.manifest().await? {
        let (m, _) = bkv_client::protectors::Manifest::decode_unverified(&bytes)?;
        for s in m.slots {
            out.push(ProtectorInfo {
                id: s.id,
                kind: "recovery-key".into(),
                detail: format!("added at unix time {}", s.created_unix),
            });
        }
    }
    Ok(out)
}

/// Replaces the password protector: logs in with `current`, then registers
/// `new` for the same backup key in that authenticated session. The old
/// password stays valid until the new registration is confirmed.
pub async fn change_password(
    ctx: &Ctx,
    user: &str,
    current: &SecretString,
    new: &SecretString,
) -> Result<(), ClientError> {
    let vault = VaultClient::new(ctx.endpoint.clone(), user);
    let logged_in = vault.login(current).await?;
    vault
        .register(
            new,
            &logged_in.key,
            ctx.guess_limit,
            Some(logged_in.session),
        )
        .await
}
