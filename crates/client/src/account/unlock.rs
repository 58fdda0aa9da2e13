//! Unlocking the backup key with any one protector, and restoring with it.

use super::*;

impl Account {
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

    pub(super) async fn unlock_with_passkey(
        &self,
        auth: &mut dyn Authenticator,
    ) -> Result<Unlocked> {
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
    pub(super) async fn grant_for(
        &self,
        session: &crate::session::Session,
    ) -> Option<passkey::Grant> {
        let endpoint = self.endpoint().ok()?;
        match passkey::grant_from_session(endpoint, session.id()).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "no passkey grant for this session");
                None
            }
        }
    }

    /// The key a new backup is made under: with a password and no vault record on any fleet
    /// (and no other protector in storage), a fresh K registered under that password (`true`:
    /// registered now); otherwise K unlocked with the protector given.
    pub async fn key_for_backup(&self, with: Unlock<'_>) -> Result<(BackupKey, bool)> {
        match with {
            // The record may still live on an older fleet (rotation): a fresh
            // registration only when no fleet holds one.
            Unlock::Password(pw) => match self.record_state().await? {
                RecordState::Active { .. } | RecordState::Moved => {
                    Ok((self.unlock(Unlock::Password(pw)).await?.key, false))
                }
                RecordState::Absent | RecordState::Pending | RecordState::Destroyed => {
                    if !self.store.manifests().await?.is_empty() {
                        return Err(ClientError::Protectors(
                            "these backups are protected by a recovery key or passkey but no password; \
                             unlock with one of them (or add a password with `bkv backup protectors add --password`)"
                                .into(),
                        ));
                    }
                    let key = BackupKey::generate();
                    self.vault()?
                        .register(pw, &key, self.guess_limit, None)
                        .await?;
                    Ok((key, true))
                }
            },
            other => Ok((self.unlock(other).await?.key, false)),
        }
    }

    /// Restores the newest backup K opens.
    #[cfg(feature = "native")]
    pub async fn restore(
        &self,
        unlocked: &Unlocked,
        out: std::path::PathBuf,
        report: Box<dyn FnMut(u64) + Send>,
    ) -> Result<Latest> {
        Ok(self.store.restore(&unlocked.key, out, report).await?.0)
    }
}
