//! Attacks with the operator's powers, end to end (issue 27; SECURITY.md "Attacks and the tests
//! that refuse them"): the attacker holds users' tokens (it issues them), runs the frontend and
//! the hosts, and drops whatever messages it likes; real processes on 127.0.0.1.

use crate::abuse::{dev_token, endpoint, rt};
use crate::rotation::{create, fleet, pinned_config, record, restore, PW, WRONG};
use bkv_client::{Endpoint, FleetTarget, Session};
use bkv_testkit::oprf_oracle;
use bkv_testkit::system::{text, DevUp};
use bkv_wire::vault::{VaultError, VaultRequest, VaultResponse};
use std::path::Path;

/// The password `PW` without its newline, and a dictionary holding it at index 3.
fn dictionary() -> (String, Vec<String>) {
    let pw = PW.trim_end().to_owned();
    let mut words: Vec<String> = (0..50).map(|i| format!("candidate-{i:02}")).collect();
    words[3] = pw.clone();
    (pw, words)
}

/// Evaluates words of `words` through `RegisterStart`s in fresh sessions on `ep` until the
/// vault refuses (its budget) or `max` are evaluated. Returns (word, OPRF output) pairs, the
/// fleet's OPAQUE key, and whether the vault refused for the budget.
async fn evaluate(
    ep: &Endpoint,
    user: &str,
    words: &[String],
    max: usize,
) -> (Vec<(String, Vec<u8>)>, Option<[u8; 32]>, bool) {
    let mut out = Vec::new();
    let mut key = None;
    for word in words.iter().take(max) {
        let blinded = oprf_oracle::blind(word.as_bytes());
        let mut s = Session::open(ep, user).await.unwrap();
        let r = s
            .call(&VaultRequest::RegisterStart {
                registration_request: blinded.request.clone(),
            })
            .await
            .unwrap();
        s.close().await;
        match r {
            VaultResponse::RegisterStarted {
                registration_response,
            } => {
                key = oprf_oracle::server_public_key(&registration_response);
                out.push((
                    word.clone(),
                    blinded.finalize(&registration_response).unwrap(),
                ));
            }
            VaultResponse::Error(VaultError::TooManyRegistrations) => return (out, key, true),
            other => panic!("{other:?}"),
        }
    }
    (out, key, false)
}

/// Spends one counted `LoginStart` (blinding `probe`) and returns the words whose evaluation
/// unmasks its answer. The probe's own evaluation must unmask it (the offline test works).
async fn test_offline(
    ep: &Endpoint,
    user: &str,
    probe: &str,
    evaluations: &[(String, Vec<u8>)],
    key: &[u8; 32],
) -> Vec<String> {
    let blinded = oprf_oracle::blind(probe.as_bytes());
    let mut s = Session::open(ep, user).await.unwrap();
    let r = s
        .call(&VaultRequest::LoginStart {
            credential_request: oprf_oracle::credential_request(&blinded),
        })
        .await
        .unwrap();
    s.close().await;
    let VaultResponse::LoginStarted {
        credential_response,
        ..
    } = r
    else {
        panic!("{r:?}")
    };
    let own = blinded.finalize(&credential_response).unwrap();
    assert!(oprf_oracle::unmasks(&own, &credential_response, key));
    evaluations
        .iter()
        .filter(|(_, o)| oprf_oracle::unmasks(o, &credential_response, key))
        .map(|(w, _)| w.clone())
        .collect()
}

