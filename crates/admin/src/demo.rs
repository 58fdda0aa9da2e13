//! `bkv demo`: an embedded deployment (vault node, frontend, storage) in a temp
//! dir, talking over real loopback HTTP and TCP, and a real backup and restore.

use anyhow::{bail, Context};
use bkv_cli::ops;
use bkv_client::ArchiveOptions;
use bkv_client::Unlock;
use bkv_client::{ClientError, Endpoint};
use ed25519_dalek::SigningKey;
use rand::{Rng, RngCore, SeedableRng};
use secrecy::SecretString;
use std::path::Path;
use std::sync::Arc;

const NAMESPACE: &str = "demo";
const USER: &str = "demo-user@example.com";
const PASSWORD: &str = "correct horse battery staple";

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

/// Writes a sample "message history": chats with messages and a few media files.
fn sample_history(dir: &Path) -> anyhow::Result<(usize, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let words = [
        "hello", "see", "you", "tomorrow", "at", "the", "station", "did", "you", "get", "my",
        "photo", "lunch", "meeting", "moved", "to", "three", "love", "it", "thanks", "call", "me",
        "later", "on", "my", "way",
    ];
    let mut files = 0;
    let mut bytes = 0u64;
    for chat in 0..40 {
        let cdir = dir.join(format!("chats/chat-{chat:03}"));
        std::fs::create_dir_all(cdir.join("media"))?;
        let mut log = String::new();
        for m in 0..300 {
            let n = rng.gen_range(3..15);
            let text: Vec<&str> = (0..n)
                .map(|_| words[rng.gen_range(0..words.len())])
                .collect();
            log.push_str(&format!(
                "{{\"id\":{m},\"from\":\"contact-{}\",\"ts\":{},\"text\":\"{}\"}}\n",
                rng.gen_range(0..5),
                1_700_000_000 + m * 37,
                text.join(" ")
            ));
        }
        bytes += log.len() as u64;
        std::fs::write(cdir.join("messages.jsonl"), log)?;
        files += 1;
        for i in 0..3 {
            let mut media = vec![0u8; rng.gen_range(10_000..60_000)];
            rng.fill_bytes(&mut media);
            bytes += media.len() as u64;
            std::fs::write(cdir.join(format!("media/img-{i}.jpg")), media)?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

fn trees_equal(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let ma = std::fs::symlink_metadata(a)?;
    let mb = std::fs::symlink_metadata(b)?;
    if ma.is_dir() != mb.is_dir() {
        return Ok(false);
    }
    if ma.is_file() {
        return Ok(std::fs::read(a)? == std::fs::read(b)?);
    }
    let mut ea: Vec<_> = std::fs::read_dir(a)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let mut eb: Vec<_> = std::fs::read_dir(b)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ea.sort();
    eb.sort();
    if ea != eb {
        return Ok(false);
    }
    for n in ea {
        if !trees_equal(&a.join(&n), &b.join(&n))? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn quiet() -> ops::Report {
    Box::new(|_| {})
}

pub async fn run() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("bkv-demo-").tempdir()?;
    let root = tmp.path();
    println!("bkv demo: an end-to-end encrypted backup whose key is guarded by a vault that allows only a few password guesses.");
    println!("working directory: {}", root.display());

    step(1, "Starting a local deployment: an HSM vault node, an independent auditor, the frontend relay, and storage.");
    let token_key = {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SigningKey::from_bytes(&k)
    };
    // The independent auditor, and the operator publishing the fleet's key to it.
    let operator = {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SigningKey::from_bytes(&k)
    };
    let auditor_key = {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SigningKey::from_bytes(&k)
    };
    std::fs::create_dir_all(root.join("auditor"))?;
    let auditor = Arc::new(bkv_auditor::Auditor::open(
        &root.join("auditor/log.redb"),
        auditor_key.clone(),
        "demo-auditor",
        &[(NAMESPACE.to_owned(), operator.verifying_key())],
    )?);
    let alistener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let auditor_url = format!("http://{}", alistener.local_addr()?);
    let (astop_tx, astop_rx) = tokio::sync::oneshot::channel::<()>();
    let auditor_task = tokio::spawn(axum_serve(
        alistener,
        bkv_auditor::router(auditor),
        async move {
            let _ = astop_rx.await;
        },
    ));
    // The node forms a one-node fleet that pins the operator's and the
    // auditor's keys. It runs its own runtime (consensus), so it is opened
    // and later dropped outside this async context.
    let node_dir = root.join("node");
    let trust = bkv_hsm_core::FleetTrust {
        namespace: NAMESPACE.into(),
        auditor_name: "demo-auditor".into(),
        auditor_key: auditor_key.verifying_key().to_bytes(),
        operator_key: operator.verifying_key().to_bytes(),
        max_guess_limit: bkv_wire::vault::DEFAULT_GUESS_LIMIT,
        predecessors: Vec::new(),
    };
    let node = tokio::task::spawn_blocking(move || {
        bkv_hsm_node::Node::open(&bkv_hsm_node::NodeConfig {
            platform: bkv_hsm_platform::PlatformConfig::Software {
                dir: node_dir.join("platform"),
            },
            data_dir: node_dir,
            node_id: 0,
            peer_listen: "127.0.0.1:0".into(),
            peer_advertise: None,
            start: bkv_hsm_node::StartMode::Found(trust),
            // The demo is one process: its node's core runs in it too.
            core: bkv_hsm_node::CoreMode::InProcess,
        })
    })
    .await?
    .context("start vault node")?;
    let node = Arc::new(node);
    let server = bkv_hsm_node::serve(
        node.clone(),
        "127.0.0.1:0",
        bkv_hsm_node::DEFAULT_IDLE_TIMEOUT,
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let fleet_key = node.info().noise_public_key;
    let bundle = bkv_transparency::bundle::Bundle {
        version: bkv_transparency::bundle::BUNDLE_VERSION,
        namespace: NAMESPACE.into(),
        epoch: 1,
        fleet_id: node.info().fleet_id.clone(),
        keys: vec![bkv_transparency::bundle::FleetKey {
            role: bkv_transparency::bundle::KeyRole::NoiseStatic,
            key: fleet_key,
        }],
        not_before: now - 60,
        not_after: now + 86_400,
        evidence_digest: [0; 32],
        previous: Vec::new(),
    };
    bkv_operator::auditor::AuditorClient {
        http: &reqwest::Client::new(),
        url: &auditor_url,
        operator: &operator,
    }
    .publish(&bundle)
    .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let frontend_url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let frontend = tokio::spawn(bkv_frontend::serve(
        listener,
        bkv_frontend::FrontendConfig {
            routes: bkv_frontend::Routes::new(&[bkv_frontend::FleetRoute {
                fleet_id: node.info().fleet_id.clone(),
                nodes: vec![server.addr],
            }]),
            tokens: std::sync::Arc::new(bkv_frontend::token::Verifier::new(
                bkv_frontend::token::KeySet::ed25519(&token_key.verifying_key()),
                bkv_frontend::token::Policy::new(bkv_frontend::DEFAULT_AUDIENCE),
            )),
            dev_token_key: None,
            bundle_source: Some(bkv_frontend::BundleSource {
                auditor_url: auditor_url.clone(),
                namespace: NAMESPACE.into(),
                auditor_ca_pem: None,
            }),
            passkeys: None,
            limits: Default::default(),
            metrics: None,
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    println!(
        "    vault node on {} (fleet {}), auditor on {auditor_url}, frontend on {frontend_url}",
        server.addr,
        node.info().fleet_id
    );
    println!("    the operator published the fleet's public key in a bundle; the auditor logged and signed it, the operator counter-signed");

    // Over the air: the client pins only the auditor's and operator's keys and
    // takes the fleet key from the bundle the frontend serves, after checking
    // both signatures, the auditor's checkpoint and the inclusion proof.
    let anchors = bkv_transparency::bundle::TrustAnchors {
        namespace: NAMESPACE.into(),
        origin: format!("demo-auditor/{NAMESPACE}"),
        auditor_name: "demo-auditor".into(),
        auditor_key: auditor_key.verifying_key(),
        operator_key: operator.verifying_key(),
    };
    let http: std::sync::Arc<dyn bkv_client::Http> =
        std::sync::Arc::new(bkv_client::ReqwestHttp(reqwest::Client::new()));
    let fleet = bkv_client::fleets(
        &*http,
        &frontend_url,
        &anchors,
        &root.join("client-state.json"),
        false,
    )
    .await?
    .into_iter()
    .next()
    .ok_or_else(|| anyhow::anyhow!("the verified bundle names no fleet"))?;
    let ota_key = fleet.key;
    if ota_key != fleet_key {
        bail!("the verified bundle names another fleet key");
    }
    println!("    the client verified the bundle (auditor and operator signatures, signed checkpoint, inclusion proof)");
    println!(
        "    and will only talk to the vault holding fleet key {}",
        bkv_wire::key_to_hex(&ota_key)
    );

    let token = bkv_frontend::token::mint(
        &token_key,
        &bkv_frontend::token::Claims {
            sub: USER.into(),
            aud: bkv_frontend::DEFAULT_AUDIENCE.into(),
            exp: now + 3600,
            iat: Some(now),
            nbf: None,
        },
    );
    let ctx = ops::Ctx {
        endpoint: Endpoint {
            http,
            frontend_url: frontend_url.clone(),
            token: SecretString::from(token),
            fleet,
            previous: Vec::new(),
        },
        storage: root.join("storage").display().to_string(),
        guess_limit: bkv_wire::vault::DEFAULT_GUESS_LIMIT,
        passkey_origin: bkv_cli::config::DEV_PASSKEY_ORIGIN.into(),
    };

    step(2, "Generating a sample message history.");
    let history = root.join("history");
    let (files, bytes) = sample_history(&history)?;
    println!("    {files} files, {bytes} bytes (chats and media)");

    step(3, "Backing it up with a password.");
    let password = SecretString::from(PASSWORD.to_owned());
    let created = ops::create(
        &ctx,
        USER,
        Unlock::Password(&password),
        history.clone(),
        ArchiveOptions::default(),
        quiet(),
    )
    .await?;
    println!("    a random 256-bit backup key was made on this device and registered with the vault via OPAQUE:");
    println!("    the vault holds it wrapped under a key only the right password unlocks; it never sees the password or the key.");
    println!("    the history was compressed, encrypted in authenticated chunks, and stored as {} ({} bytes)", created.latest.object, created.latest.size);

    let blob_dir = root.join("storage");
    let mut leaked = false;
    for e in walk(&blob_dir)? {
        let data = std::fs::read(&e)?;
        if data.windows(9).any(|w| w == b"\"text\":\"h")
            || data
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes())
        {
            leaked = true;
        }
    }
    if leaked {
        bail!("storage contains plaintext");
    }
    println!("    storage holds only ciphertext (checked: no message text, no password in any stored byte)");

    step(4, "Restoring on a \"new device\" with the password.");
    let restored = root.join("restored");
    ops::restore(
        &ctx,
        USER,
        Unlock::Password(&password),
        restored.clone(),
        quiet(),
    )
    .await?;
    if !trees_equal(&history, &restored)? {
        bail!("restored tree differs from the original");
    }
    println!("    restored {files} files; every byte matches the original");

    step(5, "Someone guesses wrong passwords.");
    for guess in ["123456", "password1", "letmein"] {
        let r = ops::restore(
            &ctx,
            USER,
            Unlock::Password(&SecretString::from(guess.to_owned())),
            root.join("nope"),
            quiet(),
        )
        .await;
        match r {
            Err(ClientError::WrongPassword { guesses_remaining }) => {
                println!("    guess {guess:?}: wrong; the vault counted it first, {guesses_remaining} guesses remain")
            }
            other => bail!(
                "expected a wrong-password error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let s = ops::status(&ctx, USER).await?;
    println!("    vault record: {}", ops::describe_record(&s.record));
    println!(
        "    after {} wrong guesses in a row the vault destroys the key for good.",
        ctx.guess_limit
    );

    step(
        6,
        "The owner restores with the right password: the counter resets.",
    );
    let restored2 = root.join("restored-again");
    ops::restore(
        &ctx,
        USER,
        Unlock::Password(&password),
        restored2.clone(),
        quiet(),
    )
    .await?;
    if !trees_equal(&history, &restored2)? {
        bail!("second restore differs");
    }
    let s = ops::status(&ctx, USER).await?;
    println!(
        "    restored again; vault record: {}",
        ops::describe_record(&s.record)
    );

    let _ = stop_tx.send(());
    let _ = frontend.await;
    let _ = astop_tx.send(());
    let _ = auditor_task.await;
    server.stop();
    tokio::task::spawn_blocking(move || drop(node)).await?;
    println!("\nbkv demo: success. Backup, restore and the guess limit all worked; the temp directory is removed now.");
    Ok(())
}

async fn axum_serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn walk(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}
