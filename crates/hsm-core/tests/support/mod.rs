//! Shared by the core's protocol tests: a client that speaks Noise NK and OPAQUE to an
//! I/O-free core, driven as a one-node host drives it.
#![allow(dead_code)]

use argon2::Argon2;
use bkv_hsm_core::{Core, FleetSecrets, FleetTrust, MemoryPlatform, NodeIdentity, Step};
use bkv_wire::node::{NodeError, SessionId};
use bkv_wire::vault::{RecordState, SessionHello, VaultError, VaultRequest, VaultResponse};
use bkv_wire::{OpaqueSuite, NOISE_PATTERN, NOISE_PROLOGUE, OPAQUE_CONTEXT};
use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, Identifiers, RegistrationResponse,
};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub fn core_on(p: Arc<MemoryPlatform>) -> Core {
    let secrets = FleetSecrets::generate(&*p, FleetTrust::for_tests()).unwrap();
    let identity = NodeIdentity::generate(&*p).unwrap();
    Core::new(p, secrets, &identity).unwrap()
}

pub fn core() -> Core {
    core_on(Arc::new(MemoryPlatform::new([9; 32])))
}

/// Runs a request through the core as a one-node host would (the test kit's loop).
pub use bkv_testkit::one_node::drive;

pub struct Client {
    pub sid: SessionId,
    pub user: String,
    pub t: snow::TransportState,
    /// The last LoginStarted credential response (for [`Replicas`]).
    pub pending_response: Vec<u8>,
}

pub fn open_with_key(core: &mut Core, user: &str, key: &[u8; 32]) -> Result<Client, NodeError> {
    let mut hs = snow::Builder::new(NOISE_PATTERN.parse().unwrap())
        .remote_public_key(key)
        .unwrap()
        .prologue(NOISE_PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let hello = bkv_wire::encode(&SessionHello {
        version: 1,
        user_id: user.into(),
    });
    let mut m1 = vec![0u8; 1024];
    let n = hs.write_message(&hello, &mut m1).unwrap();
    let (sid, m2) = core.open_session(user, &m1[..n])?;
    let mut p = vec![0u8; 1024];
    hs.read_message(&m2, &mut p).unwrap();
    Ok(Client {
        sid,
        user: user.into(),
        t: hs.into_transport_mode().unwrap(),
        pending_response: Vec::new(),
    })
}

pub fn open(core: &mut Core, user: &str) -> Client {
    let key = core.noise_public_key();
    open_with_key(core, user, &key).unwrap()
}

impl Client {
    pub fn call(&mut self, core: &mut Core, req: &VaultRequest) -> VaultResponse {
        let plain = bkv_wire::encode(req);
        let mut ct = vec![0u8; plain.len() + 64];
        let n = self.t.write_message(&plain, &mut ct).unwrap();
        let resp = drive(core, &self.sid, &self.user, &ct[..n]).unwrap();
        let mut out = vec![0u8; 65535];
        let n = self.t.read_message(&resp, &mut out).unwrap();
        bkv_wire::decode(&out[..n], 1 << 16).unwrap()
    }

    /// Registers with explicit phases; returns the confirm secret.
    pub fn register(
        &mut self,
        core: &mut Core,
        pw: &str,
        limit: u32,
    ) -> Result<[u8; 32], VaultError> {
        let start = ClientRegistration::<OpaqueSuite>::start(&mut OsRng, pw.as_bytes()).unwrap();
        let r = self.call(
            core,
            &VaultRequest::RegisterStart {
                registration_request: start.message.serialize().to_vec(),
            },
        );
        let VaultResponse::RegisterStarted {
            registration_response,
        } = r
        else {
            return Err(err(r));
        };
        let ksf = Argon2::default();
        let fin = start
            .state
            .finish(
                &mut OsRng,
                pw.as_bytes(),
                RegistrationResponse::deserialize(&registration_response).unwrap(),
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&ksf)),
            )
            .unwrap();
        let secret = [pw.len() as u8; 32];
        let r = self.call(
            core,
            &VaultRequest::RegisterFinish {
                upload: fin.message.serialize().to_vec(),
                wrapped_key: fin.export_key.to_vec(), // stands in for Enc(export_key, K)
                guess_limit: limit,
                confirm_hash: Sha256::digest(secret).into(),
            },
        );
        if r != VaultResponse::RegisterStored {
            return Err(err(r));
        }
        match self.call(
            core,
            &VaultRequest::RegisterConfirm {
                confirm_secret: secret,
            },
        ) {
            VaultResponse::RegisterConfirmed => Ok(secret),
            r => Err(err(r)),
        }
    }

    /// Full login; Ok(wrapped key) or the vault's error.
    pub fn login(&mut self, core: &mut Core, pw: &str) -> Result<Vec<u8>, VaultError> {
        let (cr, state) = self.login_start(core, pw)?;
        let ksf = Argon2::default();
        let fin = state.finish(
            &mut OsRng,
            pw.as_bytes(),
            CredentialResponse::deserialize(&cr).unwrap(),
            ClientLoginFinishParameters::new(
                Some(OPAQUE_CONTEXT),
                Identifiers::default(),
                Some(&ksf),
            ),
        );
        let finalization = match fin {
            Ok(f) => f.message.serialize().to_vec(),
            Err(_) => Vec::new(), // wrong password: the client cannot finish
        };
        match self.call(
            core,
            &VaultRequest::LoginFinish {
                credential_finalization: finalization,
            },
        ) {
            VaultResponse::LoginOk { wrapped_key } => Ok(wrapped_key),
            r => Err(err(r)),
        }
    }

    /// The sealed `LoginFinish` a client sends after `login_start` with password `pw` (an
    /// empty finalization when the password was wrong, as a client that cannot finish sends).
    pub fn finish_message(
        &mut self,
        pw: &str,
        credential_response: &[u8],
        state: ClientLogin<OpaqueSuite>,
    ) -> Vec<u8> {
        let ksf = Argon2::default();
        let fin = state.finish(
            &mut OsRng,
            pw.as_bytes(),
            CredentialResponse::deserialize(credential_response).unwrap(),
            ClientLoginFinishParameters::new(
                Some(OPAQUE_CONTEXT),
                Identifiers::default(),
                Some(&ksf),
            ),
        );
        let credential_finalization = match fin {
            Ok(f) => f.message.serialize().to_vec(),
            Err(_) => Vec::new(),
        };
        self.seal(&VaultRequest::LoginFinish {
            credential_finalization,
        })
    }

    pub fn login_start(
        &mut self,
        core: &mut Core,
        pw: &str,
    ) -> Result<(Vec<u8>, ClientLogin<OpaqueSuite>), VaultError> {
        let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, pw.as_bytes()).unwrap();
        match self.call(
            core,
            &VaultRequest::LoginStart {
                credential_request: start.message.serialize().to_vec(),
            },
        ) {
            VaultResponse::LoginStarted {
                credential_response,
                ..
            } => Ok((credential_response, start.state)),
            r => Err(err(r)),
        }
    }
}

