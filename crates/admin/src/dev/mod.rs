//! `bkv-admin dev up` / `bkv-admin dev restart-node`: a local deployment for development
//! and tests. Nodes and the auditor run as separate processes; the frontend
//! runs in this process. The fleet is formed the way a real one is: the
//! first node generates the fleet keys, every further node is admitted by a
//! signed operator command whose membership record is in the auditor's log
//! (`bkv_operator::fleet`).

mod commands;
mod deployment;
mod frontend;
mod layout;
mod process;
mod web;

pub use commands::{add_node, ceremony, remove_node, retire};
pub(crate) use deployment::*;
pub(crate) use frontend::*;
pub(crate) use layout::*;
pub(crate) use process::*;

use anyhow::{bail, Context};
use bkv_cli::config::{AuthConfig, ClientConfig, FleetConfig, OtaConfig};
use bkv_operator::fleet::Operator;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use bkv_cli::find_bin;

pub struct UpArgs {
    pub dir: PathBuf,
    /// Fleet size (1 = a one-node fleet).
    pub nodes: usize,
    pub port_base: Option<u16>,
    pub hsm_bin: Option<PathBuf>,
    /// Write a client config in `pinned` mode instead of `ota`.
    pub pinned: bool,
    pub platform: DevPlatform,
    /// Object storage for the client config (`storage_url`); DIR/storage when unset.
    pub storage_url: Option<String>,
}

