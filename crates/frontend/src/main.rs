//! `bkv-frontend --config FILE`: the untrusted relay as a service. Reads its TOML config (with
//! `BKV_FRONTEND__…` overrides), listens, prints one line `bkv-frontend: ready listen=ADDR url=http(s)://ADDR`
//! on stdout once it accepts connections, re-reads its routes file while serving, and on SIGINT or
//! SIGTERM stops accepting, finishes the requests in flight and exits.
#![forbid(unsafe_code)]

use anyhow::Context;
use bkv_frontend::config::{read_routes, FrontendFile};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const USAGE: &str = "usage: bkv-frontend --config FILE [--check]

  --config FILE  the frontend's TOML config (docs/operations.md); every field can be
                 overridden by BKV_FRONTEND__SECTION__FIELD
  --check        validate the config (and read its key files), then exit";

fn main() {
    let mut config = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().map(PathBuf::from),
            "--check" => check = true,
            "--version" | "-V" => {
                println!("bkv-frontend {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("bkv-frontend: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let Some(config) = config else {
        eprintln!("bkv-frontend: --config FILE is required\n\n{USAGE}");
        std::process::exit(2);
    };
    if let Err(e) = run(&config, check) {
        eprintln!("bkv-frontend: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(path: &Path, check: bool) -> anyhow::Result<()> {
    let file = FrontendFile::load(path)?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if check {
        file.check(&base)?;
        println!("{}: ok", path.display());
        return Ok(());
    }
    let mut loaded = file.open(&base)?;
    bkv_service::init_logging(&loaded.log);
    if loaded.metrics_enabled {
        let handle = bkv_service::http::install_metrics()
            .map_err(|e| anyhow::anyhow!("install the metrics recorder: {e}"))?;
        loaded.config.metrics = Some(handle);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(async move {
        if loaded.config.dev_token_key.is_some() {
            tracing::warn!(
                "dev mode: POST /v1/dev/token mints a token for any user; never run this in production"
            );
        }
        let listener = tokio::net::TcpListener::bind(loaded.addr)
            .await
            .with_context(|| format!("listen on {}", loaded.addr))?;
        let addr = listener.local_addr()?;
        if let Some(f) = loaded.routes_file.clone() {
            let routes = loaded.config.routes.clone();
            tokio::spawn(watch_routes(f, routes));
        }
        if let Some(f) = loaded.jwks_file.clone() {
            let tokens = loaded.config.tokens.clone();
            tokio::spawn(watch_file(f, move |path| {
                let keys = bkv_frontend::config::read_jwks(path)?;
                tokens.replace_keys(keys);
                tracing::info!(path = %path.display(), "token keys reloaded");
                Ok(())
            }));
        }
        let scheme = if loaded.tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "listening");
        let mut out = std::io::stdout();
        writeln!(out, "bkv-frontend: ready listen={addr} url={scheme}://{addr}")?;
        out.flush()?;
        bkv_frontend::serve_tls(
            listener,
            loaded.config,
            loaded.tls,
            bkv_service::shutdown_signal(),
        )
        .await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Re-reads the routes file when it changes; a bad file is logged and the routes kept.
async fn watch_routes(path: PathBuf, routes: bkv_frontend::Routes) {
    watch_file(path, move |p| {
        if let Some(more) = read_routes(p)? {
            routes.learn(&more);
        }
        Ok(())
    })
    .await
}

/// Calls `load` whenever the file's modification time changes (checked twice a second); an
/// error is logged and what was loaded before stays in use.
async fn watch_file(path: PathBuf, load: impl Fn(&Path) -> Result<(), bkv_service::ConfigError>) {
    let mut seen = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_none() || modified == seen {
            continue;
        }
        seen = modified;
        if let Err(e) = load(&path) {
            tracing::warn!(path = %path.display(), error = %e, "file ignored; keeping what was loaded before");
        }
    }
}
