//! bkv HSM core: the trusted, deterministic, I/O-free part of a vault node.
//!
//! It terminates client Noise `NK` sessions, runs the OPAQUE server, and owns
//! the record [`State`]. It never writes state directly: a request that needs a
//! change yields [`Step::Commit`] with a [`Mutation`]; the host makes that
//! mutation durable (one node: a sealed, fsynced write; a fleet: a majority
//! commit), then calls [`Core::apply`] and [`Core::resume`]. Only then is the
//! response released, so a guess is always counted before it is answered.

pub mod platform;
pub mod seal;
pub mod state;

use bkv_wire::node::{NodeError, SessionId};
use bkv_wire::vault::{
    RecordState, SessionHello, VaultError, VaultRequest, VaultResponse, MAX_GUESS_LIMIT,
    MAX_VAULT_MESSAGE, MAX_WRAPPED_KEY, MIN_GUESS_LIMIT,
};
use bkv_wire::{OpaqueSuite, MAX_NOISE_MESSAGE, NOISE_PATTERN, NOISE_PROLOGUE, OPAQUE_CONTEXT};
use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
pub use platform::{MemoryPlatform, Platform, PlatformError, SealingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use state::{Mutation, Outcome, RecordId, State};
use std::collections::HashMap;
use zeroize::{Zeroize, Zeroizing};

/// Most sessions a node holds at once; more are refused with `Busy`.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Idle seconds after which a session is forgotten.
pub const DEFAULT_SESSION_IDLE_SECS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("sealed fleet secrets are invalid: {0}")]
    Secrets(&'static str),
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

/// The fleet's long-term secrets, generated inside the HSM boundary and only
/// ever exported sealed.
pub struct FleetSecrets {
    fleet_id: String,
    noise_private: Zeroizing<[u8; 32]>,
    noise_public: [u8; 32],
    opaque_setup: Zeroizing<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Zeroize)]
#[zeroize(drop)]
struct SecretsV1 {
    fleet_id: String,
    noise_private: [u8; 32],
    opaque_setup: Vec<u8>,
}

const SECRETS_PURPOSE: &str = "fleet-secrets";

impl FleetSecrets {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut noise_private = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(noise_private.as_mut());
        let noise_public = x25519_public(&noise_private);
        let setup = ServerSetup::<OpaqueSuite>::new(rng);
        let mut id = [0u8; 8];
        rng.fill_bytes(&mut id);
        FleetSecrets {
            fleet_id: format!("fleet-{}", hex_lower(&id)),
            noise_private,
            noise_public,
            opaque_setup: Zeroizing::new(setup.serialize().to_vec()),
        }
    }

    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    pub fn noise_public_key(&self) -> [u8; 32] {
        self.noise_public
    }

    pub fn seal<R: RngCore + CryptoRng>(&self, key: &SealingKey, rng: &mut R) -> Vec<u8> {
        seal::seal(key, rng, SECRETS_PURPOSE, b"", &self.export())
    }

    pub fn unseal(key: &SealingKey, sealed: &[u8]) -> Result<Self, CoreError> {
        let plain = Zeroizing::new(seal::unseal(key, SECRETS_PURPOSE, b"", sealed)?);
        Self::import(&plain)
    }

    /// The secrets in the clear, for transfer to another member of the same
    /// fleet over a mutually authenticated, encrypted peer link only.
    pub fn export(&self) -> Zeroizing<Vec<u8>> {
        let v = SecretsV1 {
            fleet_id: self.fleet_id.clone(),
            noise_private: *self.noise_private,
            opaque_setup: self.opaque_setup.to_vec(),
        };
        Zeroizing::new(bkv_wire::encode(&v))
    }

    /// The inverse of [`FleetSecrets::export`].
    pub fn import(plain: &[u8]) -> Result<Self, CoreError> {
        let v: SecretsV1 =
            bkv_wire::decode(plain, 64 * 1024).map_err(|_| CoreError::Secrets("malformed"))?;
        ServerSetup::<OpaqueSuite>::deserialize(&v.opaque_setup)
            .map_err(|_| CoreError::Secrets("bad OPAQUE server setup"))?;
        Ok(FleetSecrets {
            fleet_id: v.fleet_id.clone(),
            noise_private: Zeroizing::new(v.noise_private),
            noise_public: x25519_public(&v.noise_private),
            opaque_setup: Zeroizing::new(v.opaque_setup.clone()),
        })
    }
}

fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    curve25519_dalek::MontgomeryPoint::mul_base_clamped(*private).to_bytes()
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the host must do next for a request.
#[derive(Debug)]
pub enum Step {
    /// Send this Noise ciphertext back to the client.
    Reply(Vec<u8>),
    /// Make this mutation durable (majority commit), then call
    /// [`Core::apply`] with it and [`Core::resume`] with the outcome.
    Commit(Mutation),
}

/// What a session waits for after proposing a mutation.
enum Awaiting {
    Stored,
    Confirmed,
    Counted { credential_request: Vec<u8> },
    LoginReset,
    DestroyedThenFail,
    Deleted,
}

struct LoginState {
    server_login: ServerLogin<OpaqueSuite>,
    generation: u64,
    attempts: u32,
    guess_limit: u32,
}

struct Session {
    user_id: String,
    record_id: RecordId,
    transport: snow::TransportState,
    last_used: u64,
    login: Option<LoginState>,
    /// Generation of the record this session logged in to.
    authenticated: Option<u64>,
    /// Set by RegisterStart: the live generation it may replace (if any).
    registering: Option<Option<u64>>,
    awaiting: Option<Awaiting>,
}

pub struct Core<P: Platform> {
    platform: P,
    secrets: FleetSecrets,
    setup: ServerSetup<OpaqueSuite>,
    state: State,
    sessions: HashMap<SessionId, Session>,
    max_sessions: usize,
    session_idle_secs: u64,
}

impl<P: Platform> Core<P> {
    pub fn new(platform: P, secrets: FleetSecrets, state: State) -> Result<Self, CoreError> {
        let setup = ServerSetup::<OpaqueSuite>::deserialize(&secrets.opaque_setup)
            .map_err(|_| CoreError::Secrets("bad OPAQUE server setup"))?;
        Ok(Core {
            platform,
            secrets,
            setup,
            state,
            sessions: HashMap::new(),
            max_sessions: DEFAULT_MAX_SESSIONS,
            session_idle_secs: DEFAULT_SESSION_IDLE_SECS,
        })
    }

    pub fn set_session_limits(&mut self, max_sessions: usize, idle_secs: u64) {
        self.max_sessions = max_sessions;
        self.session_idle_secs = idle_secs;
    }

    pub fn platform(&mut self) -> &mut P {
        &mut self.platform
    }

