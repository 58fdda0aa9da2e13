//! The backup key's protectors as one set (LUKS-like key slots): unlock K
//! with any one of them, add, remove, rotate K, disable.
//!
//! - `password`: the vault record (OPAQUE, guess-limited) wraps K.
//! - `recovery-key` and `passkey`: slots in the authenticated manifest next to
//!   the backups (`protectors/<key id>.bin`), see [`crate::protectors`].
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
use crate::protectors::{
    key_id, new_slot_id, Manifest, ManifestError, PasskeyParams, RecoveryKey, SlotKind, SlotSecret,
};
use crate::session::{Endpoint, FleetTarget};
use crate::storage::{BackupStore, Latest};
use crate::vault::VaultClient;
use bkv_wire::vault::RecordState;
use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;

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

    /// Recovers K with one protector.
    pub async fn unlock(&self, with: Unlock<'_>) -> Result<Unlocked> {
        match with {
            Unlock::Password(pw) => {
                let logged_in = self.login(pw).await?;
                let grant = self.grant_for(&logged_in.session).await;
                logged_in.session.close().await;
                let manifest = self.manifest_for(&logged_in.key).await?;
                Ok(Unlocked {
                    key: logged_in.key,
                    manifest,
                    via: "password".into(),
                    grant,
                })
            }
            Unlock::RecoveryKey(rk) => {
                let manifests = self.manifests().await?;
                if manifests.is_empty() {
                    return Err(gone("no recovery key or passkey is set up for this user"));
                }
                for (m, tag) in manifests {
                    for slot in m.slots.iter().filter(|s| s.kind == SlotKind::RecoveryKey) {
                        if let Ok(key) = m.open_slot(slot, &rk.slot_secret(&slot.id)) {
                            m.verify(&tag, &key)?;
                            let via = slot.id.clone();
                            return Ok(Unlocked {
                                key,
                                manifest: Some(m),
                                via,
                                grant: None,
                            });
                        }
                    }
                }
                Err(gone(
                    "this recovery key is not (or no longer) a protector of these backups",
                ))
            }
            Unlock::Passkey(auth) => self.unlock_with_passkey(auth).await,
        }
    }

    async fn unlock_with_passkey(&self, auth: &mut dyn Authenticator) -> Result<Unlocked> {
        let endpoint = self.endpoint()?;
        let mut tried = std::collections::HashSet::new();
        let mut last_err = None;
        for (m, tag) in self.manifests().await? {
            for slot in m.slots.iter().filter(|s| s.kind == SlotKind::Passkey) {
                let Some(p) = &slot.passkey else { continue };
                if !tried.insert(slot.id.clone()) {
                    continue; // the same slot in an older manifest
                }
                let asserted = passkey::assert(
                    endpoint,
                    auth,
                    &self.passkey_origin,
                    &p.credential_id,
                    &p.prf_salt,
                )
                .await;
                let (rp, prf) = match asserted {
                    Ok(r) => r,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                };
                let secret = SlotSecret::from_passkey(&prf, &rp.rp_share, &slot.id);
                match m.open_slot(slot, &secret) {
                    Ok(key) => {
                        m.verify(&tag, &key)?;
                        let via = slot.id.clone();
                        return Ok(Unlocked {
                            key,
                            manifest: Some(m),
                            via,
                            grant: rp.grant,
                        });
                    }
                    Err(_) => {
                        last_err = Some(gone(
                            "the passkey's PRF output does not open its slot (wrong authenticator or PRF salt)",
                        ))
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            gone("no passkey is a protector of these backups (it was removed, or never added)")
        }))
    }

    /// The RP's grant for a logged-in vault session; `None` when the
    /// frontend has no passkeys (or refuses: then nothing needs one).
    async fn grant_for(&self, session: &crate::session::Session) -> Option<passkey::Grant> {
        let endpoint = self.endpoint().ok()?;
        match passkey::grant_from_session(endpoint, session.id()).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "no passkey grant for this session");
                None
            }
        }
    }

    /// Restores the newest backup K opens.
    pub async fn restore(
        &self,
        unlocked: &Unlocked,
        out: std::path::PathBuf,
        report: Box<dyn FnMut(u64) + Send>,
    ) -> Result<Latest> {
        Ok(self.store.restore(&unlocked.key, out, report).await?.0)
    }

    async fn manifest_to_extend(&self, unlocked: &Unlocked) -> Result<Manifest> {
        Ok(match &unlocked.manifest {
            Some(m) => m.clone(),
            None => {
                let mut m = Manifest::new(&self.user, &unlocked.key);
                m.generation = self.next_generation().await?;
                m
            }
        })
    }

    /// Adds a recovery key; returns its slot id and the key to show once.
    pub async fn add_recovery_key(&self, unlocked: &Unlocked) -> Result<(String, RecoveryKey)> {
        let mut m = self.manifest_to_extend(unlocked).await?;
        let rk = RecoveryKey::generate();
        let id = m.add_recovery_key(&unlocked.key, &rk)?;
        self.store
            .put_manifest(&m.key_id, m.seal(&unlocked.key))
            .await?;
        Ok((id, rk))
    }

    /// Registers a passkey at the relying party and adds its slot.
    pub async fn add_passkey(
        &self,
        unlocked: &Unlocked,
        auth: &mut dyn Authenticator,
    ) -> Result<String> {
        let mut m = self.manifest_to_extend(unlocked).await?;
        let mut salt = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let id = new_slot_id(SlotKind::Passkey);
        let (rp, prf) = passkey::register(
            self.endpoint()?,
            auth,
            &self.passkey_origin,
            &salt,
            unlocked.grant.as_ref(),
        )
        .await?;
        let secret = SlotSecret::from_passkey(&prf, &rp.rp_share, &id);
        let params = PasskeyParams {
            rp_id: self.passkey_origin.clone(),
            credential_id: rp.credential_id,
            prf_salt: salt,
        };
        m.add_slot(&unlocked.key, SlotKind::Passkey, &id, &secret, Some(params))?;
        self.store
            .put_manifest(&m.key_id, m.seal(&unlocked.key))
            .await?;
        Ok(id)
    }

    /// Adds the password protector (a vault record for K).
    pub async fn add_password(&self, unlocked: &Unlocked, password: &SecretString) -> Result<()> {
        if self.password_state().await? {
            return Err(gone(
                "a password protector exists already; use `bkv backup change-password`",
            ));
        }
        self.vault()?
            .register(password, &unlocked.key, self.guess_limit, None)
            .await
    }

    /// Replaces the password: log in with `current`, register `new` for the
    /// same K in that authenticated session.
    pub async fn change_password(&self, current: &SecretString, new: &SecretString) -> Result<()> {
        let vault = self.vault()?;
        let logged_in = self.login(current).await?;
        vault
            .register(
                new,
                &logged_in.key,
                self.guess_limit,
                Some(logged_in.session),
            )
            .await
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

    /// Creates a new K, seals it for every protector except the removed ones,
    /// re-encrypts the latest backup under it, and only then deletes what the
    /// old K protected. `password` is needed whenever the vault holds a
    /// password protector (to re-register it, or to delete it).
    pub async fn rotate(
        &self,
        unlocked: Unlocked,
        password: Option<&SecretString>,
        remove_slots: &[String],
        remove_password: bool,
    ) -> Result<Rotated> {
        let vault = self.vault()?;
        let has_password = self.password_state().await?;
        if remove_password && !has_password {
            return Err(gone("there is no password protector to remove"));
        }
        // The vault's K is the current one when a password exists: a
        // recovery key could have opened a manifest an earlier interrupted
        // rotation left behind.
        let pw = if has_password {
            Some(password.ok_or(ClientError::PasswordNeeded)?)
        } else {
            None
        };
        let mut grant = unlocked.grant;
        let source = match pw {
            Some(pw) => {
                let li = self.login(pw).await?;
                if grant.is_none() {
                    grant = self.grant_for(&li.session).await;
                }
                li.session.close().await;
                li.key
            }
            None => unlocked.key,
        };
        let source_manifest = if key_id(&source) == key_id_of(&unlocked.manifest) {
            unlocked.manifest
        } else {
            self.manifest_for(&source).await?
        };
        for id in remove_slots {
            if source_manifest.as_ref().and_then(|m| m.slot(id)).is_none() {
                return Err(gone(&format!("no protector with id {id}")));
            }
        }
        let kept_slots = source_manifest
            .as_ref()
            .map(|m| {
                m.slots
                    .iter()
                    .filter(|s| !remove_slots.contains(&s.id))
                    .count()
            })
            .unwrap_or(0);
        let keep_password = has_password && !remove_password;
        if kept_slots == 0 && !keep_password {
            return Err(gone(
                "that would leave no protector; add another one first (or use `bkv backup disable`)",
            ));
        }
        let removed_passkeys: Vec<Vec<u8>> = source_manifest
            .iter()
            .flat_map(|m| m.slots.iter())
            .filter(|s| remove_slots.contains(&s.id))
            .filter_map(|s| s.passkey.as_ref().map(|p| p.credential_id.clone()))
            .collect();

        let new_key = BackupKey::generate();
        let drop: Vec<&str> = remove_slots.iter().map(String::as_str).collect();
        let mut m2 = match &source_manifest {
            Some(m) => m.rotated(&new_key, &drop)?,
            None => Manifest::new(&self.user, &new_key),
        };
        m2.generation = self.next_generation().await?;

        let has_backup = self.store.backup_for(&source).await.is_ok();
        let new_backup = if has_backup {
            Some(self.store.reencrypt(&source, &new_key).await?)
        } else {
            None
        };
        crate::crash_point("reencrypted");
        self.store
            .put_manifest(&m2.key_id, m2.seal(&new_key))
            .await?;
        crate::crash_point("manifest-written");
        // A fresh login for the vault step: re-encrypting a large backup can
        // outlast a vault session.
        if let (Some(pw), true) = (pw, keep_password) {
            let li = vault.login(pw).await?;
            vault
                .register(pw, &new_key, self.guess_limit, Some(li.session))
                .await?;
            crate::crash_point("vault-switched");
        }
        if let Some(l) = &new_backup {
            self.store.set_latest(l).await?;
            crate::crash_point("latest-switched");
        }
        if let (Some(pw), true) = (pw, remove_password) {
            vault.delete(pw).await?;
            crate::crash_point("vault-deleted");
        }
        let mut passkeys_left_at_rp = 0;
        match &grant {
            Some(g) => {
                for cred in &removed_passkeys {
                    passkey::delete(self.endpoint()?, cred, g).await?;
                }
            }
            None => passkeys_left_at_rp = removed_passkeys.len(),
        }
        if !removed_passkeys.is_empty() {
            crate::crash_point("passkeys-deleted");
        }
        let deleted = self.store.delete_other_keys(&m2.key_id).await?;
        Ok(Rotated {
            key_id: hex::encode(m2.key_id),
            slots: m2.slots.len(),
            password: keep_password,
            backup: new_backup,
            deleted_objects: deleted,
            passkeys_left_at_rp,
        })
    }

    /// Deletes everything: the vault record (needs the password if one
    /// exists), every passkey at the relying party (needs a grant: from the
    /// password login, or from `unlocked` if a passkey opened it), every
    /// stored object.
    pub async fn disable(
        &self,
        password: Option<&SecretString>,
        unlocked: Option<&Unlocked>,
    ) -> Result<Disabled> {
        let mut grant = unlocked.and_then(|u| u.grant.clone());
        if self.password_state().await? {
            let pw = password.ok_or(ClientError::PasswordNeeded)?;
            let li = self.login(pw).await?;
            if grant.is_none() {
                grant = self.grant_for(&li.session).await;
            }
            self.vault()?.delete_in(li.session).await?;
        }
        let passkeys_left_at_rp = match &grant {
            Some(g) => {
                passkey::delete_all(self.endpoint()?, g).await?;
                false
            }
            None => !passkey::list(self.endpoint()?).await?.is_empty(),
        };
        Ok(Disabled {
            deleted_objects: self.store.delete_all().await?,
            passkeys_left_at_rp,
        })
    }
}

fn key_id_of(m: &Option<Manifest>) -> [u8; 16] {
    m.as_ref().map(|m| m.key_id).unwrap_or([0u8; 16])
}
