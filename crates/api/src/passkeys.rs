//! The frontend's passkey routes (docs/api.md "Passkeys"). WebAuthn options and credentials
//! are whatever the browser or authenticator speaks (`T`): this crate does not parse them.
//! The relying-party share and grants are secrets of the user's: these types have no `Debug`.

use serde::{Deserialize, Serialize};

/// `POST /v1/passkeys/registrations` and `/v1/passkeys/assertions` answer: the ceremony to finish and the
/// WebAuthn options for the authenticator.
#[derive(Clone, Serialize, Deserialize)]
pub struct Started<T> {
    /// The ceremony's id, for the finishing request's path.
    pub ceremony: String,
    /// The WebAuthn options to hand the authenticator.
    pub options: T,
}

/// `POST /v1/passkeys/registrations/{ceremony}` and `/v1/passkeys/assertions/{ceremony}` answer.
#[derive(Clone, Serialize, Deserialize)]
pub struct Finished {
    /// The passkey's credential id.
    pub credential_id: String,
    /// The relying party's share of the protector key.
    pub rp_share: String,
    /// After an assertion: proof of this protector for deletions and further registrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// `POST /v1/passkeys/registrations` body: a grant, once the user has a passkey.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct RegisterStartBody {
    /// Proof of an existing protector ([`Grant`], or a `Finished` assertion's).
    #[serde(default)]
    pub grant: Option<String>,
}

/// `POST /v1/passkeys/assertions` body: which passkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertStartBody {
    /// The passkey's credential id.
    pub credential_id: String,
}

/// `POST /v1/passkeys/registrations/{ceremony}` and `/v1/passkeys/assertions/{ceremony}` body: the authenticator's credential.
#[derive(Clone, Serialize, Deserialize)]
pub struct CredentialBody<T> {
    /// What the authenticator answered.
    pub credential: T,
}

/// `POST /v1/passkeys/grants` answer: a grant from a logged-in vault session.
#[derive(Clone, Serialize, Deserialize)]
pub struct Grant {
    /// The grant (a secret of the user's).
    pub grant: String,
    /// Seconds.
    pub expires_in: u64,
}

/// `GET /v1/passkeys` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyList {
    /// The user's passkeys.
    pub passkeys: Vec<PasskeyEntry>,
}

/// One passkey of the user's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyEntry {
    /// Its credential id.
    pub credential_id: String,
    /// When it was registered, unix seconds.
    pub created_unix: u64,
}

/// `DELETE /v1/passkeys` answer: how many were deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// How many passkeys were deleted.
    pub deleted: u64,
}