    pub fn secrets(&self) -> &FleetSecrets {
        &self.secrets
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Replaces the whole state (a replica installing a snapshot). Open
    /// sessions stay; every later mutation re-checks its record's generation.
    pub fn replace_state(&mut self, state: State) {
        self.state = state;
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Applies a committed mutation. Deterministic: every replica calls this
    /// with the same mutations in the same order.
    pub fn apply(&mut self, m: &Mutation) -> Outcome {
        self.state.apply(m)
    }

    fn expire_sessions(&mut self) {
        let now = self.platform.now_unix_secs();
        let idle = self.session_idle_secs;
        self.sessions
            .retain(|_, s| now.saturating_sub(s.last_used) < idle);
    }

    /// Answers the first Noise message of a session for `user_id`.
    pub fn open_session(
        &mut self,
        user_id: &str,
        handshake: &[u8],
    ) -> Result<(SessionId, Vec<u8>), NodeError> {
        bkv_wire::validate_user_id(user_id).map_err(|e| NodeError::BadRequest(e.into()))?;
        if handshake.len() > MAX_NOISE_MESSAGE {
            return Err(NodeError::BadRequest("handshake too large".into()));
        }
        self.expire_sessions();
        if self.sessions.len() >= self.max_sessions {
            return Err(NodeError::Busy);
        }
        let params = NOISE_PATTERN
            .parse()
            .map_err(|_| NodeError::BadRequest("noise params".into()))?;
        let mut hs = snow::Builder::new(params)
            .local_private_key(self.secrets.noise_private.as_ref())
            .and_then(|b| b.prologue(NOISE_PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(|_| NodeError::Handshake)?;
        let mut payload = Zeroizing::new(vec![0u8; MAX_NOISE_MESSAGE]);
        let n = hs
            .read_message(handshake, &mut payload)
            .map_err(|_| NodeError::Handshake)?;
        let hello: SessionHello = bkv_wire::decode(payload.get(..n).unwrap_or_default(), 1024)
            .map_err(|e| NodeError::BadRequest(format!("session hello: {e}")))?;
        if hello.version != 1 {
            return Err(NodeError::BadRequest("unsupported session version".into()));
        }
        // The frontend authenticated the user; the client said, encrypted to the
        // fleet key, which user it means. They must agree.
        if hello.user_id != user_id {
            return Err(NodeError::WrongUser);
        }
        let mut reply = vec![0u8; MAX_NOISE_MESSAGE];
        let n = hs
            .write_message(&[], &mut reply)
            .map_err(|_| NodeError::Handshake)?;
        reply.truncate(n);
        let transport = hs.into_transport_mode().map_err(|_| NodeError::Handshake)?;
        let mut session_id = [0u8; 16];
        self.platform.rng().fill_bytes(&mut session_id);
        let now = self.platform.now_unix_secs();
        self.sessions.insert(
            session_id,
            Session {
                user_id: user_id.to_owned(),
                record_id: bkv_wire::record_id(user_id),
                transport,
                last_used: now,
                login: None,
                authenticated: None,
                registering: None,
                awaiting: None,
            },
        );
        Ok((session_id, reply))
    }

    pub fn close_session(&mut self, session_id: &SessionId) {
        self.sessions.remove(session_id);
    }

    /// Handles one encrypted request of an open session.
    pub fn session_message(
        &mut self,
        session_id: &SessionId,
        user_id: &str,
        ciphertext: &[u8],
    ) -> Result<Step, NodeError> {
        self.expire_sessions();
        let now = self.platform.now_unix_secs();
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        if session.user_id != user_id {
            return Err(NodeError::WrongUser);
        }
        if session.awaiting.is_some() {
            return Err(NodeError::BadRequest(
                "previous request still in progress".into(),
            ));
        }
        if ciphertext.len() > MAX_NOISE_MESSAGE {
            return Err(NodeError::BadRequest("message too large".into()));
        }
        let mut plain = Zeroizing::new(vec![0u8; MAX_NOISE_MESSAGE]);
        let n = match session.transport.read_message(ciphertext, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                // A forged, replayed or reordered message: the session's nonce
                // state can no longer be trusted, so end it.
                self.sessions.remove(session_id);
                return Err(NodeError::BadRequest(
                    "session message failed to decrypt".into(),
                ));
            }
        };
        session.last_used = now;
        let request: VaultRequest =
            match bkv_wire::decode(plain.get(..n).unwrap_or_default(), MAX_VAULT_MESSAGE) {
                Ok(r) => r,
                Err(e) => {
                    return self.reply(
                        session_id,
                        VaultResponse::Error(VaultError::BadRequest(e.to_string())),
                    )
                }
            };
        self.handle(session_id, request)
    }

    fn reply(&mut self, session_id: &SessionId, resp: VaultResponse) -> Result<Step, NodeError> {
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        let plain = Zeroizing::new(bkv_wire::encode(&resp));
        let mut out = vec![0u8; plain.len() + 64];
        let n = session
            .transport
            .write_message(&plain, &mut out)
            .map_err(|_| NodeError::BadRequest("response too large".into()))?;
        out.truncate(n);
        Ok(Step::Reply(out))
    }

    fn error(&mut self, session_id: &SessionId, e: VaultError) -> Result<Step, NodeError> {
        self.reply(session_id, VaultResponse::Error(e))
    }

    fn commit(
        &mut self,
        session_id: &SessionId,
        m: Mutation,
        awaiting: Awaiting,
    ) -> Result<Step, NodeError> {
        let session = self
            .sessions
            .get_mut(session_id)
            .ok_or(NodeError::UnknownSession)?;
        session.awaiting = Some(awaiting);
        Ok(Step::Commit(m))
    }

    fn absent_error(&self, rid: &RecordId) -> VaultError {
        match self.state.status(rid) {
            RecordState::Destroyed => VaultError::Destroyed,
            _ => VaultError::NoRecord,
        }
    }

    fn handle(&mut self, sid: &SessionId, request: VaultRequest) -> Result<Step, NodeError> {
        let (rid, authenticated, registering) = {
            let s = self.sessions.get(sid).ok_or(NodeError::UnknownSession)?;
            (s.record_id, s.authenticated, s.registering)
        };
        match request {
            VaultRequest::Status => {
                let state = self.state.status(&rid);
                self.reply(sid, VaultResponse::Status { state })
            }
            VaultRequest::RegisterStart {
                registration_request,
            } => {
                let replaces = match self.state.active(&rid) {
                    Some((_, _, gen)) if authenticated == Some(gen) => Some(gen),
                    Some(_) => return self.error(sid, VaultError::RecordExists),
                    None => None,
                };
                let Ok(req) =
                    RegistrationRequest::<OpaqueSuite>::deserialize(&registration_request)
                else {
                    return self.error(sid, bad("malformed RegistrationRequest"));
                };
                let Ok(start) = ServerRegistration::<OpaqueSuite>::start(&self.setup, req, &rid)
                else {
                    return self.error(sid, bad("registration request rejected"));
                };
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.registering = Some(replaces);
                }
                self.reply(
                    sid,
                    VaultResponse::RegisterStarted {
                        registration_response: start.message.serialize().to_vec(),
                    },
                )
            }
            VaultRequest::RegisterFinish {
                upload,
                wrapped_key,
                guess_limit,
                confirm_hash,
            } => {
                let Some(replaces) = registering else {
                    return self.error(sid, bad("send RegisterStart first"));
                };
                if wrapped_key.is_empty() || wrapped_key.len() > MAX_WRAPPED_KEY {
                    return self.error(sid, bad("wrapped key size out of range"));
                }
                if !(MIN_GUESS_LIMIT..=MAX_GUESS_LIMIT).contains(&guess_limit) {
                    return self.error(sid, bad("guess limit out of range"));
                }
                let Ok(upload) = RegistrationUpload::<OpaqueSuite>::deserialize(&upload) else {
                    return self.error(sid, bad("malformed RegistrationUpload"));
                };
                let opaque_record = ServerRegistration::finish(upload).serialize().to_vec();
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.registering = None;
                }
                let m = Mutation::StorePending {
                    record_id: rid,
                    pending: state::Pending {
                        credential: state::Credential {
                            opaque_record,
                            wrapped_key,
                            guess_limit,
                            confirm_hash,
                        },
                        replaces,
                    },
                };
                self.commit(sid, m, Awaiting::Stored)
            }
            VaultRequest::RegisterConfirm { confirm_secret } => {
                let confirm_hash: [u8; 32] = Sha256::digest(confirm_secret).into();
                let m = Mutation::Activate {
                    record_id: rid,
                    confirm_hash,
                };
                self.commit(sid, m, Awaiting::Confirmed)
            }
            VaultRequest::LoginStart { credential_request } => {
                // Parse first: malformed input must change nothing.
                if CredentialRequest::<OpaqueSuite>::deserialize(&credential_request).is_err() {
                    return self.error(sid, bad("malformed CredentialRequest"));
                }
                let Some((cred, attempts, generation)) = self.state.active(&rid) else {
                    let e = self.absent_error(&rid);
                    return self.error(sid, e);
                };
                if attempts >= cred.guess_limit {
                    // Left at the limit by an earlier session that never finished.
                    let m = Mutation::Destroy {
                        record_id: rid,
                        generation,
                    };
                    return self.commit(sid, m, Awaiting::DestroyedThenFail);
                }
                let m = Mutation::CountGuess {
                    record_id: rid,
                    generation,
                };
                self.commit(sid, m, Awaiting::Counted { credential_request })
            }
            VaultRequest::LoginFinish {
                credential_finalization,
            } => {
                let login = self.sessions.get_mut(sid).and_then(|s| s.login.take());
                let Some(login) = login else {
                    return self.error(sid, bad("send LoginStart first"));
                };
                let finished =
                    CredentialFinalization::<OpaqueSuite>::deserialize(&credential_finalization)
                        .ok()
                        .and_then(|f| login.server_login.finish(f, login_params()).ok());
                if finished.is_some() {
                    let m = Mutation::ResetGuesses {
                        record_id: rid,
                        generation: login.generation,
                    };
                    if let Some(s) = self.sessions.get_mut(sid) {
                        s.authenticated = Some(login.generation);
                    }
                    return self.commit(sid, m, Awaiting::LoginReset);
                }
                if login.attempts >= login.guess_limit {
                    let m = Mutation::Destroy {
                        record_id: rid,
                        generation: login.generation,
                    };
                    return self.commit(sid, m, Awaiting::DestroyedThenFail);
                }
                self.error(
                    sid,
                    VaultError::WrongPassword {
                        guesses_remaining: login.guess_limit - login.attempts,
                    },
                )
            }
            VaultRequest::Delete => {
                let generation = self.state.records.get(&rid).map(|r| r.generation);
                match (generation, authenticated) {
                    (None, _) => self.error(sid, VaultError::NoRecord),
                    (Some(g), Some(a)) if g == a => {
                        let m = Mutation::Delete {
                            record_id: rid,
                            generation: g,
                        };
                        self.commit(sid, m, Awaiting::Deleted)
                    }
                    _ => self.error(sid, VaultError::NotAuthenticated),
                }
            }
        }
    }

    /// Continues a session after its mutation committed and was applied with
    /// `outcome`. The session may be gone (expired, client vanished): the
    /// mutation still stands, only the reply is lost.
    pub fn resume(&mut self, sid: &SessionId, outcome: Outcome) -> Result<Step, NodeError> {
        let session = self
            .sessions
            .get_mut(sid)
            .ok_or(NodeError::UnknownSession)?;
        let rid = session.record_id;
        let Some(awaiting) = session.awaiting.take() else {
            return Err(NodeError::BadRequest("nothing to resume".into()));
        };
        match (awaiting, outcome) {
            (Awaiting::Stored, Outcome::Stored) => self.reply(sid, VaultResponse::RegisterStored),
            (Awaiting::Stored, Outcome::RecordExists) => self.error(sid, VaultError::RecordExists),
            (Awaiting::Confirmed, Outcome::Activated { .. } | Outcome::AlreadyActive) => {
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.authenticated = None;
                }
                self.reply(sid, VaultResponse::RegisterConfirmed)
            }
            (Awaiting::Confirmed, Outcome::NoPending) => {
                self.error(sid, VaultError::NoPendingRegistration)
            }
            (
                Awaiting::Counted { credential_request },
                Outcome::Counted {
                    attempts,
                    guess_limit,
                },
            ) => self.start_login(sid, rid, &credential_request, attempts, guess_limit),
            (Awaiting::Counted { .. }, Outcome::Exhausted) => match self.state.active(&rid) {
                Some((_, _, generation)) => self.commit(
                    sid,
                    Mutation::Destroy {
                        record_id: rid,
                        generation,
                    },
                    Awaiting::DestroyedThenFail,
                ),
                None => self.error(sid, VaultError::Destroyed),
            },
            (Awaiting::LoginReset, Outcome::Reset) => match self.state.active(&rid) {
                Some((cred, _, _)) => {
                    let wrapped_key = cred.wrapped_key.clone();
                    self.reply(sid, VaultResponse::LoginOk { wrapped_key })
                }
                None => {
                    let e = self.absent_error(&rid);
                    self.error(sid, e)
                }
            },
            (Awaiting::DestroyedThenFail, _) => self.error(sid, VaultError::Destroyed),
            (Awaiting::Deleted, Outcome::Deleted) => self.reply(sid, VaultResponse::Deleted),
            (_, Outcome::NoRecord) => {
                let e = self.absent_error(&rid);
                self.error(sid, e)
            }
            (Awaiting::LoginReset, _) => {
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.authenticated = None;
                }
                self.error(sid, VaultError::Conflict)
            }
            _ => self.error(sid, VaultError::Conflict),
        }
    }

    fn start_login(
        &mut self,
        sid: &SessionId,
        rid: RecordId,
        credential_request: &[u8],
        attempts: u32,
        guess_limit: u32,
    ) -> Result<Step, NodeError> {
        let Some((cred, _, generation)) = self.state.active(&rid) else {
            let e = self.absent_error(&rid);
            return self.error(sid, e);
        };
        let record = ServerRegistration::<OpaqueSuite>::deserialize(&cred.opaque_record);
        let request = CredentialRequest::<OpaqueSuite>::deserialize(credential_request);
        let (Ok(record), Ok(request)) = (record, request) else {
            return self.error(sid, bad("stored record or request is malformed"));
        };
        let start = ServerLogin::start(
            self.platform.rng(),
            &self.setup,
            Some(record),
            request,
            &rid,
            login_params(),
        );
        let Ok(start) = start else {
            return self.error(sid, bad("login request rejected"));
        };
        if let Some(s) = self.sessions.get_mut(sid) {
            s.login = Some(LoginState {
                server_login: start.state,
                generation,
                attempts,
                guess_limit,
            });
        }
        self.reply(
            sid,
            VaultResponse::LoginStarted {
                credential_response: start.message.serialize().to_vec(),
                guesses_remaining: guess_limit.saturating_sub(attempts),
            },
        )
    }
}

fn login_params() -> ServerLoginParameters<'static, 'static> {
    ServerLoginParameters {
        context: Some(OPAQUE_CONTEXT),
        identifiers: Default::default(),
    }
}

fn bad(msg: &str) -> VaultError {
    VaultError::BadRequest(msg.into())
}
