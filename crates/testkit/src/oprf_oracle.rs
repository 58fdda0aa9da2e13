//! What an operator with a user's token would do with an OPRF evaluation that no login counted
//! (issue 27, item 1): evaluate a dictionary through `RegisterStart`, spend one counted
//! `LoginStart`, then test every candidate offline against the masked credential response.
//!
//! The offline test follows RFC 9807 for bkv's suite (`bkv_wire::OpaqueSuite`: ristretto255
//! OPRF, SHA-512, Argon2id as the client's key stretching with the argon2 crate's default
//! parameters and an all-zero salt, as opaque-ke does):
//!
//! ```text
//! randomized_password = HKDF-Extract(salt = "", oprf_output || Stretch(oprf_output))
//! masking_key         = HKDF-Expand(randomized_password, "MaskingKey", 64)
//! pad                 = HKDF-Expand(masking_key, masking_nonce || "CredentialResponsePad", 32 + 96)
//! server_public_key  == (masked_response XOR pad)[..32]   for the right password
//! ```
//!
//! A candidate "matches" when its unmasked server public key equals the fleet's OPAQUE public
//! key: with an evaluation under the record's OPRF key that happens only for the registered
//! password.

use hkdf::Hkdf;
use opaque_ke::Ristretto255;
use rand_core::OsRng;
use sha2::Sha512;
use voprf::{BlindedElement, EvaluationElement, OprfClient};

/// Bytes of a serialized ristretto255 element.
const ELEMENT: usize = 32;
/// `masking_nonce` of a credential response.
const NONCE: usize = 32;
/// The masked part: server public key (32) and envelope (nonce 32, tag 64).
const MASKED: usize = 32 + 32 + 64;

/// One candidate password, blinded for one evaluation.
pub struct Blinded {
    /// The candidate password.
    pub password: Vec<u8>,
    client: OprfClient<Ristretto255>,
    /// A serialized blinded element: the body of a `RegistrationRequest`, or the first part of a
    /// `CredentialRequest`.
    pub request: Vec<u8>,
}

/// Blinds `password` (as an OPAQUE client's first message would).
pub fn blind(password: &[u8]) -> Blinded {
    let r = OprfClient::<Ristretto255>::blind(password, &mut OsRng)
        .unwrap_or_else(|e| panic!("blinding failed: {e:?}"));
    Blinded {
        password: password.to_vec(),
        client: r.state,
        request: r.message.serialize().to_vec(),
    }
}

impl Blinded {
    /// The OPRF output from the server's evaluation: the first 32 bytes of a
    /// `RegistrationResponse` or of a `CredentialResponse`. `None` if it does not decode.
    pub fn finalize(&self, response: &[u8]) -> Option<Vec<u8>> {
        let eval = EvaluationElement::<Ristretto255>::deserialize(response.get(..ELEMENT)?).ok()?;
        self.client
            .finalize(&self.password, &eval)
            .ok()
            .map(|o| o.to_vec())
    }
}

/// The server's OPAQUE public key, from a `RegistrationResponse` (evaluation, then the key).
pub fn server_public_key(registration_response: &[u8]) -> Option<[u8; 32]> {
    registration_response
        .get(ELEMENT..ELEMENT + 32)?
        .try_into()
        .ok()
}

/// Whether `oprf_output` (a candidate's evaluation) unmasks `credential_response` to
/// `server_public_key`: the offline test of one candidate against one counted login.
pub fn unmasks(
    oprf_output: &[u8],
    credential_response: &[u8],
    server_public_key: &[u8; 32],
) -> bool {
    let (Some(nonce), Some(masked)) = (
        credential_response.get(ELEMENT..ELEMENT + NONCE),
        credential_response.get(ELEMENT + NONCE..ELEMENT + NONCE + MASKED),
    ) else {
        return false;
    };
    let mut stretched = [0u8; 64];
    if argon2::Argon2::default()
        .hash_password_into(
            oprf_output,
            &[0; argon2::RECOMMENDED_SALT_LEN],
            &mut stretched,
        )
        .is_err()
    {
        return false;
    }
    let mut ikm = oprf_output.to_vec();
    ikm.extend_from_slice(&stretched);
    let (randomized, _) = Hkdf::<Sha512>::extract(None, &ikm);
    let mut masking_key = [0u8; 64];
    fn pad_from(prk: &[u8], info: &[&[u8]], out: &mut [u8]) -> bool {
        Hkdf::<Sha512>::from_prk(prk)
            .ok()
            .and_then(|h| h.expand_multi_info(info, out).ok())
            .is_some()
    }
    if !pad_from(&randomized, &[b"MaskingKey".as_slice()], &mut masking_key) {
        return false;
    }
    let mut pad = [0u8; MASKED];
    if !pad_from(
        &masking_key,
        &[nonce, b"CredentialResponsePad".as_slice()],
        &mut pad,
    ) {
        return false;
    }
    pad.iter()
        .zip(masked)
        .take(32)
        .map(|(p, m)| p ^ m)
        .eq(server_public_key.iter().copied())
}

/// A `CredentialRequest` carrying `blinded`'s element (the key-exchange part from a real OPAQUE
/// client start, so the server accepts it).
pub fn credential_request(blinded: &Blinded) -> Vec<u8> {
    let start = opaque_ke::ClientLogin::<bkv_wire::OpaqueSuite>::start(&mut OsRng, b"unused")
        .unwrap_or_else(|e| panic!("login start failed: {e:?}"));
    let mut req = start.message.serialize().to_vec();
    if let Some(element) = req.get_mut(..ELEMENT) {
        element.copy_from_slice(&blinded.request);
    }
    req
}

/// Decodes as a blinded element (sanity check of a request built here).
pub fn is_element(bytes: &[u8]) -> bool {
    BlindedElement::<Ristretto255>::deserialize(bytes).is_ok()
}
