//! User operations shared by the CLI commands and the demo.

use bkv_client::ArchiveOptions;
use bkv_client::Latest;
use bkv_client::{Account, Unlock};
use bkv_client::{BackupStore, ClientError, Endpoint};
use bkv_wire::vault::RecordState;
use std::path::PathBuf;

/// Progress: called with the bytes done so far.
pub type Report = Box<dyn FnMut(u64) + Send>;

/// What every operation needs: where the vault and the backups are.
pub struct Ctx {
    /// The frontend and the trusted fleet.
    pub endpoint: Endpoint,
    /// Where backups are stored (`bkv_client::open_store`).
    pub storage: String,
    /// The guess limit of new registrations.
    pub guess_limit: u32,
    /// The passkeys' WebAuthn origin.
    pub passkey_origin: String,
}

/// What a backup made.
pub struct Created {
    /// The new latest backup.
    pub latest: Latest,
    /// Whether a new backup key was registered with the vault for it.
    pub registered: bool,
}

impl Ctx {
    /// The account of `user`.
    pub fn account(&self, user: &str) -> Result<Account, ClientError> {
        Ok(Account {
            endpoint: Some(self.endpoint.clone()),
            store: BackupStore::open(&self.storage, user)?,
            user: user.to_owned(),
            guess_limit: self.guess_limit,
            passkey_origin: self.passkey_origin.clone(),
        })
    }
}

/// Backs up `source`. With a password and no vault record (and no other
/// protector), a fresh backup key is registered under it; otherwise K is
/// unlocked with the protector given.
pub async fn create(
    ctx: &Ctx,
    user: &str,
    unlock: Unlock<'_>,
    source: PathBuf,
    opts: ArchiveOptions,
    report: Report,
) -> Result<Created, ClientError> {
    let account = ctx.account(user)?;
    let (key, registered) = account.key_for_backup(unlock).await?;
    let latest = account.store.create(&key, source, opts, report).await?;
    Ok(Created { latest, registered })
}

/// Restores the newest backup the protector's K opens.
pub async fn restore(
    ctx: &Ctx,
    user: &str,
    unlock: Unlock<'_>,
    out: PathBuf,
    report: Report,
) -> Result<Latest, ClientError> {
    let account = ctx.account(user)?;
    // Checked first so that a password guess is not spent on nothing.
    if account.store.latest().await?.is_none() && account.store.list().await?.is_empty() {
        return Err(ClientError::NoBackup);
    }
    let unlocked = account.unlock(unlock).await?;
    account.restore(&unlocked, out, report).await
}

/// What `backup status` shows.
pub struct Status {
    /// The vault record's state.
    pub record: RecordState,
    /// The latest backup, if any.
    pub latest: Option<Latest>,
}

/// The vault record's state and the latest backup of `user`.
pub async fn status(ctx: &Ctx, user: &str) -> Result<Status, ClientError> {
    let record = ctx.account(user)?.record_state().await?;
    let store = BackupStore::open(&ctx.storage, user)?;
    Ok(Status {
        record,
        latest: store.latest().await?,
    })
}

/// A vault record's state in words.
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
        RecordState::Moved => {
            "moved to a fleet this client does not serve yet (update the client config)".into()
        }
    }
}

/// Restores the latest backup with a recovery key: storage only, no vault
/// or frontend involved.
pub async fn restore_with_recovery_key(
    storage: &str,
    user: &str,
    rk: &bkv_client::RecoveryKey,
    out: PathBuf,
    report: Report,
) -> Result<Latest, ClientError> {
    let account = Account {
        endpoint: None,
        store: BackupStore::open(storage, user)?,
        user: user.to_owned(),
        guess_limit: 0,
        passkey_origin: String::new(),
    };
    let unlocked = account.unlock(Unlock::RecoveryKey(rk)).await?;
    account.restore(&unlocked, out, report).await
}
