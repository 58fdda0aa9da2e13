//! Publishing to the independent auditor as a namespace's operator.

use crate::{OperatorError, Result};
use bkv_api::auditor::{
    AppendEvidenceRequest, AppendRecordRequest, AppendRequest, AppendResponse as Appended,
    AppendWebRequest, CountersignRequest, KeyInfo, ProofResponse as Proof,
};
use bkv_transparency::bundle::{self, Bundle};
use bkv_transparency::membership::{self as m, MembershipRecord};
use bkv_transparency::note::Checkpoint;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// Largest auditor answer read (entries and proofs are a few KiB).
const MAX_AUDITOR_BODY: usize = 1024 * 1024;

fn err(url: &str, message: impl std::fmt::Display) -> OperatorError {
    OperatorError::Auditor {
        url: url.to_owned(),
        message: message.to_string(),
    }
}

async fn body(url: &str, r: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let status = r.status();
    let b = bkv_client::read_limited(r, limit)
        .await
        .map_err(|e| err(url, e))?;
    if !status.is_success() {
        return Err(err(
            url,
            format!("{status}: {}", String::from_utf8_lossy(&b)),
        ));
    }
    Ok(b)
}

async fn send_json<T: serde::de::DeserializeOwned>(
    url: &str,
    req: reqwest::RequestBuilder,
) -> Result<T> {
    let r = req.send().await.map_err(|e| err(url, e))?;
    serde_json::from_slice(&body(url, r, MAX_AUDITOR_BODY).await?).map_err(|e| err(url, e))
}

/// A client for one auditor, acting as one namespace's operator.
pub struct AuditorClient<'a> {
    /// The HTTP client to use.
    pub http: &'a reqwest::Client,
    /// The auditor's base URL.
    pub url: &'a str,
    /// The namespace's operator key, which signs every append.
    pub operator: &'a SigningKey,
}

impl AuditorClient<'_> {
    fn root(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    /// The auditor's name and verifying key, as it serves them.
    async fn key(&self) -> Result<(String, VerifyingKey)> {
        let url = format!("{}/v1/key", self.root());
        let k: KeyInfo = send_json(&url, self.http.get(&url)).await?;
        let bytes = bkv_wire::key_from_hex(&k.public_key).map_err(|e| err(&url, e))?;
        let vk = VerifyingKey::from_bytes(&bytes).map_err(|e| err(&url, e))?;
        Ok((k.name, vk))
    }

    /// Appends `b` to the auditor's log and counter-signs the auditor's
    /// signature (after checking it). Returns the log index.
    pub async fn publish(&self, b: &Bundle) -> Result<u64> {
        let bytes = b.encode();
        let base = format!("{}/v1/logs/{}", self.root(), b.namespace);
        let url = format!("{base}/entries");
        let req = AppendRequest {
            operator_signature: self
                .operator
                .sign(&bundle::append_message(&bytes))
                .to_bytes()
                .to_vec(),
            bundle: bytes.clone(),
        };
        let a: Appended = send_json(&url, self.http.post(&url).json(&req)).await?;
        let asig: [u8; 64] = a
            .auditor_signature
            .as_slice()
            .try_into()
            .map_err(|_| OperatorError::AuditorSignature)?;
        let (_, akey) = self.key().await?;
        let d = bundle::digest(&bytes);
        if !bundle::verify_sig(
            &akey,
            &bundle::auditor_message(&b.namespace, b.epoch, &d),
            &asig,
        ) {
            return Err(OperatorError::AuditorSignature);
        }
        let osig = bundle::sign_operator(self.operator, &asig);
        let url = format!("{base}/entries/{}/countersignature", a.index);
        let r = self
            .http
            .post(&url)
            .json(&CountersignRequest {
                operator_signature: osig.to_vec(),
            })
            .send()
            .await
            .map_err(|e| err(&url, e))?;
        body(&url, r, 16 * 1024).await?;
        Ok(a.index)
    }

    /// Logs a fleet membership record, checks the auditor's signature, and
    /// returns the proof the fleet's cores demand: the auditor's signature,
    /// a signed checkpoint and the inclusion proof of the record's leaf.
    pub async fn log_record(&self, record: &MembershipRecord) -> Result<bkv_wire::admin::LogProof> {
        let bytes = record.encode();
        let base = format!("{}/v1/logs/{}", self.root(), record.namespace);
        let url = format!("{base}/records");
        let req = AppendRecordRequest {
            operator_signature: self
                .operator
                .sign(&m::append_record_message(&bytes))
                .to_bytes()
                .to_vec(),
            record: bytes.clone(),
        };
        let a: Appended = send_json(&url, self.http.post(&url).json(&req)).await?;
        let (name, akey) = self.key().await?;
        let d = m::record_digest(&bytes);
        if !bundle::verify_sig(
            &akey,
            &m::auditor_record_message(&record.namespace, &d),
            &a.auditor_signature,
        ) {
            return Err(OperatorError::AuditorSignature);
        }
        let url = format!("{base}/checkpoint");
        let r = self.http.get(&url).send().await.map_err(|e| err(&url, e))?;
        let note = String::from_utf8(body(&url, r, bkv_transparency::note::MAX_NOTE).await?)
            .map_err(|e| err(&url, e))?;
        let cp = Checkpoint::open(&note, &name, &akey).map_err(|e| err(&url, e))?;
        let url = format!("{base}/proof/inclusion?index={}&size={}", a.index, cp.size);
        let p: Proof = send_json(&url, self.http.get(&url)).await?;
        Ok(bkv_wire::admin::LogProof {
            auditor_signature: a.auditor_signature,
            leaf_index: a.index,
            checkpoint: note,
            inclusion_proof: p.proof,
        })
    }
}

