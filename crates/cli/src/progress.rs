//! Progress bars for long transfers: shown only once an operation has run for a second.

use bkv_cli::ops;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::{Duration, Instant};

/// A progress bar sized to the user's latest backup.
pub async fn restore_progress(
    storage: &str,
    user: &str,
) -> anyhow::Result<(ProgressBar, ops::Report)> {
    let total = bkv_client::BackupStore::open(storage, user)?
        .latest()
        .await?
        .map(|l| l.size)
        .unwrap_or(0);
    Ok(progress(total, "restoring"))
}

/// A progress bar that appears only once an operation has run for a second.
pub fn progress(total: u64, verb: &'static str) -> (ProgressBar, ops::Report) {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(verb);
    let start = Instant::now();
    let bar = pb.clone();
    let mut shown = false;
    let report: ops::Report = Box::new(move |done| {
        if !shown && start.elapsed() > Duration::from_secs(1) {
            shown = true;
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.set_position(done);
    });
    (pb, report)
}
