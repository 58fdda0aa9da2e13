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
//! lists older fleets besides the preferred one, a record still live on an older
//! fleet is the user's, whatever the preferred fleet holds (a token holder may
//! have registered there first), and a password login moves it (docs/formats.md
//! "Moving a record"; crash points named in parentheses): log in on the old fleet
//! (counted like any guess) (`migrate-logged-in-old`); on the preferred fleet
//! start a registration of the same K with the same limit; the old fleet signs
//! an intent naming it, with which the new fleet stores it
//! (`migrate-registered-new`); the old record moves out — erased there, it grants
//! no further guess — and the old fleet signs a move ticket
//! (`migrate-moved-out`); the ticket makes the registration live on the new fleet
//! with the old record's count (`migrate-moved-in`). A crash after the move-out
//! is finished by the next login, which fetches the ticket again (it is public).
//! So the two fleets together never grant more than the limit, whatever the
//! operator drops, and only the right password moves a record.

use crate::error::{ClientError, Result};
use crate::keys::BackupKey;
use crate::passkey::{self, Authenticator};
use crate::session::{Endpoint, FleetTarget};
use crate::slots::{
    key_id, new_slot_id, Manifest, ManifestError, PasskeyParams, RecoveryKey, SlotKind, SlotSecret,
};
use crate::storage::{BackupStore, Latest};
use crate::vault::VaultClient;
use bkv_wire::vault::{MoveTicket, RecordState, SignedMoveTicket, VaultRequest, VaultResponse};
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
    /// Where this user's backups and protector manifests are stored.
    pub store: BackupStore,
    /// The user's id at the vault and in the manifests (the id `store` was opened for).
    pub user: String,
    /// Guesses a vault record registered from here allows before the vault destroys it.
    pub guess_limit: u32,
    /// WebAuthn origin the app's passkeys are bound to.
    pub passkey_origin: String,
}

