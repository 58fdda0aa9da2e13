//! Which protector unlocks the backup key, from the command line: secrets come from standard
//! input (never from arguments, which other users of the machine can read).

use anyhow::Context;
use bkv_cli::UsageError;
use bkv_client::ClientError;
use bkv_client::Unlock;
use secrecy::SecretString;
use std::io::BufRead;
use std::path::PathBuf;

/// Which protector unlocks the backup key. Secrets come from standard
/// input, one per line, in the order the flags are listed here.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct UnlockArgs {
    /// The password (the vault protector), read from standard input.
    #[arg(long, conflicts_with_all = ["recovery_key_stdin", "passkey_store"])]
    pub password_stdin: bool,
    /// A recovery key, read from standard input (no vault needed).
    #[arg(long, conflicts_with = "passkey_store")]
    pub recovery_key_stdin: bool,
    /// A passkey from this credential store file (a software authenticator
    /// standing in for the platform's passkey store).
    #[arg(long, value_name = "FILE")]
    pub passkey_store: Option<PathBuf>,
}

pub fn read_password(flag: bool) -> anyhow::Result<SecretString> {
    if !flag {
        return Err(
            UsageError("pass the password on standard input with --password-stdin".into()).into(),
        );
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    zeroize::Zeroize::zeroize(&mut line);
    if pw.is_empty() {
        return Err(UsageError("the password on standard input is empty".into()).into());
    }
    Ok(SecretString::from(pw))
}

/// A protector given on the command line, ready to unlock K.
pub enum Unlocker {
    Password(SecretString),
    RecoveryKey(bkv_client::RecoveryKey),
    Passkey(bkv_soft_passkey::SoftAuthenticator),
}

impl Unlocker {
    pub fn unlock(&mut self) -> Unlock<'_> {
        match self {
            Unlocker::Password(p) => Unlock::Password(p),
            Unlocker::RecoveryKey(k) => Unlock::RecoveryKey(k),
            Unlocker::Passkey(a) => Unlock::Passkey(a),
        }
    }

    pub fn password(&self) -> Option<&SecretString> {
        match self {
            Unlocker::Password(p) => Some(p),
            _ => None,
        }
    }
}

fn read_recovery_key() -> anyhow::Result<bkv_client::RecoveryKey> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read recovery key from stdin")?;
    let rk = bkv_client::RecoveryKey::parse(&line).map_err(ClientError::from);
    zeroize::Zeroize::zeroize(&mut line);
    Ok(rk?)
}

/// Reads the protector the flags name (secrets from stdin).
pub fn read_unlock(args: &UnlockArgs) -> anyhow::Result<Unlocker> {
    if args.password_stdin {
        Ok(Unlocker::Password(read_password(true)?))
    } else if args.recovery_key_stdin {
        Ok(Unlocker::RecoveryKey(read_recovery_key()?))
    } else if let Some(store) = &args.passkey_store {
        if !store.exists() {
            return Err(
                UsageError(format!("passkey store {} does not exist", store.display())).into(),
            );
        }
        Ok(Unlocker::Passkey(bkv_soft_passkey::SoftAuthenticator::new(
            store,
        )))
    } else {
        Err(UsageError(
            "name a protector: --password-stdin, --recovery-key-stdin or --passkey-store FILE"
                .into(),
        )
        .into())
    }
}