pub fn err(r: VaultResponse) -> VaultError {
    match r {
        VaultResponse::Error(e) => e,
        other => panic!("unexpected {other:?}"),
    }
}

pub fn status(core: &mut Core, user: &str) -> RecordState {
    match open(core, user).call(core, &VaultRequest::Status) {
        VaultResponse::Status { state } => state,
        r => panic!("{r:?}"),
    }
}

impl Client {
    /// A sealed `LoginStart` delivered twice before its read barrier ran (both deliveries are
    /// told to wait for a fresh read), then resumed: its ciphertext and the guess-count commit.
    pub fn login_start_delivered_twice(
        &mut self,
        c: &mut Core,
        pw: &[u8],
    ) -> (Vec<u8>, bkv_hsm_core::LogEntry) {
        let start = ClientLogin::<OpaqueSuite>::start(&mut OsRng, pw).unwrap();
        let ct = self.seal(&VaultRequest::LoginStart {
            credential_request: start.message.serialize().to_vec(),
        });
        for _ in 0..2 {
            assert!(matches!(
                c.session_message(&self.sid, &self.user, &ct),
                Ok(Step::ReadFresh)
            ));
        }
        let Ok(Step::Commit(m)) = c.resume_fresh(&self.sid, &ct) else {
            panic!("expected a commit")
        };
        (ct, m)
    }

    /// Encrypts a request without sending it (to resend the same bytes).
    pub fn seal(&mut self, req: &VaultRequest) -> Vec<u8> {
        let plain = bkv_wire::encode(req);
        let mut ct = vec![0u8; plain.len() + 64];
        let n = self.t.write_message(&plain, &mut ct).unwrap();
        ct.truncate(n);
        ct
    }

    pub fn open_reply(&mut self, reply: &[u8]) -> VaultResponse {
        let mut out = vec![0u8; 65535];
        let n = self.t.read_message(reply, &mut out).unwrap();
        bkv_wire::decode(&out[..n], 1 << 16).unwrap()
    }

    /// Status through this session (it counts as used).
    pub fn touch(&mut self, core: &mut Core) {
        assert!(matches!(
            self.call(core, &VaultRequest::Status),
            VaultResponse::Status { .. }
        ));
    }
}

pub fn attempts(core: &mut Core, user: &str) -> u32 {
    match status(core, user) {
        RecordState::Active { attempts, .. } => attempts,
        s => panic!("{s:?}"),
    }
}
