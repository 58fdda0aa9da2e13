//! Vault operations: register, recover, status, delete.

use crate::error::{ClientError, Result};
use crate::keys::{self, BackupKey};
use crate::random::OsRng;
use crate::session::{Endpoint, Session};
use argon2::Argon2;
use bkv_wire::vault::{RecordState, SignedMoveTicket, VaultRequest, VaultResponse};
use bkv_wire::{OpaqueSuite, OPAQUE_CONTEXT};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The password protector: one user's OPAQUE record on one vault fleet.
pub struct VaultClient {
    /// The frontend and fleet the sessions go to.
    pub endpoint: Endpoint,
    /// The user id the record is stored under.
    pub user_id: String,
    /// Argon2id parameters of the client-side key stretching. The vault never
    /// sees them; a record must be recovered with the parameters it was
    /// registered with.
    pub ksf_params: argon2::Params,
}

fn unexpected(r: VaultResponse) -> ClientError {
    match r {
        VaultResponse::Error(e) => e.into(),
        other => ClientError::Protocol(format!("unexpected response {other:?}")),
    }
}

/// Argon2id (version 0x13) with `params`: the client pays the stretching
/// cost, the HSM only counts guesses.
fn ksf(params: &argon2::Params) -> Argon2<'static> {
    Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.clone(),
    )
}

/// A registration finished on the client, ready to upload.
pub struct Prepared {
    /// The OPAQUE registration upload (serialized).
    pub upload: Vec<u8>,
    /// K wrapped under the OPAQUE export key ([`crate::keys::wrap`], 73 bytes).
    pub wrapped_key: Vec<u8>,
    /// Wrong guesses the record allows before the vault destroys it.
    pub guess_limit: u32,
    confirm_secret: [u8; 32],
}

impl Prepared {
    /// SHA-256 of the confirm secret: stored with the pending record, which the secret makes live.
    pub fn confirm_hash(&self) -> [u8; 32] {
        Sha256::digest(self.confirm_secret).into()
    }

    /// What the move tickets name this registration by.
    pub fn digest(&self) -> [u8; 32] {
        bkv_wire::vault::pending_digest(
            &self.upload,
            &self.wrapped_key,
            self.guess_limit,
            &self.confirm_hash(),
        )
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.confirm_secret);
    }
}

/// Result of a successful login: the backup key and the still-open session,
/// which is authenticated for follow-up operations (delete, re-register).
pub struct LoggedIn {
    /// The backup key K the password unwrapped.
    pub key: BackupKey,
    /// The session the login authenticated (close it when done).
    pub session: Session,
}

impl VaultClient {
    /// A client for `user_id` on `endpoint`'s fleet, with the default Argon2id parameters.
    pub fn new(endpoint: Endpoint, user_id: &str) -> Self {
        VaultClient {
            endpoint,
            user_id: user_id.to_owned(),
            // The argon2 defaults: 19 MiB, 2 passes, 1 lane (OWASP's minimum).
            ksf_params: argon2::Params::default(),
        }
    }

    /// The state of this user's record on the fleet (asked in a fresh session).
    pub async fn status(&self) -> Result<RecordState> {
        let mut s = Session::open(&self.endpoint, &self.user_id).await?;
        let r = s.call(&VaultRequest::Status).await?;
        s.close().await;
        match r {
            VaultResponse::Status { state } => Ok(state),
            other => Err(unexpected(other)),
        }
    }

