//! The backup key's protectors as one set (LUKS-like key slots): unlock K
//! with any one of them, add, remove, rotate K, disable.
//!
//! - `password`: the vault record (OPAQUE, guess-limited) wraps K.
//! - `recovery-key` and `passkey`: slots in the authenticated manifest next to
//!   the backups (`protectors/<key id>.bin`), see [`crate::slots`].
//!
//! Rotation order (each step is a `crash_point`; a crash after any of them
//! leaves every remaining protector able to restore a backup):
//! 1. `reencrypted`: the latest backup re-encrypted under the new K' is
//!    uploaded beside the old one (nothing points to it yet).
//! 2. `manifest-written`: the manifest for K' (remaining slots re-sealed).
//! 3. `vault-pending`, `vault-switched`: the vault record re-registered with
//!    K' in a session the password authenticated (the old record stays valid
//!    until the confirm).
//! 4. `latest-switched`: `latest.json` names the K' backup.
//! 5. `vault-deleted` / `passkeys-deleted`: removed password or passkeys are
//!    deleted at the vault / relying party.
//! 6. `old-manifests-deleted`, then the old backups: data under the old K goes.
//!
//! Restores pick the backup by key id, and unlocking tries the newest
//! manifest first, so every intermediate state restores.
//!
//! Fleet rotation: the password record lives on one fleet. While a bundle
//! lists older fleets besides the preferred one, a password login that finds
//! the record only on an older fleet moves it (crash points named in parentheses):
//! log in there (counted like any guess) (`migrate-logged-in-old`), register
//! the same K with the same guess limit on the preferred fleet (pending,
//! then confirmed) (`migrate-registered-new`), delete the old record in the
//! authenticated session (`migrate-deleted-old`). Only the right password
//! moves a record; until then it keeps its attempts on the old fleet. A
//! crash after the registration leaves the record live on both until the next
//! successful login, which deletes the old one.

use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use crate::passkey::{self, Authenticator};
use crate::session::{Endpoint, FleetTarget};
use crate::slots::{
    key_id, new_slot_id, Manifest, ManifestError, PasskeyParams, RecoveryKey, SlotKind, SlotSecret,
};
use crate::storage::{BackupStore, Latest};
use crate::vault::VaultClient;
use bkv_wire::vault::RecordState;
use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;

mod protectors;
mod rotate;
mod unlock;

/// One user's backups and protectors.
pub struct Account {
    /// The frontend (vault and passkey relying party). Not needed to restore
    /// with a recovery key.
    pub endpoint: Option<Endpoint>,
    pub store: BackupStore,
    pub user: String,
    pub guess_limit: u32,
    /// WebAuthn origin the app's passkeys are bound to.
    pub passkey_origin: String,
}

