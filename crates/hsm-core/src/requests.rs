//! The vault requests of a session: what each reads, which mutation it proposes, and the
//! reply once that mutation committed (the guess rule's count-before-answer order lives here).

use super::*;

impl Core {
    /// Handles a decoded request; one that [`reads_state`] only on a fresh
    /// replica (after [`Step::ReadFresh`]).
    pub(crate) fn handle(
        &mut self,
        sid: &SessionId,
        request: VaultRequest,
    ) -> Result<Step, NodeError> {
        let (rid, authenticated, registering) = {
            let s = self.sessions.get(sid).ok_or(NodeError::UnknownSession)?;
            (s.record_id, s.authenticated, s.registering)
        };
        match request {
            VaultRequest::Close => {
                // Only the session's own key produces a request that
                // decrypts here: nobody else can end it.
                let step = self.reply(sid, VaultResponse::Closed);
                self.sessions.remove(sid);
                step
            }
            VaultRequest::Status => {
                let state = self.state.status(&rid).map_err(unavailable)?;
                self.reply(sid, VaultResponse::Status { state })
            }
            VaultRequest::RegisterStart {
                registration_request,
            } => {
                // A live record is replaced only from a session that logged in to it; any other
                // start may go on only to a move's registration (`RegisterFinishMove`).
                let replaces = match self.state.record(&rid).map_err(unavailable)? {
                    Some(r) => match r.live {
                        Some(state::Live::Active { .. }) => match authenticated {
                            Some(a) if a == r.generation => Replaces::Live(a),
                            _ => Replaces::OnlyByMove,
                        },
                        Some(state::Live::Moved { to_fleet, .. }) => {
                            return self.error(sid, VaultError::Moved { to_fleet })
                        }
                        _ => Replaces::Nothing,
                    },
                    None => Replaces::Nothing,
                };
                if RegistrationRequest::<OpaqueSuite>::deserialize(&registration_request).is_err() {
                    return self.error(sid, bad("malformed RegistrationRequest"));
                }
                let Some(s) = self.sessions.get_mut(sid) else {
                    return Err(NodeError::UnknownSession);
                };
                // Budgeted per session here and per record and day in the committed record, so
                // that evaluations are rare as well as useless (the salt below).
                if s.register_starts >= MAX_REGISTER_STARTS_PER_SESSION {
                    return self.error(sid, VaultError::TooManyRegistrations);
                }
                s.register_starts += 1;
                s.registering = None;
                let day = u32::try_from(self.platform.now_unix_secs() / 86_400).unwrap_or(u32::MAX);
                self.commit(
                    sid,
                    Mutation::CountRegisterStart {
                        record_id: rid,
                        day,
                    },
                    Awaiting::RegisterCounted {
                        registration_request,
                        replaces,
                    },
                )
            }
            VaultRequest::RegisterFinish {
                upload,
                wrapped_key,
                guess_limit,
                confirm_hash,
            } => {
                let credential = match self.credential(
                    registering.as_ref(),
                    &upload,
                    wrapped_key,
                    guess_limit,
                    confirm_hash,
                ) {
                    Ok(c) => c,
                    Err(e) => return self.error(sid, e),
                };
                let replaces = match registering.map(|r| r.replaces) {
                    Some(Replaces::Live(g)) => Some(g),
                    Some(Replaces::OnlyByMove) => return self.error(sid, VaultError::RecordExists),
                    _ => None,
                };
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.registering = None;
                }
                let m = Mutation::StorePending {
                    record_id: rid,
                    pending: state::Pending {
                        credential,
                        replaces,
                    },
                };
                self.commit(sid, m, Awaiting::Stored)
            }
            VaultRequest::RegisterFinishMove {
                upload,
                wrapped_key,
                guess_limit,
                confirm_hash,
                intent,
            } => {
                let pending_digest = bkv_wire::vault::pending_digest(
                    &upload,
                    &wrapped_key,
                    guess_limit,
                    &confirm_hash,
                );
                let credential = match self.credential(
                    registering.as_ref(),
                    &upload,
                    wrapped_key,
                    guess_limit,
                    confirm_hash,
                ) {
                    Ok(c) => c,
                    Err(e) => return self.error(sid, e),
                };
                // Checked here to answer early; every core checks it again when applying.
                let checked = moves::verify(
                    self.secrets.trust(),
                    self.fleet_id(),
                    &rid,
                    MoveStep::Intent,
                    &intent,
                );
                match checked {
                    Ok(t) if t.pending_digest == pending_digest => {}
                    Ok(_) => {
                        let e =
                            VaultError::BadTicket("the intent names another registration".into());
                        return self.error(sid, e);
                    }
                    Err(e) => return self.error(sid, VaultError::BadTicket(e.to_string())),
                }
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.registering = None;
                }
                let m = Mutation::StorePendingMove {
                    record_id: rid,
                    credential,
                    intent,
                };
                self.commit(sid, m, Awaiting::MoveStored)
            }
            VaultRequest::MoveIntent {
                to_fleet,
                pending_digest,
            } => match self.authenticated_generation(&rid, authenticated, &to_fleet)? {
                Err(e) => self.error(sid, e),
                Ok(_) => {
                    let ticket =
                        self.move_ticket(MoveStep::Intent, rid, to_fleet, pending_digest, 0);
                    self.reply(sid, VaultResponse::MoveTicket { ticket })
                }
            },
            VaultRequest::MoveOut {
                to_fleet,
                pending_digest,
            } => {
                let generation =
                    match self.authenticated_generation(&rid, authenticated, &to_fleet)? {
                        Ok(g) => g,
                        Err(e) => return self.error(sid, e),
                    };
                let m = Mutation::MoveOut {
                    record_id: rid,
                    generation,
                    to_fleet,
                    pending_digest,
                };
                self.commit(sid, m, Awaiting::MovedOut)
            }
            VaultRequest::GetMoveTicket => {
                match self
                    .state
                    .record(&rid)
                    .map_err(unavailable)?
                    .and_then(|r| r.live)
                {
                    Some(state::Live::Moved {
                        to_fleet,
                        pending_digest,
                        attempts,
                    }) => {
                        let ticket = self.move_ticket(
                            MoveStep::Moved,
                            rid,
                            to_fleet,
                            pending_digest,
                            attempts,
                        );
                        self.reply(sid, VaultResponse::MoveTicket { ticket })
                    }
                    _ => {
                        let e = self.absent_error(&rid);
                        self.error(sid, e)
                    }
                }
            }
            VaultRequest::MoveIn { ticket } => {
                // Checked here to answer early; every core checks it again when applying.
                let (trust, fleet) = (self.secrets.trust(), self.fleet_id());
                if let Err(e) = moves::verify(trust, fleet, &rid, MoveStep::Moved, &ticket) {
                    return self.error(sid, VaultError::BadTicket(e.to_string()));
                }
                let m = Mutation::MoveIn {
                    record_id: rid,
                    ticket,
                };
                self.commit(sid, m, Awaiting::MovedIn)
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
                let Some((cred, attempts, generation)) =
                    self.state.active(&rid).map_err(unavailable)?
                else {
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
                self.commit(
                    sid,
                    m,
                    Awaiting::Counted {
                        credential_request,
                        generation,
                    },
                )
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
                    return self.commit(
                        sid,
                        m,
                        Awaiting::LoginReset {
                            generation: login.generation,
                        },
                    );
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
                let record = self.state.record(&rid).map_err(unavailable)?;
                let generation = record.map(|r| r.generation);
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

    pub(crate) fn start_login(
        &mut self,
        sid: &SessionId,
        rid: RecordId,
        credential_request: &[u8],
        counted: u64,
        attempts: u32,
        guess_limit: u32,
    ) -> Result<Step, NodeError> {
        let Some((cred, _, generation)) = self.state.active(&rid).map_err(unavailable)? else {
            let e = self.absent_error(&rid);
            return self.error(sid, e);
        };
        // The guess was counted on `counted`; a record replaced since then
        // must not be tried with it (that guess would go uncounted).
        if generation != counted {
            return self.error(sid, VaultError::Conflict);
        }
        let (identifier, registration) = credential::split(&rid, &cred.opaque_record);
        let record = ServerRegistration::<OpaqueSuite>::deserialize(registration);
        let request = CredentialRequest::<OpaqueSuite>::deserialize(credential_request);
        let (Ok(record), Ok(request)) = (record, request) else {
            return self.error(sid, bad("stored record or request is malformed"));
        };
        let Ok(mut rng) = platform::operation_rng(&*self.platform) else {
            return self.error(sid, bad("platform randomness failed"));
        };
        let start = ServerLogin::start(
            &mut rng,
            &self.setup,
            Some(record),
            request,
            &identifier,
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

    /// Evaluates the OPRF for a counted `RegisterStart` under a key of its own: a fresh salt
    /// joins the record id in the credential identifier, so the evaluation says nothing about
    /// any other registration's password (issue 27, item 1).
    pub(crate) fn start_registration(
        &mut self,
        sid: &SessionId,
        rid: RecordId,
        registration_request: &[u8],
        replaces: Replaces,
    ) -> Result<Step, NodeError> {
        let Ok(req) = RegistrationRequest::<OpaqueSuite>::deserialize(registration_request) else {
            return self.error(sid, bad("malformed RegistrationRequest"));
        };
        let mut oprf_salt = [0u8; credential::SALT_LEN];
        if self.platform.fill_random(&mut oprf_salt).is_err() {
            return Err(NodeError::Unavailable);
        }
        let identifier = credential::identifier(&rid, &oprf_salt);
        let Ok(start) = ServerRegistration::<OpaqueSuite>::start(&self.setup, req, &identifier)
        else {
            return self.error(sid, bad("registration request rejected"));
        };
        if let Some(s) = self.sessions.get_mut(sid) {
            s.registering = Some(Registering {
                replaces,
                oprf_salt,
            });
        }
        self.reply(
            sid,
            VaultResponse::RegisterStarted {
                registration_response: start.message.serialize().to_vec(),
            },
        )
    }

    /// The credential a registration's finish uploads, checked: after a `RegisterStart` of
    /// this session, a wrapped key of a sane size, a guess limit within the fleet's policy.
    fn credential(
        &self,
        registering: Option<&Registering>,
        upload: &[u8],
        wrapped_key: Vec<u8>,
        guess_limit: u32,
        confirm_hash: [u8; 32],
    ) -> Result<state::Credential, VaultError> {
        let Some(registering) = registering else {
            return Err(bad("send RegisterStart first"));
        };
        if wrapped_key.is_empty() || wrapped_key.len() > MAX_WRAPPED_KEY {
            return Err(bad("wrapped key size out of range"));
        }
        if !(MIN_GUESS_LIMIT..=MAX_GUESS_LIMIT).contains(&guess_limit) {
            return Err(bad("guess limit out of range"));
        }
        let max = self.secrets.trust().max_guess_limit;
        if guess_limit > max {
            return Err(VaultError::BadRequest(format!(
                "guess limit above the fleet's policy ({max})"
            )));
        }
        let Ok(upload) = RegistrationUpload::<OpaqueSuite>::deserialize(upload) else {
            return Err(bad("malformed RegistrationUpload"));
        };
        let registration = ServerRegistration::finish(upload).serialize();
        Ok(state::Credential {
            opaque_record: credential::salted(&registering.oprf_salt, &registration),
            wrapped_key,
            guess_limit,
            confirm_hash,
        })
    }

    /// The live record's generation if this session logged in to it, for a move to `to_fleet`
    /// (another fleet); else what to answer.
    fn authenticated_generation(
        &mut self,
        rid: &RecordId,
        authenticated: Option<u64>,
        to_fleet: &str,
    ) -> Result<Result<u64, VaultError>, NodeError> {
        if to_fleet.is_empty()
            || to_fleet.len() > bkv_wire::admin::MAX_TEXT
            || to_fleet == self.secrets.fleet_id()
        {
            return Ok(Err(bad("a move must name another fleet")));
        }
        Ok(match self.state.active(rid).map_err(unavailable)? {
            Some((_, _, g)) if authenticated == Some(g) => Ok(g),
            Some(_) => Err(VaultError::NotAuthenticated),
            None => Err(self.absent_error(rid)),
        })
    }

    /// A signed ticket for `step` of moving `record_id` to `to_fleet`.
    pub(crate) fn move_ticket(
        &self,
        step: MoveStep,
        record_id: RecordId,
        to_fleet: String,
        pending_digest: [u8; 32],
        attempts: u32,
    ) -> bkv_wire::vault::SignedMoveTicket {
        moves::sign(
            &self.secrets,
            &bkv_wire::vault::MoveTicket {
                version: bkv_wire::vault::MOVE_TICKET_VERSION,
                step,
                from_fleet: self.secrets.fleet_id().to_owned(),
                to_fleet,
                record_id,
                pending_digest,
                attempts,
            },
        )
    }
}