/// Waits until the frontend serves the fleet `config` pins (it learns a new fleet's bundle
/// within a moment of the ceremony).
fn wait_for_fleet(config: &Path) {
    for _ in 0..100 {
        let o = crate::rotation::run(config, &["backup", "status", "--user", "nobody"], "");
        if o.status.success() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn attempts(config: &Path, user: &str) -> serde_json::Value {
    record(config, user)["Active"]["attempts"].clone()
}

/// Item 1, through the frontend: a token holder evaluates the OPRF for a dictionary through
/// `RegisterStart` before the user registers, then spends one counted guess. No candidate
/// matches (each evaluation was under a key of its own), the status shows one guess used, and
/// the vault stops answering `RegisterStart` after the day's budget.
#[test]
fn a_dictionary_evaluated_through_the_frontend_finds_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let (pw, words) = dictionary();
    let rt = rt();
    let http = reqwest::Client::new();
    let ep = rt.block_on(endpoint(&http, &dev.frontend_url, "victim"));
    // Nine evaluations (three sessions' worth), the password among them.
    let (evaluations, key, _) = rt.block_on(evaluate(&ep, "victim", &words, 9));
    assert_eq!(evaluations.len(), 9);
    let file = t.path().join("f");
    std::fs::write(&file, b"secret history").unwrap();
    create(&dev.config, "victim", &file);
    let found = rt.block_on(test_offline(
        &ep,
        "victim",
        &pw,
        &evaluations,
        &key.unwrap(),
    ));
    assert!(
        found.is_empty(),
        "one counted guess found {found:?} offline"
    );
    assert_eq!(attempts(&dev.config, "victim"), 1);
    // The rest of the dictionary meets the day's budget (twelve starts, ten used).
    let (more, _, refused) = rt.block_on(evaluate(&ep, "victim", &words[9..], 41));
    assert!(refused, "RegisterStart is not budgeted");
    assert_eq!(more.len(), 2);
}

/// Item 1 across a fleet rotation: the dictionary is evaluated on the new fleet while the
/// user's record still lives on the old one; the user then recovers (moving the record), and
/// one counted guess on the new fleet finds nothing.
#[test]
fn a_dictionary_evaluated_on_the_next_fleet_finds_nothing_after_the_move() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"moving history").unwrap();
    create(&dev.config, "mover", &file);
    let o = fleet(&dev, &["ceremony", "--nodes", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let pinned2 = pinned_config(&dev, 2, &t.path().join("pinned-2.toml"));
    let (pw, words) = dictionary();
    let rt = rt();
    let http = reqwest::Client::new();
    let ep = rt.block_on(fleet_endpoint(&dev, &http, "mover", 2));
    let (evaluations, key, _) = rt.block_on(evaluate(&ep, "mover", &words, 9));
    let o = restore(&dev.config, "mover", PW, &t.path().join("out"), &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(attempts(&pinned2, "mover"), 0);
    let found = rt.block_on(test_offline(&ep, "mover", &pw, &evaluations, &key.unwrap()));
    assert!(
        found.is_empty(),
        "one counted guess found {found:?} offline"
    );
    assert_eq!(attempts(&pinned2, "mover"), 1);
}

/// A raw endpoint for `user` on fleet `index` of the deployment.
async fn fleet_endpoint(dev: &DevUp, http: &reqwest::Client, user: &str, index: usize) -> Endpoint {
    let fleets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.dir.join("fleets.json")).unwrap()).unwrap();
    let f = fleets
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["index"] == index)
        .unwrap();
    let ep = Endpoint {
        http: std::sync::Arc::new(bkv_client::ReqwestHttp(http.clone())),
        frontend_url: dev.frontend_url.clone(),
        token: secrecy::SecretString::from(dev_token(http, &dev.frontend_url, user).await),
        fleet: FleetTarget {
            fleet_id: f["fleet_id"].as_str().unwrap().to_owned(),
            key: bkv_wire::key_from_hex(f["noise_key"].as_str().unwrap()).unwrap(),
        },
        previous: Vec::new(),
    };
    // The frontend learns a new fleet's nodes within a moment of the ceremony.
    for _ in 0..100 {
        match Session::open(&ep, user).await {
            Ok(s) => {
                s.close().await;
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    ep
}

/// Item 5: a token holder registers first on the new fleet (squatting). The user still
/// recovers with the right password, from the old fleet's record, which then replaces the
/// squatted one on the new fleet; the squatter's password opens nothing there.
#[test]
fn registering_first_on_the_next_fleet_does_not_lock_the_user_out() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"squatted history").unwrap();
    create(&dev.config, "owner", &file);
    let o = fleet(&dev, &["ceremony", "--nodes", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let pinned2 = pinned_config(&dev, 2, &t.path().join("pinned-2.toml"));
    // The squatter registers on fleet 2 under the owner's id (with a backup of its own, in
    // storage of its own: deleting the owner's ciphertext is another matter).
    let squatter = pinned_config(&dev, 2, &t.path().join("squatter.toml"));
    let mut cfg: toml::Value = std::fs::read_to_string(&squatter).unwrap().parse().unwrap();
    let own = t.path().join("squatter-storage");
    std::fs::create_dir_all(&own).unwrap();
    cfg.as_table_mut().unwrap().insert(
        "storage_dir".into(),
        own.to_string_lossy().into_owned().into(),
    );
    std::fs::write(&squatter, toml::to_string(&cfg).unwrap()).unwrap();
    wait_for_fleet(&squatter);
    let junk = t.path().join("junk");
    std::fs::write(&junk, b"the squatter's").unwrap();
    bkv_testkit::system::create_backup(&squatter, "owner", "squatter password\n", &junk);
    assert_eq!(attempts(&pinned2, "owner"), 0);
    // The owner recovers with the right password.
    let out = t.path().join("out");
    let o = restore(&dev.config, "owner", PW, &out, &[]);
    assert!(o.status.success(), "the owner was locked out: {}", text(&o));
    // The owner's record now lives on fleet 2; the squatter's password is a wrong guess there.
    let o = restore(
        &pinned2,
        "owner",
        "squatter password\n",
        &t.path().join("x"),
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = restore(&pinned2, "owner", PW, &t.path().join("again"), &[]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Counts the wrong guesses `config` gets accepted for `user` until the vault stops counting
/// (a destroyed or absent record): exit 3 is a counted wrong guess, a destroying guess counts.
fn wrong_guesses_granted(config: &Path, user: &str, dir: &Path) -> u32 {
    let mut granted = 0;
    for _ in 0..25 {
        let o = restore(config, user, WRONG, &dir.join("x"), &[]);
        match o.status.code() {
            Some(3) => granted += 1,
            _ => {
                if String::from_utf8_lossy(&o.stderr).contains("destroyed") {
                    granted += 1;
                }
                return granted;
            }
        }
    }
    granted
}

/// Item 5: however a move is interrupted (the operator drops any step, such as the old fleet's
/// part once the new one is live), the guesses the old fleet can still grant plus those the new
/// one can grant stay within the limit.
#[test]
fn an_interrupted_move_never_doubles_the_guess_budget() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("f");
    std::fs::write(&file, b"budget").unwrap();
    let steps = [
        "migrate-logged-in-old",
        "migrate-registered-new",
        "migrate-moved-out",
        "migrate-moved-in",
    ];
    for step in steps {
        create(&dev.config, step, &file);
    }
    let o = fleet(&dev, &["ceremony", "--nodes", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let pinned1 = pinned_config(&dev, 1, &t.path().join("pinned-1.toml"));
    let pinned2 = pinned_config(&dev, 2, &t.path().join("pinned-2.toml"));
    for step in steps {
        let o = restore(
            &dev.config,
            step,
            PW,
            &t.path().join("c"),
            &[("BKV_CRASH_AT", step)],
        );
        assert!(
            !o.status.success(),
            "{step}: did not stop there: {}",
            text(&o)
        );
        let old = wrong_guesses_granted(&pinned1, step, t.path());
        let new = wrong_guesses_granted(&pinned2, step, t.path());
        assert!(
            old + new <= 10,
            "{step}: the old fleet granted {old} and the new one {new} wrong guesses (limit 10)"
        );
    }
}
