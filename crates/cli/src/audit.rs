//! Operator publishing of validation bundles, and `bkv audit log`: an
//! independent walk over a namespace's whole auditor log.

use anyhow::{anyhow, bail, Context};
use bkv_transparency::bundle::{self, Bundle};
use bkv_transparency::merkle::{self, Hash};
use bkv_transparency::note::Checkpoint;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct KeyInfo {
    name: String,
    public_key: String,
}

#[derive(Deserialize)]
struct Entry {
    index: u64,
    #[serde(with = "bkv_transparency::b64")]
    bundle: Vec<u8>,
    #[serde(with = "bkv_transparency::b64")]
    auditor_signature: Vec<u8>,
    #[serde(default, with = "bkv_transparency::b64::opt")]
    operator_signature: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct Proof {
    #[serde(with = "bkv_transparency::b64::hashes")]
    proof: Vec<Hash>,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let r = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    r.json()
        .await
        .with_context(|| format!("GET {url}: bad JSON"))
}

/// Appends `b` to the auditor's log as the namespace's operator and
/// counter-signs the auditor's signature. Returns the log index.
pub async fn publish(
    http: &reqwest::Client,
    auditor_url: &str,
    operator: &SigningKey,
    b: &Bundle,
) -> anyhow::Result<u64> {
    let bytes = b.encode();
    let base = format!(
        "{}/v1/logs/{}",
        auditor_url.trim_end_matches('/'),
        b.namespace
    );
    let req = serde_json::json!({
        "bundle": b64(&bytes),
        "operator_signature": b64(&operator.sign(&bundle::append_message(&bytes)).to_bytes()),
    });
    let r = http
        .post(format!("{base}/entries"))
        .json(&req)
        .send()
        .await
        .context("append to auditor")?;
    if !r.status().is_success() {
        let s = r.status();
        bail!(
            "auditor refused the append ({s}): {}",
            r.text().await.unwrap_or_default()
        );
    }
    let v: serde_json::Value = r.json().await?;
    let index = v["index"]
        .as_u64()
        .ok_or_else(|| anyhow!("auditor sent no index"))?;
    let asig: Vec<u8> = unb64(v["auditor_signature"].as_str().unwrap_or_default())?;
    let asig: [u8; 64] = asig
        .try_into()
        .map_err(|_| anyhow!("auditor signature length"))?;
    // Check the auditor signed what we sent before we counter-sign it.
    let d = bundle::digest(&bytes);
    let akey: KeyInfo = get_json(
        http,
        &format!("{}/v1/key", auditor_url.trim_end_matches('/')),
    )
    .await?;
    let akey = VerifyingKey::from_bytes(
        &bkv_wire::key_from_hex(&akey.public_key).map_err(|e| anyhow!(e))?,
    )?;
    if !bundle::verify_sig(
        &akey,
        &bundle::auditor_message(&b.namespace, b.epoch, &d),
        &asig,
    ) {
        bail!("the auditor's signature does not verify");
    }
    let osig = bundle::sign_operator(operator, &asig);
    let r = http
        .post(format!("{base}/entries/{index}/countersignature"))
        .json(&serde_json::json!({ "operator_signature": b64(&osig) }))
        .send()
        .await
        .context("counter-sign")?;
    if !r.status().is_success() {
        bail!("auditor refused the counter-signature: {}", r.status());
    }
    Ok(index)
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(s: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
}

#[derive(Serialize)]
pub struct EpochRow {
    pub index: u64,
    pub epoch: u64,
    pub fleet_id: String,
    pub noise_key: String,
    pub node_keys: usize,
    pub not_before: u64,
    pub not_after: u64,
    pub evidence_digest: String,
    pub change: String,
}

#[derive(Serialize)]
pub struct LogReport {
    pub auditor: String,
    pub namespace: String,
    pub origin: String,
    pub size: u64,
    pub root: String,
    pub epochs: Vec<EpochRow>,
    pub warnings: Vec<String>,
}

/// Walks every entry of the namespace's log and verifies digests, both
/// signatures, epochs, inclusion of every entry and consistency of every
/// earlier tree size with the latest checkpoint. Any failure is an error.
pub async fn audit_log(
    auditor_url: &str,
    namespace: &str,
    operator_key: &VerifyingKey,
    pinned_auditor_key: Option<VerifyingKey>,
) -> anyhow::Result<LogReport> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let root_url = auditor_url.trim_end_matches('/');
    let info: KeyInfo = get_json(&http, &format!("{root_url}/v1/key")).await?;
    let akey = VerifyingKey::from_bytes(
        &bkv_wire::key_from_hex(&info.public_key).map_err(|e| anyhow!("auditor key: {e}"))?,
    )?;
    if let Some(p) = pinned_auditor_key {
        if p != akey {
            bail!(
                "the auditor presents key {} but --auditor-key pins {}",
                info.public_key,
                hex::encode(p.as_bytes())
            );
        }
    }
    let base = format!("{root_url}/v1/logs/{namespace}");
    let note = http
        .get(format!("{base}/checkpoint"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let cp = Checkpoint::open(&note, &info.name, &akey).map_err(|e| anyhow!("checkpoint: {e}"))?;
    let origin = format!("{}/{namespace}", info.name);
    if cp.origin != origin {
        bail!("checkpoint origin {:?} is not {origin:?}", cp.origin);
    }
    let mut leaves: Vec<Hash> = Vec::new();
    let mut rows: Vec<EpochRow> = Vec::new();
    let mut warnings = Vec::new();
    let mut digests = std::collections::HashSet::new();
    let mut prev: Option<Bundle> = None;
    for i in 0..cp.size {
        let e: Entry = get_json(&http, &format!("{base}/entries/{i}")).await?;
        if e.index != i {
            bail!("entry {i}: auditor returned index {}", e.index);
        }
        let b = Bundle::decode(&e.bundle).map_err(|err| anyhow!("entry {i}: {err}"))?;
        let d = bundle::digest(&e.bundle);
        if b.namespace != namespace {
            bail!("entry {i}: bundle namespace {:?}", b.namespace);
        }
        if !digests.insert(d) {
            bail!("entry {i}: digest logged twice");
        }
        if !bundle::verify_sig(
            &akey,
            &bundle::auditor_message(namespace, b.epoch, &d),
            &e.auditor_signature,
        ) {
            bail!("entry {i} (epoch {}): auditor signature invalid", b.epoch);
        }
        let asig: [u8; 64] = e
            .auditor_signature
            .as_slice()
            .try_into()
            .map_err(|_| anyhow!("entry {i}: signature length"))?;
        match &e.operator_signature {
            Some(s) if bundle::verify_sig(operator_key, &bundle::operator_message(&asig), s) => {}
            Some(_) => bail!("entry {i} (epoch {}): operator counter-signature invalid for the given operator key", b.epoch),
            None => bail!("entry {i} (epoch {}): no operator counter-signature", b.epoch),
        }
        if let Some(p) = &prev {
            if b.epoch <= p.epoch {
                bail!(
                    "entry {i}: epoch {} does not increase (previous {})",
                    b.epoch,
                    p.epoch
                );
            }
        }
        let leaf = merkle::leaf_hash(&bundle::leaf_data(b.epoch, &d));
        leaves.push(leaf);
        let incl: Proof = get_json(
            &http,
            &format!("{base}/proof/inclusion?index={i}&size={}", cp.size),
        )
        .await?;
        if !merkle::verify_inclusion(i, cp.size, &leaf, &incl.proof, &cp.root) {
            bail!("entry {i}: inclusion proof does not verify against the checkpoint");
        }
        let size = i + 1;
        let cons: Proof = get_json(
            &http,
            &format!("{base}/proof/consistency?from={size}&to={}", cp.size),
        )
        .await?;
        if !merkle::verify_consistency(size, cp.size, &merkle::root(&leaves), &cp.root, &cons.proof)
        {
            bail!(
                "tree size {size} is not consistent with the checkpoint (size {})",
                cp.size
            );
        }
        let keys_of = |b: &Bundle| {
            let mut k: Vec<_> = b
                .keys
                .iter()
                .map(|k| (format!("{:?}", k.role), k.key))
                .collect();
            k.sort();
            k
        };
        let change = match &prev {
            None => "initial".to_owned(),
            Some(p) if keys_of(p) == keys_of(&b) => "same keys".to_owned(),
            Some(_) => "KEYS CHANGED".to_owned(),
        };
        if change != "same keys" && b.evidence_digest == [0u8; 32] {
            warnings.push(format!(
                "epoch {}: fleet keys {} without deployment evidence",
                b.epoch,
                if prev.is_none() {
                    "introduced"
                } else {
                    "changed"
                }
            ));
        }
        rows.push(EpochRow {
            index: i,
            epoch: b.epoch,
            fleet_id: b.fleet_id.clone(),
            noise_key: b.noise_key().map(hex::encode).unwrap_or_default(),
            node_keys: b
                .keys
                .iter()
                .filter(|k| k.role == bundle::KeyRole::NodeIdentity)
                .count(),
            not_before: b.not_before,
            not_after: b.not_after,
            evidence_digest: hex::encode(b.evidence_digest),
            change,
        });
        prev = Some(b);
    }
    if merkle::root(&leaves) != cp.root {
        bail!("the entries do not hash to the checkpoint's root");
    }
    Ok(LogReport {
        auditor: info.public_key,
        namespace: namespace.to_owned(),
        origin,
        size: cp.size,
        root: hex::encode(cp.root),
        epochs: rows,
        warnings,
    })
}

pub fn print_table(r: &LogReport) {
    println!(
        "auditor {}  log {}  size {}  root {}",
        r.auditor, r.origin, r.size, r.root
    );
    println!(
        "{:>5} {:>6}  {:<24} {:<18} {:>5}  {:<23} change",
        "index", "epoch", "fleet", "noise key", "nodes", "valid (unix)"
    );
    for e in &r.epochs {
        println!(
            "{:>5} {:>6}  {:<24} {:<18} {:>5}  {:<23} {}",
            e.index,
            e.epoch,
            e.fleet_id,
            format!("{}…", e.noise_key.get(..16).unwrap_or(&e.noise_key)),
            e.node_keys,
            format!("{}..{}", e.not_before, e.not_after),
            e.change
        );
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!("verified: every digest, auditor signature, operator counter-signature, inclusion proof and consistency proof");
}