    /// Registers `password` as a protector of `key` with `guess_limit`.
    /// Uses `session` if given (an authenticated session replaces the live
    /// record: password change), else opens a fresh one.
    pub async fn register(
        &self,
        password: &SecretString,
        key: &BackupKey,
        guess_limit: u32,
        session: Option<Session>,
    ) -> Result<()> {
        let mut s = match session {
            Some(s) => s,
            None => Session::open(&self.endpoint, &self.user_id).await?,
        };
        let p = self.prepare(&mut s, password, key, guess_limit).await?;
        let req = VaultRequest::RegisterFinish {
            upload: p.upload.clone(),
            wrapped_key: p.wrapped_key.clone(),
            guess_limit,
            confirm_hash: p.confirm_hash(),
        };
        let confirm_secret = p.confirm_secret;
        // Phase 1 may be retried freely: a pending record is not usable.
        match s.call(&req).await? {
            VaultResponse::RegisterStored => {}
            other => return Err(unexpected(other)),
        }
        crate::crash_point("vault-pending");
        // Phase 2 is idempotent for the same secret, so a retry after a dropped
        // response cannot reset anything.
        let mut last_err = None;
        for _ in 0..3 {
            let r = match Session::open(&self.endpoint, &self.user_id).await {
                Ok(mut s2) => {
                    let r = s2
                        .call(&VaultRequest::RegisterConfirm { confirm_secret })
                        .await;
                    s2.close().await;
                    r
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(VaultResponse::RegisterConfirmed) => {
                    s.close().await;
                    return Ok(());
                }
                Ok(other) => return Err(unexpected(other)),
                Err(e @ ClientError::Unavailable(_)) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ClientError::Unavailable("confirm failed".into())))
    }

    /// Runs OPAQUE registration up to the upload in session `s` (`RegisterStart`, then the
    /// client's finish: Argon2id and the envelope), wrapping `key` under the export key.
    pub async fn prepare(
        &self,
        s: &mut Session,
        password: &SecretString,
        key: &BackupKey,
        guess_limit: u32,
    ) -> Result<Prepared> {
        let pw = password.expose_secret().as_bytes();
        let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, pw)
            .map_err(|e| ClientError::Protocol(format!("opaque: {e:?}")))?;
        let resp = s
            .call(&VaultRequest::RegisterStart {
                registration_request: start.message.serialize().to_vec(),
            })
            .await?;
        let VaultResponse::RegisterStarted {
            registration_response,
        } = resp
        else {
            return Err(unexpected(resp));
        };
        let response = RegistrationResponse::<OpaqueSuite>::deserialize(&registration_response)
            .map_err(|_| ClientError::Protocol("malformed RegistrationResponse".into()))?;
        let ksf = ksf(&self.ksf_params);
        let finish = start
            .state
            .finish(
                &mut OsRng,
                pw,
                response,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .map_err(|e| ClientError::Protocol(format!("opaque: {e:?}")))?;
        let mut confirm_secret = [0u8; 32];
        OsRng.fill_bytes(&mut confirm_secret);
        Ok(Prepared {
            upload: finish.message.serialize().to_vec(),
            wrapped_key: keys::wrap(&finish.export_key, &self.user_id, key),
            guess_limit,
            confirm_secret,
        })
    }

    /// Stores a move's registration (prepared in `s`) with the old fleet's intent ticket.
    pub async fn store_move(
        &self,
        mut s: Session,
        p: &Prepared,
        intent: SignedMoveTicket,
    ) -> Result<()> {
        let r = s
            .call(&VaultRequest::RegisterFinishMove {
                upload: p.upload.clone(),
                wrapped_key: p.wrapped_key.clone(),
                guess_limit: p.guess_limit,
                confirm_hash: p.confirm_hash(),
                intent,
            })
            .await;
        s.close().await;
        match r? {
            VaultResponse::MoveStored => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Makes a moved record live here with the old fleet's move ticket. A record already
    /// moved in (a retry after a dropped answer) finds no move waiting: also done.
    pub async fn move_in(&self, ticket: SignedMoveTicket) -> Result<()> {
        let mut s = Session::open(&self.endpoint, &self.user_id).await?;
        let r = s.call(&VaultRequest::MoveIn { ticket }).await;
        s.close().await;
        match r? {
            VaultResponse::MovedIn
            | VaultResponse::Error(bkv_wire::vault::VaultError::NoPendingRegistration) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The move ticket of a record that moved away from this fleet (public: no login).
    pub async fn move_ticket(&self) -> Result<SignedMoveTicket> {
        let mut s = Session::open(&self.endpoint, &self.user_id).await?;
        let r = s.call(&VaultRequest::GetMoveTicket).await;
        s.close().await;
        match r? {
            VaultResponse::MoveTicket { ticket } => Ok(ticket),
            other => Err(unexpected(other)),
        }
    }

    /// OPAQUE login; returns K on success. Each call costs one guess until it
    /// succeeds (the HSM counts before it answers).
    pub async fn login(&self, password: &SecretString) -> Result<LoggedIn> {
        let mut s = Session::open(&self.endpoint, &self.user_id).await?;
        let pw = password.expose_secret().as_bytes();
        let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, pw)
            .map_err(|e| ClientError::Protocol(format!("opaque: {e:?}")))?;
        let resp = s
            .call(&VaultRequest::LoginStart {
                credential_request: start.message.serialize().to_vec(),
            })
            .await?;
        let VaultResponse::LoginStarted {
            credential_response,
            guesses_remaining,
        } = resp
        else {
            return Err(unexpected(resp));
        };
        let response = CredentialResponse::<OpaqueSuite>::deserialize(&credential_response)
            .map_err(|_| ClientError::Protocol("malformed CredentialResponse".into()))?;
        let ksf = ksf(&self.ksf_params);
        let finish = start.state.finish(
            &mut OsRng,
            pw,
            response,
            ClientLoginFinishParameters::new(
                Some(OPAQUE_CONTEXT),
                Identifiers::default(),
                Some(&ksf),
            ),
        );
        let finish = match finish {
            Ok(f) => f,
            Err(opaque_ke::errors::ProtocolError::InvalidLoginError) => {
                // Wrong password: the client detects it locally. Tell the HSM
                // anyway so it can destroy the record at the limit; the guess
                // is already counted either way.
                let r = s
                    .call(&VaultRequest::LoginFinish {
                        credential_finalization: Vec::new(),
                    })
                    .await;
                s.close().await;
                return Err(match r {
                    Ok(VaultResponse::Error(e)) => e.into(),
                    _ if guesses_remaining == 0 => ClientError::Destroyed,
                    _ => ClientError::WrongPassword { guesses_remaining },
                });
            }
            Err(e) => return Err(ClientError::Protocol(format!("opaque: {e:?}"))),
        };
        let resp = s
            .call(&VaultRequest::LoginFinish {
                credential_finalization: finish.message.serialize().to_vec(),
            })
            .await?;
        let VaultResponse::LoginOk { wrapped_key } = resp else {
            return Err(unexpected(resp));
        };
        let key = keys::unwrap(&finish.export_key, &self.user_id, &wrapped_key)
            .ok_or_else(|| ClientError::Protocol("wrapped key failed to open".into()))?;
        Ok(LoggedIn { key, session: s })
    }

    /// Deletes the record after a successful login.
    pub async fn delete(&self, password: &SecretString) -> Result<()> {
        let LoggedIn { session, .. } = self.login(password).await?;
        self.delete_in(session).await
    }

    /// Deletes the record in a session a login authenticated.
    pub async fn delete_in(&self, mut session: Session) -> Result<()> {
        let r = session.call(&VaultRequest::Delete).await?;
        session.close().await;
        match r {
            VaultResponse::Deleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}
