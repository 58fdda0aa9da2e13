//! Rotating the backup key (removing protectors) and disabling backups.

use super::*;

impl Account {
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
