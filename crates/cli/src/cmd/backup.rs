//! `bkv backup`: create, restore, change the password, rotate the key, status, disable.

use crate::progress::{progress, restore_progress};
use crate::unlock::{read_password, read_unlock, UnlockArgs, Unlocker};
use anyhow::Context;
use bkv_cli::{connect, ops, storage_location, Global, UsageError};
use clap::Subcommand;
use std::path::PathBuf;

use super::protectors::{self, ProtectorsCommand};
use super::validate_user;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Back up a file or a directory tree (sets up the backup key on first
    /// use with --password-stdin).
    Create {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Store without zstd compression.
        #[arg(long)]
        no_compress: bool,
        path: PathBuf,
    },
    /// Restore the latest backup to a new path, with any one protector.
    Restore {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Change the password: reads the current password, then the new one, as
    /// two lines of standard input.
    ChangePassword {
        #[arg(long)]
        user: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// List, add or remove protectors of the backup key.
    Protectors {
        #[command(subcommand)]
        command: ProtectorsCommand,
    },
    /// Replace the backup key: a new key for every protector, the latest
    /// backup re-encrypted under it, then everything under the old key deleted.
    RotateKey {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
    /// Show the vault record and the latest backup.
    Status {
        #[arg(long)]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete the vault record, every passkey at the frontend and every
    /// stored backup and manifest, after confirming with a protector (the
    /// password, whenever a vault record exists).
    Disable {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
}

pub async fn run(cli: &Global, command: &BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create {
            user,
            unlock,
            no_compress,
            path,
        } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            if !path.exists() {
                return Err(UsageError(format!("{} does not exist", path.display())).into());
            }
            let ctx = connect(cli, user).await?;
            let (pb, report) = progress(bkv_client::source_size(path), "encrypting");
            let opts = bkv_client::ArchiveOptions {
                compress: !no_compress,
                ..Default::default()
            };
            let created =
                ops::create(&ctx, user, unlocker.unlock(), path.clone(), opts, report).await;
            pb.finish_and_clear();
            let created = created?;
            if created.registered {
                println!(
                    "set up a new backup key for {user} (guess limit {})",
                    ctx.guess_limit
                );
            }
            println!(
                "backup created: {} ({} bytes encrypted)",
                created.latest.object, created.latest.size
            );
            Ok(())
        }
        BackupCommand::Restore { user, unlock, out } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let latest = if let Unlocker::RecoveryKey(rk) = &unlocker {
                // Storage only: works with the vault and frontend down.
                let storage = storage_location(cli)?;
                let (pb, report) = restore_progress(&storage, user).await?;
                let r =
                    ops::restore_with_recovery_key(&storage, user, rk, out.clone(), report).await;
                pb.finish_and_clear();
                r?
            } else {
                let ctx = connect(cli, user).await?;
                let (pb, report) = restore_progress(&ctx.storage, user).await?;
                let r = ops::restore(&ctx, user, unlocker.unlock(), out.clone(), report).await;
                pb.finish_and_clear();
                r?
            };
            let via = match unlocker {
                Unlocker::Password(_) => "the password",
                Unlocker::RecoveryKey(_) => "the recovery key",
                Unlocker::Passkey(_) => "the passkey",
            };
            println!("restored {} to {} with {via}", latest.object, out.display());
            Ok(())
        }
        BackupCommand::ChangePassword {
            user,
            password_stdin,
        } => {
            validate_user(user)?;
            let current = read_password(*password_stdin)?;
            let new = read_password(*password_stdin)
                .context("the new password goes on the second line of standard input")?;
            let ctx = connect(cli, user).await?;
            ctx.account(user)?.change_password(&current, &new).await?;
            println!("password changed for {user}; the old password no longer opens the backups");
            Ok(())
        }
        BackupCommand::Protectors { command } => protectors::run(cli, command).await,
        BackupCommand::RotateKey { user, unlock } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let ctx = connect(cli, user).await?;
            let account = ctx.account(user)?;
            let unlocked = account.unlock(unlocker.unlock()).await?;
            let r = account
                .rotate(unlocked, unlocker.password(), &[], false)
                .await?;
            println!(
                "rotated the backup key of {user}: new key {} sealed for {} protector(s){}; \
                 latest backup re-encrypted; {} object(s) under the old key deleted",
                r.key_id,
                r.slots + usize::from(r.password),
                if r.password {
                    " incl. the password"
                } else {
                    ""
                },
                r.deleted_objects
            );
            Ok(())
        }
        BackupCommand::Status { user, json } => {
            validate_user(user)?;
            let ctx = connect(cli, user).await?;
            let s = ops::status(&ctx, user).await?;
            if *json {
                let v = serde_json::json!({
                    "user": user,
                    "record": s.record,
                    "latest_backup": s.latest,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("user: {user}");
                println!("vault record: {}", ops::describe_record(&s.record));
                match &s.latest {
                    Some(l) => println!(
                        "latest backup: {} ({} bytes, created at unix time {})",
                        l.object, l.size, l.created_unix
                    ),
                    None => println!("latest backup: none"),
                }
            }
            Ok(())
        }
        BackupCommand::Disable { user, unlock } => {
            validate_user(user)?;
            let mut unlocker = read_unlock(unlock)?;
            let ctx = connect(cli, user).await?;
            let account = ctx.account(user)?;
            // Confirms the user holds a protector before anything goes (a
            // password is checked by the vault login itself).
            let unlocked = match unlocker.password() {
                Some(_) => None,
                None => Some(account.unlock(unlocker.unlock()).await?),
            };
            let d = account
                .disable(unlocker.password(), unlocked.as_ref())
                .await?;
            println!(
                "backups disabled for {user}: vault record deleted, {} stored objects deleted",
                d.deleted_objects
            );
            if d.passkeys_left_at_rp {
                println!(
                    "note: passkeys stay registered at the relying party (a recovery key is no proof it accepts); they open nothing now"
                );
            }
            Ok(())
        }
    }
}
