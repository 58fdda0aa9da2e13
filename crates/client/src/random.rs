//! The client's randomness, in one place: the operating system's natively; in a browser build
//! whatever the embedder set with [`set_random`] (`bkv-web` points it at
//! `crypto.getRandomValues`). Everything the client draws — keys, nonces, OPAQUE's blinds,
//! slot and object ids — comes from here, so a browser build never reaches getrandom's own
//! JavaScript backend (which needs wasm-bindgen's generated glue).

use rand::{CryptoRng, RngCore};
use std::sync::OnceLock;

static SOURCE: OnceLock<fn(&mut [u8])> = OnceLock::new();

/// Sets the source of randomness for this process (the first call wins). Only builds without
/// an operating system need it; it must be a cryptographically secure generator.
pub fn set_random(fill: fn(&mut [u8])) {
    let _ = SOURCE.set(fill);
}

/// The client's generator (named like `rand`'s, which it is natively).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsRng;

impl RngCore for OsRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        match SOURCE.get() {
            Some(fill) => fill(dest),
            None => system(dest),
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for OsRng {}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
fn system(dest: &mut [u8]) {
    rand::rngs::OsRng.fill_bytes(dest);
}

/// No source was set in a build without an operating system: nothing safe to return.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
fn system(_: &mut [u8]) {
    panic!("bkv-client: no source of randomness was set (bkv_client::set_random)");
}