/// A protector presented to unlock K.
pub enum Unlock<'a> {
    Password(&'a SecretString),
    RecoveryKey(&'a RecoveryKey),
    Passkey(&'a mut dyn Authenticator),
}

/// K, and the verified manifest for it (if any).
pub struct Unlocked {
    pub key: BackupKey,
    pub manifest: Option<Manifest>,
    /// `password` or the slot id that opened K.
    pub via: String,
    /// The RP's grant for the protector that opened K (password or
    /// passkey; a recovery key proves nothing to the RP).
    pub grant: Option<passkey::Grant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProtectorInfo {
    pub id: String,
    pub kind: String,
    pub detail: String,
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub key_id: String,
    pub slots: usize,
    pub password: bool,
    pub backup: Option<Latest>,
    pub deleted_objects: usize,
    /// Removed passkeys still registered at the RP: without the password or
    /// a passkey there was no grant to delete them. They open nothing made
    /// after this rotation.
    pub passkeys_left_at_rp: usize,
}

/// What `disable` deleted.
#[derive(Debug, Clone, Serialize)]
pub struct Disabled {
    pub deleted_objects: usize,
    /// Passkeys were left registered at the RP (no grant: unlocked with a
    /// recovery key). They open nothing: every manifest is gone.
    pub passkeys_left_at_rp: bool,
}

fn gone(what: &str) -> ClientError {
    ClientError::Protectors(what.to_owned())
}

impl Account {
    fn endpoint(&self) -> Result<&Endpoint> {
        self.endpoint
            .as_ref()
            .ok_or_else(|| ClientError::Unavailable("no frontend configured".into()))
    }

    /// The preferred fleet's vault.
    fn vault(&self) -> Result<VaultClient> {
        Ok(VaultClient::new(self.endpoint()?.clone(), &self.user))
    }

    fn vault_on(&self, fleet: &FleetTarget) -> Result<VaultClient> {
        Ok(VaultClient::new(self.endpoint()?.on(fleet), &self.user))
    }

    /// The password record's state, on the fleet that holds it: the
    /// preferred fleet, or an older one the record has not moved from.
    pub async fn record_state(&self) -> Result<RecordState> {
        let state = self.vault()?.status().await?;
        if !matches!(state, RecordState::Absent | RecordState::Pending) {
            return Ok(state);
        }
        for f in &self.endpoint()?.previous {
            let s = self.vault_on(f)?.status().await?;
            if matches!(s, RecordState::Active { .. } | RecordState::Destroyed) {
                return Ok(s);
            }
        }
        Ok(state)
    }

    /// A password login on the preferred fleet, moving the record there
    /// first if it still lives on an older fleet (see the module docs).
    pub async fn login(&self, password: &SecretString) -> Result<crate::vault::LoggedIn> {
        let vault = self.vault()?;
        match vault.status().await? {
            RecordState::Active { .. } => {
                let li = vault.login(password).await?;
                self.delete_left_behind(password).await;
                return Ok(li);
            }
            RecordState::Destroyed => return Err(ClientError::Destroyed),
            RecordState::Absent | RecordState::Pending => {}
        }
        for f in &self.endpoint()?.previous {
            let old = self.vault_on(f)?;
            let guess_limit = match old.status().await? {
                RecordState::Active { guess_limit, .. } => guess_limit,
                RecordState::Destroyed => return Err(ClientError::Destroyed),
                RecordState::Absent | RecordState::Pending => continue,
            };
            let li = old.login(password).await?;
            crate::crash_point("migrate-logged-in-old");
            vault.register(password, &li.key, guess_limit, None).await?;
            crate::crash_point("migrate-registered-new");
            old.delete_in(li.session).await?;
            crate::crash_point("migrate-deleted-old");
            return vault.login(password).await;
        }
        Err(ClientError::NoRecord)
    }

    /// After a login on the preferred fleet: deletes a record an interrupted
    /// move left live on an older fleet (the same password opens it). Best
    /// effort: the login already succeeded.
    async fn delete_left_behind(&self, password: &SecretString) {
        let Ok(endpoint) = self.endpoint() else {
            return;
        };
        for f in &endpoint.previous {
            let Ok(old) = self.vault_on(f) else { continue };
            if matches!(old.status().await, Ok(RecordState::Active { .. })) {
                if let Err(e) = old.delete(password).await {
                    tracing::warn!(fleet = %f.fleet_id, error = %e, "could not delete the record left on an older fleet");
                }
            }
        }
    }

    /// Every manifest in storage, decoded but not yet authenticated, newest
    /// generation first. A manifest that does not decode is an error: storage
    /// tampered with it.
    async fn manifests(&self) -> Result<Vec<(Manifest, [u8; 32])>> {
        let mut out = Vec::new();
        for (named, bytes) in self.store.manifests().await? {
            let (m, tag) = Manifest::decode_unverified(&bytes)?;
            if m.key_id != named || m.user_id != self.user {
                return Err(ManifestError::Tampered.into());
            }
            out.push((m, tag));
        }
        out.sort_by_key(|(m, _)| std::cmp::Reverse(m.generation));
        Ok(out)
    }

    async fn next_generation(&self) -> Result<u64> {
        Ok(self
            .manifests()
            .await?
            .iter()
            .map(|(m, _)| m.generation)
            .max()
            .unwrap_or(0)
            .saturating_add(1))
    }

    /// The authenticated manifest for `key`, if storage has one.
    pub async fn manifest_for(&self, key: &BackupKey) -> Result<Option<Manifest>> {
        let Some(bytes) = self.store.manifest(&key_id(key)).await? else {
            return Ok(None);
        };
        let (m, tag) = Manifest::decode_unverified(&bytes)?;
        m.verify(&tag, key)?;
        Ok(Some(m))
    }

    async fn password_state(&self) -> Result<bool> {
        Ok(matches!(
            self.record_state().await?,
            RecordState::Active { .. }
        ))
    }

    /// The protectors of the current backup key.
    pub async fn list(&self) -> Result<Vec<ProtectorInfo>> {
        let mut out = Vec::new();
        if self.endpoint.is_some() {
            let state = self.record_state().await?;
            if let RecordState::Active {
                attempts,
                guess_limit,
            } = state
            {
                out.push(ProtectorInfo {
                    id: "password".into(),
                    kind: "password".into(),
                    detail: format!("vault record, {attempts} of {guess_limit} guesses used"),
                });
            }
        }
        // The manifest of the latest backup's key, else the newest one.
        let latest = self.store.latest().await?.map(|l| l.key_id);
        let manifests = self.manifests().await?;
        let current = manifests
            .iter()
            .find(|(m, _)| Some(hex::encode(m.key_id)) == latest)
            .or(manifests.first());
        if let Some((m, _)) = current {
            for s in &m.slots {
                out.push(ProtectorInfo {
                    id: s.id.clone(),
                    kind: s.kind.name().into(),
                    detail: format!("added at unix time {}", s.created_unix),
                });
            }
        }
        Ok(out)
    }
}

fn key_id_of(m: &Option<Manifest>) -> [u8; 16] {
    m.as_ref().map(|m| m.key_id).unwrap_or([0u8; 16])
}
