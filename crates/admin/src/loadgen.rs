//! `bkv-admin dev loadgen`: recovery load against a deployment. Registers users,
//! then runs concurrent recoveries (full OPAQUE login: a committed guess count
//! and a committed reset each) for a fixed time and reports throughput and
//! latency percentiles. Client-side Argon2 is set to its minimum so the
//! numbers measure the vault, not the load generator's CPU (the vault never
//! sees the stretching parameters).

use bkv_cli::ops::Ctx;
use bkv_client::{BackupKey, VaultClient};
use secrecy::SecretString;
use std::time::{Duration, Instant};

pub struct Args {
    pub users: usize,
    pub concurrency: usize,
    pub seconds: u64,
    /// Open loop: recoveries offered per second on a fixed schedule.
    pub rate: Option<f64>,
}

fn cheap_ksf() -> argon2::Params {
    // 8 KiB, 1 pass: valid Argon2id, negligible cost.
    argon2::Params::new(8, 1, 1, None).unwrap_or_default()
}

#[derive(serde::Serialize)]
pub struct Report {
    pub users: usize,
    pub concurrency: usize,
    /// The offered rate (open loop), if one was set.
    pub offered_per_second: Option<f64>,
    pub seconds: f64,
    pub recoveries: usize,
    pub errors: usize,
    pub error_kinds: std::collections::BTreeMap<String, usize>,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Registers `users` users, `concurrency` at a time on the runtime's threads (at 10⁶ users one at
/// a time would take hours), and returns clients for the last `concurrency` of them: each
/// recovery worker logs in as one user, so the rest are only there to make the vault that large
/// (the last ones, whose tokens are the newest when a long registration ends). The first failed
/// registration stops the others and is the error.
async fn register_users(
    make_ctx: impl Fn(String) -> futures_like::BoxCtx + Clone + Send + Sync + 'static,
    password: &SecretString,
    users: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<std::sync::Arc<VaultClient>>> {
    use anyhow::Context as _;
    use std::sync::atomic::Ordering::Relaxed;
    let first_kept = users.saturating_sub(concurrency.max(1));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    // Dropped (on an error) it aborts the registrations still running.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (make_ctx, password, next) = (make_ctx.clone(), password.clone(), next.clone());
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= users {
                    return anyhow::Ok(mine);
                }
                let user = format!("loadgen-{i}-{}", std::process::id());
                let registered = async {
                    let ctx: Ctx = make_ctx(user.clone()).await?;
                    let mut v = VaultClient::new(ctx.endpoint.clone(), &user);
                    v.ksf_params = cheap_ksf();
                    v.register(&password, &BackupKey::generate(), 10, None)
                        .await?;
                    anyhow::Ok(v)
                };
                let v = match registered.await {
                    Ok(v) => v,
                    Err(e) => {
                        next.store(users, Relaxed);
                        return Err(e).with_context(|| format!("registering {user}"));
                    }
                };
                if i >= first_kept {
                    mine.push((i, std::sync::Arc::new(v)));
                }
                if users >= 100_000 && (i + 1) % 50_000 == 0 {
                    eprintln!(
                        "registered {} users ({:.0}/s)",
                        i + 1,
                        (i + 1) as f64 / started.elapsed().as_secs_f64()
                    );
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

pub async fn run(
    make_ctx: impl Fn(String) -> futures_like::BoxCtx + Clone + Send + Sync + 'static,
    args: Args,
) -> anyhow::Result<Report> {
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        anyhow::bail!("--rate must be a positive number of recoveries per second");
    }
    if args.users == 0 || args.concurrency == 0 {
        anyhow::bail!("--users and --concurrency must be at least 1");
    }
    let password = SecretString::from("loadgen-password".to_owned());
    let clients = register_users(make_ctx, &password, args.users, args.concurrency).await?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    // Open loop: ticket n starts at start + n / rate, whichever worker is free; a recovery that
    // waited for a free worker counts its wait (no coordinated omission).
    let tickets = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let clients = clients.clone();
        let password = password.clone();
        let tickets = tickets.clone();
        let rate = args.rate;
        let args_seconds = args.seconds as f64;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            // Each worker logs in as one user, so a user never has more logins in flight than
            // workers per user (a device does not run many at once; a node keeps at most 4
            // sessions per user and ends the oldest for a fifth).
            let c = &clients[w % clients.len()];
            // Open loop: every recovery scheduled within the run starts, however late (a
            // saturated fleet shows as latency and a longer run, not as dropped work).
            while rate.is_some() || Instant::now() < deadline {
                let t = match rate {
                    Some(r) => {
                        let n = tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let offset = n as f64 / r;
                        if offset >= args_seconds {
                            break;
                        }
                        let at = start + Duration::from_secs_f64(offset);
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                match c.login(&password).await {
                    Ok(l) => {
                        l.session.close().await;
                        lat.push(t.elapsed());
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut error_kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        for msg in e {
            *error_kinds.entry(msg).or_default() += 1;
        }
    }
    let errors = error_kinds.values().sum();
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let idx = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(idx)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    Ok(Report {
        users: args.users,
        concurrency: args.concurrency,
        offered_per_second: args.rate,
        seconds: secs,
        recoveries: all.len(),
        errors,
        error_kinds,
        per_second: all.len() as f64 / secs,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    })
}

pub mod futures_like {
    pub type BoxCtx = std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<bkv_cli::ops::Ctx>> + Send>,
    >;
}