/// A protector presented to unlock K.
pub enum Unlock<'a> {
    /// The password: an OPAQUE login at the vault (each try counts as a guess until one succeeds).
    Password(&'a SecretString),
    /// A recovery key: opens its slot in a manifest in storage, without the vault.
    RecoveryKey(&'a RecoveryKey),
    /// A passkey, through the platform authenticator (PRF output plus the relying party's share).
    Passkey(&'a mut dyn Authenticator),
}

/// K, and the verified manifest for it (if any).
pub struct Unlocked {
    /// The backup key K.
    pub key: BackupKey,
    /// K's authenticated slot manifest; `None` when storage has no manifest for K.
    pub manifest: Option<Manifest>,
    /// `password` or the slot id that opened K.
    pub via: String,
    /// The RP's grant for the protector that opened K (password or
    /// passkey; a recovery key proves nothing to the RP).
    pub grant: Option<passkey::Grant>,
}

/// One protector of the current backup key, as [`Account::list`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ProtectorInfo {
    /// `password`, or the slot id (`rk-…`, `pk-…`).
    pub id: String,
    /// `password`, `recovery-key` or `passkey`.
    pub kind: String,
    /// For people: the guesses used of the limit, or when the slot was added.
    pub detail: String,
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// Hex id of the new backup key.
    pub key_id: String,
    /// Slots (recovery keys and passkeys) in the new key's manifest.
    pub slots: usize,
    /// Whether a password protector remains (re-registered for the new key).
    pub password: bool,
    /// The latest backup re-encrypted under the new key; `None` when there was no backup.
    pub backup: Option<Latest>,
    /// Manifests and backups of other keys deleted from storage.
    pub deleted_objects: usize,
    /// Removed passkeys still registered at the RP: without the password or
    /// a passkey there was no grant to delete them. They open nothing made
    /// after this rotation.
    pub passkeys_left_at_rp: usize,
}

/// What `disable` deleted.
#[derive(Debug, Clone, Serialize)]
pub struct Disabled {
    /// Objects deleted from the user's storage (backups, manifests, `latest.json`).
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

    /// The password record's state, on the fleet that holds it: an older fleet the record has
    /// not moved from (it holds the user's record whatever the preferred fleet holds), else the
    /// preferred fleet.
    pub async fn record_state(&self) -> Result<RecordState> {
        for f in &self.endpoint()?.previous {
            let s = self.vault_on(f)?.status().await?;
            if matches!(s, RecordState::Active { .. }) {
                return Ok(s);
            }
        }
        let state = self.vault()?.status().await?;
        if !matches!(state, RecordState::Absent | RecordState::Pending) {
            return Ok(state);
        }
        for f in &self.endpoint()?.previous {
            if self.vault_on(f)?.status().await? == RecordState::Destroyed {
                return Ok(RecordState::Destroyed);
            }
        }
        Ok(state)
    }

    /// A password login on the preferred fleet, moving the record there
    /// first if it still lives on an older fleet (see the module docs).
    pub async fn login(&self, password: &SecretString) -> Result<crate::vault::LoggedIn> {
        let vault = self.vault()?;
        for f in &self.endpoint()?.previous {
            let old = self.vault_on(f)?;
            match old.status().await? {
                RecordState::Active { guess_limit, .. } => {
                    self.move_record(&old, &vault, password, guess_limit)
                        .await?;
                    break;
                }
                RecordState::Moved => {
                    // A move interrupted after the old record moved out: finish it, if it
                    // moved here (else the fleet it moved to is further along the list).
                    let ticket = old.move_ticket().await?;
                    if moved_to(&ticket).as_ref() == Some(&vault.endpoint.fleet.fleet_id) {
                        vault.move_in(ticket).await?;
                        break;
                    }
                }
                RecordState::Destroyed | RecordState::Absent | RecordState::Pending => {}
            }
        }
        match vault.status().await? {
            RecordState::Active { .. } => vault.login(password).await,
            RecordState::Destroyed => Err(ClientError::Destroyed),
            _ => {
                for f in &self.endpoint()?.previous {
                    if self.vault_on(f)?.status().await? == RecordState::Destroyed {
                        return Err(ClientError::Destroyed);
                    }
                }
                Err(ClientError::NoRecord)
            }
        }
    }

    /// Moves the record from `old` to `new` (module docs): a login on `old`, the registration
    /// on `new` stored with `old`'s intent ticket, the move-out on `old`, the move-in on `new`.
    async fn move_record(
        &self,
        old: &VaultClient,
        new: &VaultClient,
        password: &SecretString,
        guess_limit: u32,
    ) -> Result<()> {
        let mut li = old.login(password).await?;
        crate::crash_point("migrate-logged-in-old");
        let to_fleet = new.endpoint.fleet.fleet_id.clone();
        let mut s = crate::session::Session::open(&new.endpoint, &new.user_id).await?;
        let prepared = new.prepare(&mut s, password, &li.key, guess_limit).await?;
        let pending_digest = prepared.digest();
        let intent = ticket_from(
            li.session
                .call(&VaultRequest::MoveIntent {
                    to_fleet: to_fleet.clone(),
                    pending_digest,
                })
                .await?,
        )?;
        new.store_move(s, &prepared, intent).await?;
        crate::crash_point("migrate-registered-new");
        let moved = li
            .session
            .call(&VaultRequest::MoveOut {
                to_fleet,
                pending_digest,
            })
            .await;
        li.session.close().await;
        let ticket = ticket_from(moved?)?;
        crate::crash_point("migrate-moved-out");
        new.move_in(ticket).await?;
        crate::crash_point("migrate-moved-in");
        Ok(())
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

/// The ticket in a vault's answer.
fn ticket_from(r: VaultResponse) -> Result<SignedMoveTicket> {
    match r {
        VaultResponse::MoveTicket { ticket } => Ok(ticket),
        VaultResponse::Error(e) => Err(e.into()),
        other => Err(ClientError::Protocol(format!(
            "unexpected response {other:?}"
        ))),
    }
}

/// The fleet a move ticket moves its record to (read, not verified: the fleet it names verifies
/// it).
fn moved_to(ticket: &SignedMoveTicket) -> Option<String> {
    bkv_wire::decode::<MoveTicket>(&ticket.ticket, bkv_wire::vault::MAX_MOVE_TICKET)
        .ok()
        .map(|t| t.to_fleet)
}

fn key_id_of(m: &Option<Manifest>) -> [u8; 16] {
    m.as_ref().map(|m| m.key_id).unwrap_or([0u8; 16])
}
