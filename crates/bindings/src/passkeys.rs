//! Passkeys across the binding: the app's platform authenticator, implemented in Kotlin, Swift
//! or Python, or the software authenticator the CLI uses.

use crate::errors::PasskeyFailure;
use bkv_client::{Authenticator, PasskeyError};
use futures::future::BoxFuture;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// A WebAuthn authenticator with the PRF extension, as the platform offers it. Both calls take
/// the relying party's origin and the argument of `navigator.credentials.create` / `.get` as
/// JSON: `{"publicKey": {…}}`, the options with `extensions.prf`, binary fields in base64url
/// (Android's Credential Manager takes the inner `publicKey` object). They return the
/// `PublicKeyCredential` JSON with `clientExtensionResults.prf.results.first`. An exception
/// other than [`PasskeyFailure`] fails the operation as [`PasskeyFailure::Failed`]. The
/// callback must not call back into the [`crate::Client`].
#[uniffi::export(with_foreign)]
pub trait PasskeyAuthenticator: Send + Sync {
    /// `navigator.credentials.create({publicKey})`.
    fn create(&self, origin: String, options_json: String) -> Result<String, PasskeyFailure>;
    /// `navigator.credentials.get({publicKey})`.
    fn get(&self, origin: String, options_json: String) -> Result<String, PasskeyFailure>;
}

/// The software authenticator over the credential file `store_path` (created when missing): the
/// same as `bkv --passkey-store`, for tests and for moving passkeys between the CLI and an app.
#[uniffi::export]
pub fn soft_passkey(store_path: String) -> Arc<dyn PasskeyAuthenticator> {
    Arc::new(Soft(Mutex::new(bkv_soft_passkey::SoftAuthenticator::new(
        std::path::Path::new(&store_path),
    ))))
}

struct Soft(Mutex<bkv_soft_passkey::SoftAuthenticator>);

impl Soft {
    fn run(
        &self,
        origin: &str,
        options_json: &str,
        create: bool,
    ) -> Result<String, PasskeyFailure> {
        let options: Value = serde_json::from_str(options_json).map_err(|e| failed(&e))?;
        let mut auth = self.0.lock().map_err(|e| failed(&e))?;
        // The software authenticator's futures do no I/O a runtime must drive.
        let out = futures::executor::block_on(match create {
            true => auth.create(origin, options),
            false => auth.get(origin, options),
        });
        match out {
            Ok(v) => Ok(v.to_string()),
            Err(PasskeyError::NoCredential) => Err(PasskeyFailure::NoCredential),
            Err(e) => Err(failed(&e)),
        }
    }
}

fn failed(e: &dyn std::fmt::Display) -> PasskeyFailure {
    PasskeyFailure::Failed {
        message: e.to_string(),
    }
}

impl PasskeyAuthenticator for Soft {
    fn create(&self, origin: String, options_json: String) -> Result<String, PasskeyFailure> {
        self.run(&origin, &options_json, true)
    }
    fn get(&self, origin: String, options_json: String) -> Result<String, PasskeyFailure> {
        self.run(&origin, &options_json, false)
    }
}

/// An authenticator from across the binding, as the client library takes one.
pub(crate) struct Foreign(pub(crate) Arc<dyn PasskeyAuthenticator>);

impl Foreign {
    fn answer(&self, origin: &str, options: Value, create: bool) -> Result<Value, PasskeyError> {
        let (origin, options) = (origin.to_owned(), options.to_string());
        let out = match create {
            true => self.0.create(origin, options),
            false => self.0.get(origin, options),
        };
        match out {
            Ok(json) => serde_json::from_str(&json)
                .map_err(|e| PasskeyError::Authenticator(format!("its answer: {e}"))),
            Err(PasskeyFailure::NoCredential) => Err(PasskeyError::NoCredential),
            Err(PasskeyFailure::Failed { message }) => Err(PasskeyError::Authenticator(message)),
        }
    }
}

impl Authenticator for Foreign {
    fn create<'a>(
        &'a mut self,
        origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<Value, PasskeyError>> {
        Box::pin(async move { self.answer(origin, options, true) })
    }
    fn get<'a>(
        &'a mut self,
        origin: &'a str,
        options: Value,
    ) -> BoxFuture<'a, Result<Value, PasskeyError>> {
        Box::pin(async move { self.answer(origin, options, false) })
    }
}
