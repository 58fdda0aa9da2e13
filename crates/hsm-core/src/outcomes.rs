//! The reply to a session's request once its mutation committed and every core applied it: the
//! outcome the core's own state machine computed decides it (split from `requests.rs`, which
//! proposes the mutations).

use super::*;

impl Core {
    /// Resumes every session whose outcome an apply kept since the last call, in the order
    /// their entries applied: what a host hands back with the batch instead of one
    /// [`Core::resume`] per session (BENCHMARKS.md, "Issue 28, item 4, finished": a round trip
    /// fewer per commit). Each session's reply, or why it has none, with the sequence number of
    /// the entry that decided it (so a host hands it only to the request that made that entry).
    /// The counter rule of `resume` holds (it raises the counter first, or answers
    /// "unavailable"). A session whose outcome asks for another entry (a count that found the
    /// limit reached commits the record's destruction) is left for `resume`: its entry must go
    /// to the log within its turn, which only a `resume` reply carries.
    pub fn release_ready(&mut self) -> Vec<(SessionId, u64, Result<Vec<u8>, NodeError>)> {
        let mut ready = std::mem::take(&mut self.ready);
        let mut seen = std::collections::HashSet::new();
        // Resumed meanwhile by `resume` (a host that asked the old way), gone, or named twice:
        // nothing (more) to release.
        ready.retain(|sid| {
            seen.insert(*sid)
                && self.sessions.get(sid).is_some_and(|s| {
                    s.applied.is_some() && s.awaiting_seq.is_some() && !s.resume_commits()
                })
        });
        ready
            .into_iter()
            .filter_map(|sid| {
                let seq = self.sessions.get(&sid)?.awaiting_seq?;
                let reply = match self.resume(&sid) {
                    Ok(Step::Reply(r)) => Ok(r),
                    // Not reached: `resume_commits` kept such sessions out.
                    Ok(Step::Commit(_) | Step::ReadFresh) => Err(NodeError::Unavailable),
                    Err(e) => Err(e),
                };
                Some((sid, seq, reply))
            })
            .collect()
    }

    /// Continues a session once this core applied the entry it waits for, with the outcome
    /// this core computed then ([`Core::apply`]). The session may be gone (expired, client
    /// vanished): the entry still stands, only the reply is lost. Called before the entry
    /// applied, it changes nothing and says so ([`NodeError::InProgress`]).
    pub fn resume(&mut self, sid: &SessionId) -> Result<Step, NodeError> {
        self.serving()?;
        // An entry this core never applied itself but that its state has passed (it arrived
        // inside a snapshot from another member): its outcome is unknown here, so the session
        // ends as after a failed commit instead of waiting until it expires.
        let last = self.state.fleet().proposers.get(&self.identity).copied();
        let passed = self.sessions.get(sid).is_some_and(|s| {
            s.applied.is_none() && s.awaiting_seq.is_some_and(|seq| last >= Some(seq))
        });
        if passed {
            self.commit_failed(sid);
            return Err(NodeError::Unavailable);
        }
        let session = self
            .sessions
            .get_mut(sid)
            .ok_or(NodeError::UnknownSession)?;
        let rid = session.record_id;
        match &session.awaiting {
            None | Some(Awaiting::Fresh(_)) => {
                return Err(NodeError::BadRequest("nothing to resume".into()))
            }
            Some(_) if session.applied.is_none() => return Err(NodeError::InProgress),
            Some(_) => {}
        }
        // The outcome is about to leave: the counter first (nothing taken yet if it fails).
        self.release()?;
        let session = self
            .sessions
            .get_mut(sid)
            .ok_or(NodeError::UnknownSession)?;
        let (Some(awaiting), Some(outcome)) = (session.awaiting.take(), session.applied.take())
        else {
            return Err(NodeError::BadRequest("nothing to resume".into()));
        };
        session.awaiting_seq = None;
        match (awaiting, outcome) {
            (
                Awaiting::RegisterCounted {
                    registration_request,
                    replaces,
                },
                Outcome::RegisterStartCounted,
            ) => self.start_registration(sid, rid, &registration_request, replaces),
            (Awaiting::RegisterCounted { .. }, Outcome::TooManyRegisterStarts) => {
                self.error(sid, VaultError::TooManyRegistrations)
            }
            (Awaiting::MoveStored, Outcome::Stored) => self.reply(sid, VaultResponse::MoveStored),
            (Awaiting::MoveStored, Outcome::BadTicket(e)) => {
                self.error(sid, VaultError::BadTicket(e))
            }
            (Awaiting::MovedOut, Outcome::MovedOut { attempts }) => {
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.authenticated = None;
                }
                match self
                    .state
                    .record(&rid)
                    .map_err(unavailable)?
                    .and_then(|r| r.live)
                {
                    Some(state::Live::Moved {
                        to_fleet,
                        pending_digest,
                        ..
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
                    _ => self.error(sid, VaultError::Conflict),
                }
            }
            (Awaiting::MovedIn, Outcome::Activated { .. } | Outcome::AlreadyActive) => {
                self.reply(sid, VaultResponse::MovedIn)
            }
            (Awaiting::MovedIn, Outcome::BadTicket(e)) => self.error(sid, VaultError::BadTicket(e)),
            (Awaiting::MovedIn, Outcome::NoPending) => {
                self.error(sid, VaultError::NoPendingRegistration)
            }
            (_, Outcome::Moved) => {
                let e = self.absent_error(&rid);
                self.error(sid, e)
            }
            (_, Outcome::AbovePolicy { max }) => self.error(
                sid,
                VaultError::BadRequest(format!("guess limit above the fleet's policy ({max})")),
            ),
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
                Awaiting::Counted {
                    credential_request,
                    generation,
                },
                Outcome::Counted {
                    attempts,
                    guess_limit,
                },
            ) => self.start_login(
                sid,
                rid,
                &credential_request,
                generation,
                attempts,
                guess_limit,
            ),
            // Destroy names the generation that reached its limit: if the
            // record was replaced meanwhile, applying it changes nothing.
            (Awaiting::Counted { generation, .. }, Outcome::Exhausted) => self.commit(
                sid,
                Mutation::Destroy {
                    record_id: rid,
                    generation,
                },
                Awaiting::DestroyedThenFail,
            ),
            (Awaiting::LoginReset { generation }, Outcome::Reset) => {
                match self.state.active(&rid).map_err(unavailable)? {
                    // Only the key of the generation this login proved the
                    // password of (a replacement may have landed since the reset).
                    Some((cred, _, g)) if g == generation => {
                        let wrapped_key = cred.wrapped_key.clone();
                        self.reply(sid, VaultResponse::LoginOk { wrapped_key })
                    }
                    Some(_) => {
                        if let Some(s) = self.sessions.get_mut(sid) {
                            s.authenticated = None;
                        }
                        self.error(sid, VaultError::Conflict)
                    }
                    None => {
                        let e = self.absent_error(&rid);
                        self.error(sid, e)
                    }
                }
            }
            (Awaiting::DestroyedThenFail, _) => self.error(sid, VaultError::Destroyed),
            (Awaiting::Deleted, Outcome::Deleted) => self.reply(sid, VaultResponse::Deleted),
            (_, Outcome::NoRecord) => {
                let e = self.absent_error(&rid);
                self.error(sid, e)
            }
            (Awaiting::LoginReset { .. }, _) => {
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.authenticated = None;
                }
                self.error(sid, VaultError::Conflict)
            }
            _ => self.error(sid, VaultError::Conflict),
        }
    }
}
