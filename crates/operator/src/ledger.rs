//! The operator's own record of the admin commands it signed (issue 27, item 3): per fleet, the
//! sequence number of the last one. The admin link is unauthenticated, so what it answers
//! (the fleet's id, the next sequence number) decides nothing: the tool signs only for the fleet
//! it was told to, and only the number after the last one it signed (or that one again, when
//! the last did not execute). A lying link could otherwise collect commands for another fleet or
//! for a sequence number the fleet reaches later.
//!
//! `operator-ledger.json`: `{"<fleet id>": <last signed sequence number>, ...}` (mode 0600).

use crate::{OperatorError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest ledger file read.
const MAX_LEDGER: u64 = 1 << 20;

/// Where an operator keeps its record of signed commands.
#[derive(Debug, Clone)]
pub struct Ledger(PathBuf);

impl Ledger {
    /// The ledger in file `path` (made at the first command signed).
    pub fn at(path: &Path) -> Self {
        Ledger(path.to_owned())
    }

    fn read(&self) -> Result<BTreeMap<String, u64>> {
        let bad = |m: String| OperatorError::Fleet(format!("ledger {}: {m}", self.0.display()));
        match std::fs::metadata(&self.0) {
            Ok(m) if m.len() > MAX_LEDGER => Err(bad("too large".into())),
            Ok(_) => {
                let b = std::fs::read(&self.0).map_err(|e| bad(e.to_string()))?;
                serde_json::from_slice(&b).map_err(|e| bad(e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// The last sequence number signed for `fleet_id` (0: none yet).
    pub fn last(&self, fleet_id: &str) -> Result<u64> {
        Ok(self.read()?.get(fleet_id).copied().unwrap_or(0))
    }

    /// Records that command `seq` is being signed for `fleet_id` (before it is sent).
    pub fn record(&self, fleet_id: &str, seq: u64) -> Result<()> {
        let mut all = self.read()?;
        let e = all.entry(fleet_id.to_owned()).or_insert(0);
        *e = (*e).max(seq);
        let body = serde_json::to_vec_pretty(&all)
            .map_err(|e| OperatorError::Fleet(format!("ledger: {e}")))?;
        bkv_client::write_private_file(&self.0, &body)
            .map_err(|e| OperatorError::Fleet(format!("write ledger {}: {e}", self.0.display())))
    }

    /// The sequence number this operator may sign next for `fleet_id` when the fleet's link
    /// says `next`: the one after the last it signed, or that one again (it did not execute);
    /// the fleet's first command is number 1.
    pub fn check(&self, fleet_id: &str, next: u64) -> Result<u64> {
        let last = self.last(fleet_id)?;
        let ok = match last {
            0 => next == 1,
            l => next == l || next == l + 1,
        };
        if !ok {
            return Err(OperatorError::Fleet(format!(
                "the admin link says fleet {fleet_id}'s next command is number {next}, but this \
                 operator last signed number {last} for it ({}): refusing to sign for a \
                 sequence number it was not told (another operator's commands, or a link that \
                 lies; check the fleet, then correct the ledger)",
                self.0.display()
            )));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use crate::fleet::{execute, Operator};
    use bkv_wire::admin::{AdminAction, AdminCommand, AdminRequest, AdminResponse, MembersView};
    use bkv_wire::node::{read_frame, write_frame, FleetStatus};
    use ed25519_dalek::SigningKey;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// An admin link that answers `Members` with `fleet_id` and `next_seq`, executes whatever
    /// it is sent, and records the commands it received.
    fn link(
        fleet_id: &str,
        next_seq: u64,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<AdminCommand>>>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (seen, fleet_id) = (got.clone(), fleet_id.to_owned());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let mut w = conn.try_clone().unwrap();
                let mut r = std::io::BufReader::new(conn);
                let view = MembersView {
                    fleet_id: fleet_id.clone(),
                    next_seq,
                    members: Vec::new(),
                    status: FleetStatus {
                        node_id: 0,
                        role: "leader".into(),
                        leader: Some(0),
                        term: 1,
                        last_log_index: None,
                        applied_index: None,
                        voters: vec![0],
                        learners: vec![],
                    },
                    records: 0,
                };
                while let Ok(Some(req)) = read_frame::<AdminRequest>(&mut r) {
                    let resp = match req {
                        AdminRequest::Execute(signed) => {
                            let cmd = bkv_wire::decode(&signed.command, 1 << 16).unwrap();
                            seen.lock().unwrap().push(cmd);
                            AdminResponse::Executed(view.clone())
                        }
                        _ => AdminResponse::Members(view.clone()),
                    };
                    if write_frame(&mut w, &resp).is_err() {
                        break;
                    }
                }
            }
        });
        (addr, got)
    }

    fn operator(ledger: &std::path::Path) -> Operator {
        Operator {
            key: SigningKey::from_bytes(&[5; 32]),
            auditor_url: "http://127.0.0.1:1".into(),
            namespace: "ns".into(),
            http: reqwest::Client::new(),
            ledger: Some(super::Ledger::at(ledger)),
        }
    }

    /// Issue 27, item 3: the operator tool signs only for the fleet it was told to and the
    /// sequence number its own ledger allows, whatever the unauthenticated admin link answers.
    #[test]
    fn a_lying_admin_link_gets_no_command_signed() {
        let t = tempfile::tempdir().unwrap();
        let op = operator(&t.path().join("ledger.json"));
        let promote = AdminAction::Promote { node_id: 1 };
        // A link answering for another fleet, or for a sequence number far ahead.
        for (fleet, seq) in [("fleet-b", 1), ("fleet-a", 50)] {
            let (addr, got) = link(fleet, seq);
            let r = execute(
                &op,
                &BTreeMap::from([(0, addr)]),
                "fleet-a",
                promote.clone(),
            );
            assert!(r.is_err(), "{fleet} {seq}: signed");
            assert!(
                got.lock().unwrap().is_empty(),
                "{fleet} {seq}: a command was sent"
            );
        }
        // An honest link: command 1, then 2 (or 2 again, when it did not execute).
        for (seq, ok) in [(1, true), (2, true), (2, true), (4, false)] {
            let (addr, got) = link("fleet-a", seq);
            let r = execute(
                &op,
                &BTreeMap::from([(0, addr)]),
                "fleet-a",
                promote.clone(),
            );
            assert_eq!(r.is_ok(), ok, "seq {seq}");
            let sent = got.lock().unwrap();
            assert_eq!(
                sent.iter()
                    .map(|c| (c.seq, c.fleet_id.as_str()))
                    .collect::<Vec<_>>(),
                if ok { vec![(seq, "fleet-a")] } else { vec![] }
            );
        }
        // Without a ledger nothing is signed.
        let mut bare = operator(&t.path().join("x.json"));
        bare.ledger = None;
        let (addr, got) = link("fleet-a", 1);
        assert!(execute(&bare, &BTreeMap::from([(0, addr)]), "fleet-a", promote).is_err());
        assert!(got.lock().unwrap().is_empty());
    }
}