/// The namespace `dev up` publishes bundles in.
pub const DEV_NAMESPACE: &str = "dev";

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let hsm_bin = find_bin("bkv-hsm", "BKV_HSM_BIN", args.hsm_bin)?;
    let auditor_bin = find_bin("bkv-auditor", "BKV_AUDITOR_BIN", None)?;
    let frontend_bin = find_bin("bkv-frontend", "BKV_FRONTEND_BIN", None)?;
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be between 1 and 9");
    }

    // The independent auditor (its own process and data directory) and the
    // operator key: the fleet pins both when it is formed.
    let operator_dir = dir.join("operator");
    std::fs::create_dir_all(&operator_dir)?;
    let operator = load_or_create_key(&operator_dir.join("operator-signing.key"))?;
    let adir = dir.join("auditor");
    if let Some(pid) = read_pid(&adir) {
        if pid_alive(pid) {
            stop_pid(pid);
        }
    }
    let alisten = std::fs::read_to_string(adir.join("listen"))
        .ok()
        .filter(|_| args.port_base.is_none())
        .unwrap_or_else(|| format!("127.0.0.1:{}", args.port_base.map(|p| p + 2).unwrap_or(0)));
    let auditor = start_auditor(
        &auditor_bin,
        &adir,
        alisten.trim(),
        DEV_NAMESPACE,
        &operator.verifying_key(),
    )?;
    std::fs::write(
        adir.join("listen"),
        auditor.url.trim_start_matches("http://"),
    )?;
    let (started, evidence) = match start_fleet(
        &dir,
        &hsm_bin,
        args.nodes,
        args.port_base,
        args.platform,
        &auditor,
        &operator,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            stop_deployment(&dir);
            return Err(e);
        }
    };
    let node = &started[0];
    let evidence_path = dir.join("evidence").join(format!("{}.json", node.fleet_id));
    if let Some(evidence) = evidence {
        save_fleets(
            &dir,
            &[FleetEntry {
                index: 1,
                fleet_id: node.fleet_id.clone(),
                noise_key: node.noise_public_key.clone(),
                evidence_digest: hex::encode(bkv_transparency::evidence::digest(&evidence)),
                retired: false,
            }],
        )?;
    }
    let fleets = load_fleets(&dir)?;
    let op = Operator {
        key: operator.clone(),
        auditor_url: auditor.url.clone(),
        namespace: DEV_NAMESPACE.into(),
        http: reqwest::Client::new(),
        ledger: Some(operator_ledger(&dir)),
    };
    if let Err(e) = publish_fleets(&op, &fleets).await {
        stop_deployment(&dir);
        return Err(e.context("publish the fleet's validation bundle"));
    }
    // The page this deployment serves is a logged build (`bkv audit web`).
    match web::read_build(&web::web_dir()) {
        Ok(Some(manifest)) => {
            if let Err(e) = op.auditor().log_web(DEV_NAMESPACE, &manifest).await {
                stop_deployment(&dir);
                return Err(anyhow::Error::from(e).context("log the web build"));
            }
        }
        Ok(None) => eprintln!(
            "bkv-admin dev: no web build in {} (scripts/build-web.sh): the page is not served",
            web::web_dir().display()
        ),
        Err(e) => {
            stop_deployment(&dir);
            return Err(e.context("the web build"));
        }
    }

    let frontend_dir = dir.join("frontend");
    std::fs::create_dir_all(&frontend_dir)?;
    load_or_create_key(&frontend_dir.join(DEV_TOKEN_KEY_FILE))?;
    write_routes(&dir)?;
    let frontend_config = frontend_dir.join("frontend.toml");
    // The web origin's port is chosen first: the frontend's passkey RP must accept the page.
    let web_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the web origin")?;
    let web_origin = format!("http://localhost:{}", web_listener.local_addr()?.port());
    write_frontend_config(
        &frontend_config,
        &format!("127.0.0.1:{}", args.port_base.unwrap_or(0)),
        &auditor.url,
        &web_origin,
    )?;
    let frontend = match start_frontend(&frontend_bin, &frontend_dir, &frontend_config) {
        Ok(f) => f,
        Err(e) => {
            stop_deployment(&dir);
            return Err(e);
        }
    };
    let storage_dir = dir.join("storage");
    std::fs::create_dir_all(&storage_dir)?;
    let web_storage = storage_dir.clone();
    let frontend_url = frontend.url.clone();
    let client = ClientConfig {
        version: 1,
        frontend_url: frontend_url.clone(),
        storage_dir: Some(storage_dir),
        storage_url: args.storage_url.clone(),
        ca_file: None,
        guess_limit: bkv_wire::vault::DEFAULT_GUESS_LIMIT,
        passkeys: Default::default(),
        fleet: if args.pinned {
            FleetConfig {
                mode: "pinned".into(),
                fleet_id: Some(node.fleet_id.clone()),
                noise_public_key: Some(node.noise_public_key.clone()),
                ota: None,
            }
        } else {
            FleetConfig {
                mode: "ota".into(),
                fleet_id: None,
                noise_public_key: None,
                ota: Some(OtaConfig {
                    namespace: DEV_NAMESPACE.into(),
                    origin: format!("{}/{DEV_NAMESPACE}", auditor.name),
                    auditor_name: auditor.name.clone(),
                    auditor_key: auditor.key.clone(),
                    operator_key: hex::encode(operator.verifying_key().as_bytes()),
                    state_file: PathBuf::from("client-state/log-state.json"),
                    log_trusted_since: None,
                    new_log_trusted: Vec::new(),
                }),
            }
        },
        auth: AuthConfig {
            dev_token_url: Some(format!("{frontend_url}/v1/dev/token")),
        },
    };
    let config_path = dir.join("client.toml");
    client.save(&config_path)?;
    // What the page connects with: the same trust anchors as the CLI, through this origin.
    let page_config = serde_json::json!({
        "frontend": format!("{web_origin}/frontend"),
        "storage": format!("{web_origin}/storage"),
        "dev_token_url": format!("{web_origin}/frontend/v1/dev/token"),
        "guess_limit": client.guess_limit,
        "passkey_origin": web_origin,
        "trust": match &client.fleet.ota {
            Some(o) => serde_json::json!({
                "mode": "ota",
                "namespace": o.namespace,
                "origin": o.origin,
                "auditor_name": o.auditor_name,
                "auditor_key": o.auditor_key,
                "operator_key": o.operator_key,
            }),
            None => serde_json::json!({
                "mode": "pinned",
                "fleet_id": client.fleet.fleet_id,
                "noise_public_key": client.fleet.noise_public_key,
            }),
        },
    });
    web::serve(web_listener, web_storage, frontend_url.clone(), page_config)?;

    println!(
        "bkv-admin dev: ready frontend={frontend_url} frontend_pid={} nodes={} node0={} pid0={} admin0={} fleet={} auditor={} config={} evidence={} web={web_origin}/",
        frontend.pid,
        started.len(),
        node.listen,
        node.pid,
        node.admin,
        node.fleet_id,
        auditor.url,
        config_path.display(),
        evidence_path.display()
    );
    eprintln!("bkv-admin dev: serving; stop with Ctrl-C (SIGINT) or SIGTERM");

    let routes_dir = dir.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reap_children();
            // Fleets formed and nodes added by `bkv-admin fleet ceremony|add-node`: the frontend
            // re-reads its routes file.
            if let Err(e) = write_routes(&routes_dir) {
                eprintln!("bkv-admin dev: routes file: {e:#}");
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("bkv-admin dev: stopping");
    stop_deployment(&dir);
    eprintln!("bkv-admin dev: stopped");
    Ok(())
}

/// Stops whatever node and auditor pids of the deployment are current
/// (nodes may have been restarted by `restart-node`).
pub(crate) fn stop_deployment(dir: &Path) {
    let mut dirs: Vec<PathBuf> = vec![dir.join("frontend")];
    dirs.extend((0..9).map(|i| node_dir(dir, i)));
    dirs.push(dir.join("auditor"));
    for d in &dirs {
        if let Some(pid) = read_pid(d) {
            if pid_alive(pid) {
                stop_pid(pid);
            }
        }
    }
}

/// Starts node `i` of a `dev up` directory again (after it died or was killed).
pub fn restart_node(dir: &Path, i: usize) -> anyhow::Result<()> {
    let ndir = node_dir(dir, i);
    let rec: NodeRecord = serde_json::from_slice(
        &std::fs::read(ndir.join("node.json"))
            .with_context(|| format!("node {i} of {} was never started", dir.display()))?,
    )?;
    if let Some(pid) = read_pid(&ndir) {
        if pid_alive(pid) {
            eprintln!("bkv-admin dev: stopping node {i} (pid {pid})");
            stop_pid(pid);
        }
    }
    wait_unlocked(&rec.data_dir)?;
    let node = start_node(&rec, &ndir)?;
    println!(
        "bkv-admin dev: node {i} restarted pid={} listen={}",
        node.pid, node.listen
    );
    Ok(())
}
