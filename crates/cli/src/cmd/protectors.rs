//! `bkv backup protectors`: list, add and remove what can unlock the backup key.

use crate::unlock::{read_password, read_unlock, UnlockArgs};
use anyhow::Context;
use bkv_cli::{connect, Global, UsageError};
use clap::Subcommand;
use std::path::PathBuf;

use super::validate_user;

#[derive(Subcommand)]
pub enum ProtectorsCommand {
    /// Show the protectors of the current backup key.
    List {
        #[arg(long)]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Add a protector, after unlocking with an existing one.
    Add {
        #[arg(long)]
        user: String,
        /// Register a new passkey (PRF) in the store given by --new-passkey-store.
        #[arg(long, requires = "new_passkey_store")]
        passkey: bool,
        /// Credential store file that receives the new passkey.
        #[arg(long, value_name = "FILE")]
        new_passkey_store: Option<PathBuf>,
        /// Generate a 256-bit recovery key (shown once) that restores without the vault.
        #[arg(long)]
        recovery_key: bool,
        /// Add the password protector; the new password is the last line of standard input.
        #[arg(long)]
        password: bool,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
    /// Remove a protector (`password` or a slot id from `list`). The backup
    /// key is rotated so the removed protector opens nothing new, then the
    /// data under the old key is deleted.
    Remove {
        #[arg(long)]
        user: String,
        id: String,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
}

pub async fn run(cli: &Global, command: &ProtectorsCommand) -> anyhow::Result<()> {
    match command {
        ProtectorsCommand::List { user, json } => {
            validate_user(user)?;
            let ctx = connect(cli, user).await?;
            let list = ctx.account(user)?.list().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            if list.is_empty() {
                println!("no protectors: backups are not set up for {user}");
            }
            for p in list {
                println!("{:<20} {:<13} {}", p.id, p.kind, p.detail);
            }
            Ok(())
        }
        ProtectorsCommand::Add {
            user,
            passkey,
            new_passkey_store,
            recovery_key,
            password,
            unlock,
        } => {
            validate_user(user)?;
            let kinds = [*passkey, *recovery_key, *password];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(UsageError(
                    "add exactly one of --passkey, --recovery-key, --password".into(),
                )
                .into());
            }
            let mut unlocker = read_unlock(unlock)?;
            let new_password = if *password {
                Some(
                    read_password(true)
                        .context("the new password goes on the last line of standard input")?,
                )
            } else {
                None
            };
            let ctx = connect(cli, user).await?;
            let account = ctx.account(user)?;
            let unlocked = account.unlock(unlocker.unlock()).await?;
            if let Some(store) = new_passkey_store.as_deref().filter(|_| *passkey) {
                let mut auth = bkv_soft_passkey::SoftAuthenticator::new(store);
                let id = account.add_passkey(&unlocked, &mut auth).await?;
                println!(
                    "added passkey protector {id} (credential in {})",
                    store.display()
                );
            } else if *recovery_key {
                let (id, rk) = account.add_recovery_key(&unlocked).await?;
                print_recovery_key(&id, &rk);
            } else if let Some(pw) = new_password {
                account.add_password(&unlocked, &pw).await?;
                println!("added the password protector for {user}");
            }
            Ok(())
        }
        ProtectorsCommand::Remove { user, id, unlock } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let ctx = connect(cli, user).await?;
            let account = ctx.account(user)?;
            let unlocked = account.unlock(unlocker.unlock()).await?;
            let (slots, password) = if id == "password" {
                (Vec::new(), true)
            } else {
                (vec![id.clone()], false)
            };
            let r = account
                .rotate(unlocked, unlocker.password(), &slots, password)
                .await?;
            println!(
                "removed protector {id}; the backup key was rotated ({} protector(s) remain) \
                 and {} object(s) under the old key were deleted",
                r.slots + usize::from(r.password),
                r.deleted_objects
            );
            if r.passkeys_left_at_rp > 0 {
                println!(
                    "note: the removed passkey stays registered at the relying party (a recovery key is no proof it accepts); it opens nothing made from now on"
                );
            }
            Ok(())
        }
    }
}

fn print_recovery_key(id: &str, rk: &bkv_client::RecoveryKey) {
    println!("added recovery key protector {id}");
    println!("write this recovery key down and keep it safe; it is shown only now:");
    println!();
    println!("    {}", rk.display());
    println!();
    println!("anyone holding it can restore your backups without your password.");
}
