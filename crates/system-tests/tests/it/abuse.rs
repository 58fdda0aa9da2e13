//! Availability under abuse and faults (issue 12): floods of throwaway
//! accounts, idle gaps longer than every timeout, destructive requests with
//! a token alone, and a restore killed half-way.

use crate::protectors::{add_passkey, ok, restore, slot_id, PW};
use bkv_client::{Endpoint, FleetTarget, Session};
use bkv_testkit::system::*;
use bkv_wire::vault::{VaultRequest, VaultResponse};
use secrecy::SecretString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP client whose connections come from `from` (a second loopback
/// address stands in for another client).
fn http_from(from: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(from))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub(crate) async fn dev_token(http: &reqwest::Client, url: &str, user: &str) -> String {
    let t: bkv_api::frontend::DevTokenResponse = http
        .post(format!("{url}/v1/dev/token"))
        .json(&bkv_api::frontend::DevTokenRequest {
            user: user.to_owned(),
        })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t.token
}

/// An endpoint for `user` on the deployment's default fleet (key from
/// `GET /v1/fleet`, as a pinned client would have it).
pub(crate) async fn endpoint(http: &reqwest::Client, url: &str, user: &str) -> Endpoint {
    let f: bkv_api::frontend::FleetInfo = http
        .get(format!("{url}/v1/fleet"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Endpoint {
        http: std::sync::Arc::new(bkv_client::ReqwestHttp(http.clone())),
        frontend_url: url.to_owned(),
        token: SecretString::from(dev_token(http, url, user).await),
        fleet: FleetTarget {
            key: bkv_wire::key_from_hex(&f.noise_public_key).unwrap(),
            fleet_id: f.fleet_id,
        },
        previous: Vec::new(),
    }
}

fn attempts(dev: &DevUp, user: &str) -> u64 {
    let o = dev.bkv(&["backup", "status", "--user", user, "--json"], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["record"]["Active"]["attempts"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}", text(&o)))
}

/// Seconds one run of `f` takes (the slowest of `n`).
fn slowest(n: usize, mut f: impl FnMut(usize)) -> f64 {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

#[derive(Default)]
struct FloodCounts {
    sessions: AtomicU64,
    ceremonies: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// 500 throwaway accounts from 127.0.0.2 open sessions they never use and
/// start passkey ceremonies they never finish, as fast as they can, while
/// another user restores with the password and with a passkey.
#[test]
fn a_flood_of_throwaway_accounts_does_not_lock_out_other_users() {
    let t = tempfile::tempdir().unwrap();
    // Tables smaller than what the flood opens: with global caps alone the
    // flood would fill them and lock everyone else out.
    const TABLE: u64 = 1_000;
    let dev = DevUp::start_nodes_env(
        &t.path().join("dev"),
        1,
        &[
            ("BKV_HSM_MAX_SESSIONS", "1000"),
            ("BKV_FRONTEND_MAX_CEREMONIES", "1000"),
        ],
    );
    let src = t.path().join("history");
    write_noise(&src, 200_000, 12);
    create_backup(&dev.config, "victim", PW, &src);
    let store = t.path().join("victim-passkeys.json");
    ok(add_passkey(&dev, "victim", &store));
    let restores = |tag: &str| {
        let n = 3;
        let pw = slowest(n, |i| {
            let out = t.path().join(format!("{tag}-pw-{i}"));
            ok(restore(
                &dev.config,
                "victim",
                &["--password-stdin"],
                PW,
                &out,
            ));
        });
        let pk = slowest(n, |i| {
            let out = t.path().join(format!("{tag}-pk-{i}"));
            let how = ["--passkey-store", store.to_str().unwrap()];
            ok(restore(&dev.config, "victim", &how, "", &out));
        });
        (pw, pk)
    };
    let (pw_normal, pk_normal) = restores("normal");

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let flood = {
        let (stop, counts, url) = (stop.clone(), counts.clone(), dev.frontend_url.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let http = http_from(Ipv4Addr::new(127, 0, 0, 2));
                let mut accounts = Vec::new();
                for i in 0..500 {
                    let user = format!("throwaway-{i}");
                    accounts.push((endpoint(&http, &url, &user).await, user));
                }
                let accounts = Arc::new(accounts);
                let mut tasks = Vec::new();
                for w in 0..32 {
                    let (stop, counts, accounts) = (stop.clone(), counts.clone(), accounts.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut i = w;
                        while !stop.load(Ordering::Relaxed) {
                            let (e, user) = &accounts[i % accounts.len()];
                            i += 32;
                            match Session::open(e, user).await {
                                // Opened and abandoned, never used.
                                Ok(_) => {
                                    counts.sessions.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(err) if err.to_string().contains("429") => {
                                    counts.limited.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(_) => {
                                    counts.other.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            let req = bkv_client::HttpRequest::new(
                                bkv_client::Method::Post,
                                format!("{}/v1/passkeys/registrations", e.frontend_url),
                                1 << 16,
                            )
                            .token(&e.token)
                            .json(&serde_json::json!({}))
                            .unwrap();
                            let r = e.http.send(req).await;
                            let c = match r.map(|r| r.status) {
                                Ok(200) => &counts.ceremonies,
                                Ok(429) => &counts.limited,
                                _ => &counts.other,
                            };
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
    };
    // Let the flood open more than the tables hold (bounded: with global
    // caps alone the tables fill and the flood stalls short of that).
    let started = Instant::now();
    while (counts.sessions.load(Ordering::Relaxed) < 2 * TABLE
        || counts.ceremonies.load(Ordering::Relaxed) < 2 * TABLE)
        && started.elapsed() < Duration::from_secs(30)
    {
        assert!(!flood.is_finished(), "the flood stopped early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (pw_flooded, pk_flooded) = restores("flooded");
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    eprintln!(
        "flood: {} sessions opened, {} ceremonies started, {} rate-limited, {} other; \
         password restore {pw_normal:.2}s -> {pw_flooded:.2}s, passkey restore {pk_normal:.2}s -> {pk_flooded:.2}s",
        counts.sessions.load(Ordering::Relaxed),
        counts.ceremonies.load(Ordering::Relaxed),
        counts.limited.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
    );
    assert!(counts.sessions.load(Ordering::Relaxed) >= 2 * TABLE);
    assert!(counts.ceremonies.load(Ordering::Relaxed) >= 2 * TABLE);
    assert!(pw_flooded <= pw_normal + 2.0, "{pw_normal} -> {pw_flooded}");
    assert!(pk_flooded <= pk_normal + 2.0, "{pk_normal} -> {pk_flooded}");
    assert_eq!(attempts(&dev, "victim"), 0);
}

/// Idle gaps longer than every timeout on the way (node links, frontend
/// keep-alive, the client's pooled connections): the first requests after
/// the gap succeed and no guess is lost.
#[test]
fn after_idle_gaps_longer_than_every_timeout_no_guess_is_lost() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start_nodes_env(
        &t.path().join("dev"),
        3,
        &[
            ("BKV_HSM_IDLE_TIMEOUT", "1"),
            ("BKV_FRONTEND_IDLE_TIMEOUT", "1"),
        ],
    );
    let src = t.path().join("f");
    write_noise(&src, 50_000, 3);
    let users = ["ada", "bo", "cy", "di"];
    for u in users {
        create_backup(&dev.config, u, PW, &src);
    }
    let concurrent_restores = |round: usize| {
        std::thread::scope(|s| {
            for u in users {
                let out = t.path().join(format!("{u}-{round}"));
                let config = &dev.config;
                s.spawn(move || ok(restore(config, u, &["--password-stdin"], PW, &out)));
            }
        });
    };
    // An in-process client keeps its pooled connections across the gaps.
    let rt = rt();
    let e = rt.block_on(endpoint(
        &http_from(Ipv4Addr::LOCALHOST),
        &dev.frontend_url,
        "ada",
    ));
    let vault = bkv_client::VaultClient::new(e, "ada");
    let pw = SecretString::from(PW.trim_end().to_owned());
    for round in 0..3 {
        concurrent_restores(round);
        rt.block_on(vault.login(&pw)).unwrap();
        // Longer than the node's and the frontend's idle timeouts (1 s),
        // the client pool's (10 s does not matter: it reuses what is left).
        std::thread::sleep(Duration::from_millis(3_500));
    }
    concurrent_restores(9);
    rt.block_on(vault.login(&pw)).unwrap();
    for u in users {
        assert_eq!(attempts(&dev, u), 0, "{u}");
    }
}

/// A token alone cannot delete a passkey, register another one, or end a
/// session; the user's protectors can.
#[test]
fn destructive_operations_need_a_protector_not_just_a_token() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let src = t.path().join("f");
    write_noise(&src, 10_000, 4);
    create_backup(&dev.config, "uma", PW, &src);
    create_backup(&dev.config, "eve", PW, &src);
    let store = t.path().join("uma-passkeys.json");
    let passkey_slot = slot_id(&ok(add_passkey(&dev, "uma", &store)), "pk-");
    let rt = rt();
    let url = dev.frontend_url.clone();
    rt.block_on(async {
        let http = http_from(Ipv4Addr::LOCALHOST);
        let uma = endpoint(&http, &url, "uma").await;
        let eve = endpoint(&http, &url, "eve").await;
        let bearer =
            |e: &Endpoint| format!("Bearer {}", secrecy::ExposeSecret::expose_secret(&e.token));
        let call =
            |method: reqwest::Method, path: &str, e: &Endpoint, hdr: Option<(&str, &str)>| {
                let mut r = http
                    .request(method, format!("{url}{path}"))
                    .header("authorization", bearer(e));
                if let Some((k, v)) = hdr {
                    r = r.header(k, v);
                }
                r.send()
            };
        let code = |r: reqwest::Response| async move {
            let status = r.status().as_u16();
            let v: Option<bkv_api::auditor::ErrorBody> = r.json().await.ok();
            (status, v.map(|v| v.error).unwrap_or_default())
        };
        let passkeys = || async {
            let listed: bkv_api::passkeys::PasskeyList =
                call(reqwest::Method::GET, "/v1/passkeys", &uma, None)
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            listed.passkeys
        };
        let cred = passkeys().await[0].credential_id.clone();
        let forbidden = (403, "protector_required".to_owned());
        // Deleting with the token only, or with a made-up grant.
        let path = format!("/v1/passkeys/{cred}");
        for hdr in [None, Some(("bkv-grant", "00".repeat(32).leak() as &str))] {
            let r = call(reqwest::Method::DELETE, &path, &uma, hdr)
                .await
                .unwrap();
            assert_eq!(code(r).await, forbidden);
            let r = call(reqwest::Method::DELETE, "/v1/passkeys", &uma, hdr)
                .await
                .unwrap();
            assert_eq!(code(r).await, forbidden);
        }
        // Registering a second passkey that would then mint grants.
        let r = call(
            reqwest::Method::POST,
            "/v1/passkeys/registrations",
            &uma,
            None,
        )
        .await
        .unwrap();
        assert_eq!(code(r).await, forbidden);
        // A vault session that has not logged in is no proof; another
        // user's session is not uma's.
        let mut s = Session::open(&uma, "uma").await.unwrap();
        let sid = s.id().to_owned();
        let grant = |e: &Endpoint| {
            call(
                reqwest::Method::POST,
                "/v1/passkeys/grants",
                e,
                Some(("bkv-session", sid.as_str())),
            )
        };
        assert_eq!(code(grant(&uma).await.unwrap()).await, forbidden);
        assert_eq!(
            code(grant(&eve).await.unwrap()).await,
            (401, "wrong_user".to_owned())
        );
        // Ending uma's session: no HTTP verb does it, eve's token cannot
        // reach it, and garbage under uma's token leaves it working.
        let r = call(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{sid}"),
            &uma,
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 405);
        let post = |e: &Endpoint, body: Vec<u8>| {
            http.post(format!("{url}/v1/sessions/{sid}"))
                .header("authorization", bearer(e))
                .body(body)
                .send()
        };
        let r = post(&eve, vec![1; 40]).await.unwrap();
        assert_eq!(code(r).await, (401, "wrong_user".to_owned()));
        let r = post(&uma, vec![1; 40]).await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert!(matches!(
            s.call(&VaultRequest::Status).await.unwrap(),
            VaultResponse::Status { .. }
        ));
        // Only the session's own key ends it.
        s.close().await;
        let r = post(&uma, vec![1; 40]).await.unwrap();
        assert_eq!(code(r).await, (404, "unknown_session".to_owned()));
        assert_eq!(passkeys().await.len(), 1);
    });
    // The passkey still restores. Its assertion is proof for registering
    // another passkey; so is a password login; a recovery key is not.
    ok(restore(
        &dev.config,
        "uma",
        &["--passkey-store", store.to_str().unwrap()],
        "",
        &t.path().join("pk-restore"),
    ));
    let add = |new: &str, how: &[&str], stdin: &str| {
        let new = t.path().join(new);
        let mut args = vec![
            "backup",
            "protectors",
            "add",
            "--user",
            "uma",
            "--passkey",
            "--new-passkey-store",
            new.to_str().unwrap(),
        ];
        args.extend_from_slice(how);
        dev.bkv(&args, stdin)
    };
    ok(add(
        "second.json",
        &["--passkey-store", store.to_str().unwrap()],
        "",
    ));
    ok(add("third.json", &["--password-stdin"], PW));
    let rk = crate::protectors::recovery_key_in(&ok(dev.bkv(
        &[
            "backup",
            "protectors",
            "add",
            "--user",
            "uma",
            "--recovery-key",
            "--password-stdin",
        ],
        PW,
    )));
    let o = add("fourth.json", &["--recovery-key-stdin"], &format!("{rk}\n"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("protector"),
        "{}",
        text(&o)
    );
    // Removing the first passkey with the password deletes it at the
    // relying party (the login's grant).
    ok(dev.bkv(
        &[
            "backup",
            "protectors",
            "remove",
            "--user",
            "uma",
            &passkey_slot,
            "--password-stdin",
        ],
        PW,
    ));
    let o = restore(
        &dev.config,
        "uma",
        &["--passkey-store", store.to_str().unwrap()],
        "",
        &t.path().join("pk-gone"),
    );
    assert!(!o.status.success(), "{}", text(&o));
    ok(restore(
        &dev.config,
        "uma",
        &[
            "--passkey-store",
            t.path().join("second.json").to_str().unwrap(),
        ],
        "",
        &t.path().join("second-restore"),
    ));
}

/// A path nobody but its owner can read or enter.
fn assert_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
}

/// A restore killed after all plaintext is staged leaves nothing group or
/// others can read; the next restore clears it and succeeds.
#[test]
fn a_killed_restore_leaves_nothing_readable_by_others() {
    let t = tempfile::tempdir().unwrap();
    let dev = DevUp::start(&t.path().join("dev"));
    let file = t.path().join("file");
    write_noise(&file, 300_000, 8);
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    for (name, mode) in [("sub/open", 0o644), ("secret", 0o600)] {
        std::fs::write(tree.join(name), name).unwrap();
        std::fs::set_permissions(
            tree.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap();
    }
    create_backup(&dev.config, "kit", PW, &file);
    create_backup(&dev.config, "tam", PW, &tree);
    let target = t.path().join("restores");
    std::fs::create_dir_all(&target).unwrap();
    for user in ["kit", "tam"] {
        let out = target.join(user);
        let o = restore_backup(
            &dev.config,
            user,
            PW,
            &out,
            &[("BKV_CRASH_AT", "restore-staged")],
        );
        assert!(!o.status.success(), "{}", text(&o));
        assert!(!out.exists());
        let left: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!(".{user}.bkv-partial-")));
        // The staged plaintext is there (the kill came after it), inside a
        // 0700 directory; a single file is 0600 itself too.
        assert_private(&left[0]);
        let staged = left[0].join("restored");
        assert!(staged.exists());
        if user == "kit" {
            assert_private(&staged);
        }
        // The next restore removes the leftovers and succeeds.
        ok(restore_backup(&dev.config, user, PW, &out, &[]));
        assert!(!left[0].exists());
        std::fs::rename(&out, t.path().join(format!("done-{user}"))).unwrap();
    }
    // Modes: a single file is 0600; a tree keeps its recorded modes.
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&t.path().join("done-kit")), 0o600);
    assert_eq!(mode(&t.path().join("done-tam/sub/open")), 0o644);
    assert_eq!(mode(&t.path().join("done-tam/secret")), 0o600);
    // State and secret files the client and the frontend wrote are private.
    assert_private(&dev.dir.join("client-state"));
    assert_private(&dev.dir.join("client-state/log-state.json"));
    let rp = dev.dir.join("frontend/passkeys.redb");
    assert_eq!(mode(&rp), 0o600);
}
