//! `bkv witness`: an independent witness's own tool, with its own key (issue 27, item 6).
//! A witness never signs inside the operator's tooling: the operator hands it a ceremony's draft
//! evidence or points it at the auditor, and it checks what it is given before it signs.
//!
//! - `key`: creates the witness's Ed25519 key (only where no file exists; an unreadable key is an
//!   error, never replaced) and prints the public key the operator and auditors pin.
//! - `ceremony`: checks a draft (transcript chain, every node's statements and their agreement,
//!   fleet keys, policy) and signs its transcript head; prints the signature as JSON for the
//!   operator's ceremony to import.
//! - `checkpoint`: fetches the auditor's latest checkpoint, checks it is signed by the pinned
//!   auditor key and consistent with the last one this witness cosigned (its state file), and
//!   cosigns it (C2SP `tlog-cosignature`, `cosignature/v1`); prints the cosigned note.

use anyhow::{anyhow, bail, Context};
use bkv_transparency::{evidence as ev, merkle, note};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Create this witness's key (only if FILE does not exist) and print its public key (hex).
    Key {
        /// The key file (32 bytes, mode 0600).
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a ceremony's draft evidence and sign its transcript head; prints the signature
    /// (JSON `{name, key, signature}`) for the operator to import.
    Ceremony {
        #[arg(long)]
        key: PathBuf,
        /// The name the witness signs as.
        #[arg(long)]
        name: String,
        /// The draft evidence (`evidence.json` without witnesses) the operator handed over.
        draft: PathBuf,
    },
    /// Cosign the auditor's latest checkpoint once it is checked: signed by the pinned auditor
    /// key, and consistent with the last checkpoint this witness cosigned (kept in --state).
    Checkpoint {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        name: String,
        /// Auditor base URL.
        #[arg(long)]
        auditor: String,
        #[arg(long)]
        namespace: String,
        /// The auditor's key: its note verifier key (`name+id+base64`, as `GET /v1/key` serves it)
        /// or the bare Ed25519 key in hex (as `client.toml` pins it).
        #[arg(long)]
        auditor_key: String,
        /// Where this witness keeps the last checkpoint it cosigned (created on first use).
        #[arg(long)]
        state: PathBuf,
        /// Trust only this CA (PEM) for the auditor's HTTPS certificate.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

pub async fn run(command: &WitnessCommand) -> anyhow::Result<()> {
    match command {
        WitnessCommand::Key { key } => {
            let k = load_or_create(key)?;
            println!("{}", hex::encode(k.verifying_key().as_bytes()));
            Ok(())
        }
        WitnessCommand::Ceremony { key, name, draft } => {
            let key = load(key)?;
            let len = std::fs::metadata(draft)
                .with_context(|| format!("read {}", draft.display()))?
                .len();
            if len > ev::MAX_EVIDENCE as u64 {
                bail!("{} is larger than an evidence file may be", draft.display());
            }
            let bytes =
                std::fs::read(draft).with_context(|| format!("read {}", draft.display()))?;
            let e = ev::parse(&bytes).map_err(|e| anyhow!("draft: {e}"))?;
            let w = ev::witness(&e, name, &key).map_err(|e| anyhow!("draft: {e}"))?;
            println!("{}", serde_json::to_string(&w)?);
            Ok(())
        }
        WitnessCommand::Checkpoint {
            key,
            name,
            auditor,
            namespace,
            auditor_key,
            state,
            ca_file,
        } => {
            let key = load(key)?;
            let http = crate::audit::http_client(ca_file.as_deref())?;
            let note = cosign_checkpoint(&http, auditor, namespace, auditor_key, state, name, &key)
                .await?;
            print!("{note}");
            Ok(())
        }
    }
}

/// The last checkpoint a witness cosigned (`--state`).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Cosigned {
    size: u64,
    root: String,
}

async fn cosign_checkpoint(
    http: &reqwest::Client,
    auditor: &str,
    namespace: &str,
    auditor_key: &str,
    state: &Path,
    name: &str,
    key: &SigningKey,
) -> anyhow::Result<String> {
    let akey = super::audit::auditor_vk(auditor_key)?;
    let base = format!("{}/v1/logs/{namespace}", auditor.trim_end_matches('/'));
    let note_text = get(http, &format!("{base}/checkpoint")).await?;
    let note_text = String::from_utf8(note_text).context("checkpoint is not UTF-8")?;
    // The key's name in a note verifier key; with a bare hex key, the log's origin names it
    // (`<name>/<namespace>`): the key bytes are what is pinned, the name only labels them.
    let aname = match note::parse_verifier_key(auditor_key) {
        Ok((name, _)) => name,
        Err(_) => note_text
            .lines()
            .next()
            .and_then(|origin| origin.strip_suffix(&format!("/{namespace}")))
            .ok_or_else(|| anyhow!("checkpoint: its origin is not <name>/{namespace}"))?
            .to_string(),
    };
    let cp = note::Checkpoint::open(&note_text, &aname, &akey)
        .map_err(|e| anyhow!("checkpoint: {e}"))?;
    if cp.origin != format!("{aname}/{namespace}") {
        bail!(
            "checkpoint: origin {:?} is not {aname}/{namespace}",
            cp.origin
        );
    }
    let last: Cosigned = match std::fs::read(state) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}", state.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Cosigned::default(),
        Err(e) => return Err(e).with_context(|| format!("read {}", state.display())),
    };
    let last_root: [u8; 32] = match last.size {
        0 => [0; 32],
        _ => hex::decode(&last.root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| anyhow!("{}: malformed root", state.display()))?,
    };
    if cp.size < last.size {
        bail!(
            "the auditor's log shrank from {} (cosigned before) to {}: refusing to cosign",
            last.size,
            cp.size
        );
    }
    if last.size > 0 {
        let body = get(
            http,
            &format!("{base}/proof/consistency?from={}&to={}", last.size, cp.size),
        )
        .await?;
        let p: bkv_api::auditor::ProofResponse =
            serde_json::from_slice(&body).context("consistency proof")?;
        if !merkle::verify_consistency(last.size, cp.size, &last_root, &cp.root, &p.proof) {
            bail!(
                "the auditor's checkpoint of size {} is not consistent with the one of size {} this witness cosigned: a forked or rewritten log; refusing to cosign",
                cp.size,
                last.size
            );
        }
    }
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = note::cosign(&cp.text(), name, key, time).map_err(|e| anyhow!("cosign: {e}"))?;
    let body = serde_json::to_vec(&Cosigned {
        size: cp.size,
        root: hex::encode(cp.root),
    })?;
    bkv_client::write_private_file(state, &body)
        .with_context(|| format!("write {}", state.display()))?;
    Ok(format!("{note_text}{line}"))
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<u8>> {
    let r = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    Ok(bkv_client::read_limited(r, 256 * 1024).await?)
}

/// The witness key at `path`; an absent, unreadable or malformed file is an error.
fn load(path: &Path) -> anyhow::Result<SigningKey> {
    let k = bkv_private_files::read_key::<32>(path).context("witness key")?;
    Ok(SigningKey::from_bytes(&k))
}

/// The witness key at `path`, created only when no file exists there: a key that is there but
/// cannot be read (permissions, a disk error) is never replaced.
fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    let k = bkv_private_files::load_or_create_key::<32>(path).context("witness key")?;
    Ok(SigningKey::from_bytes(&k))
}
