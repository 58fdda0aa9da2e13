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