impl AuditorClient<'_> {
    /// Logs a fleet's deployment evidence (the file's exact bytes) and
    /// checks the auditor's signature. Returns the log index.
    pub async fn log_evidence(&self, namespace: &str, evidence: &[u8]) -> Result<u64> {
        use bkv_transparency::evidence as ev;
        let url = format!("{}/v1/logs/{namespace}/evidence", self.root());
        let req = AppendEvidenceRequest {
            evidence: evidence.to_vec(),
            operator_signature: self
                .operator
                .sign(&ev::append_message(evidence))
                .to_bytes()
                .to_vec(),
        };
        let a: Appended = send_json(&url, self.http.post(&url).json(&req)).await?;
        let (_, akey) = self.key().await?;
        if !bundle::verify_sig(
            &akey,
            &ev::auditor_message(namespace, &ev::digest(evidence)),
            &a.auditor_signature,
        ) {
            return Err(OperatorError::AuditorSignature);
        }
        Ok(a.index)
    }

    /// Logs a web build's manifest (its exact bytes, `bkv_transparency::web`) and checks the
    /// auditor's signature. Returns the log index; a build logged before is not an error
    /// (`None`).
    pub async fn log_web(&self, namespace: &str, manifest: &[u8]) -> Result<Option<u64>> {
        use bkv_transparency::web;
        let url = format!("{}/v1/logs/{namespace}/web", self.root());
        let req = AppendWebRequest {
            manifest: manifest.to_vec(),
            operator_signature: self
                .operator
                .sign(&web::append_message(manifest))
                .to_bytes()
                .to_vec(),
        };
        let r = self
            .http
            .post(&url)
            .json(&req)
            .send()
            .await
            .map_err(|e| err(&url, e))?;
        if r.status() == reqwest::StatusCode::CONFLICT {
            return Ok(None);
        }
        let a: Appended = serde_json::from_slice(&body(&url, r, MAX_AUDITOR_BODY).await?)
            .map_err(|e| err(&url, e))?;
        let (_, akey) = self.key().await?;
        if !bundle::verify_sig(
            &akey,
            &web::auditor_message(namespace, &web::digest(manifest)),
            &a.auditor_signature,
        ) {
            return Err(OperatorError::AuditorSignature);
        }
        Ok(Some(a.index))
    }
}
