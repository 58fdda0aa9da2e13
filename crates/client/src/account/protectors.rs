//! Adding protectors (recovery key, passkey, password) and changing the password.

use super::*;

impl Account {
    pub(super) async fn manifest_to_extend(&self, unlocked: &Unlocked) -> Result<Manifest> {
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
        crate::random::OsRng.fill_bytes(&mut salt);
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
}
