//! SoftHSM2 tokens for tests, benchmarks and development deployments: a
//! token directory and configuration file of their own, initialised with
//! `softhsm2-util` (Debian package `softhsm2`). SoftHSM2 is software: it
//! stands in for an HSM, it protects nothing against the host.

use crate::pkcs11::Pkcs11Config;
use crate::{write_private_file, PlatformOpenError, SOFTHSM_MODULE};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A freshly initialised token.
pub struct SoftHsmToken {
    /// The configuration file; `SOFTHSM2_CONF` must name it in every
    /// process that opens the token.
    pub conf: PathBuf,
    /// How to open the token.
    pub config: Pkcs11Config,
}

/// Creates `dir/softhsm2.conf`, the token directory `dir/tokens` and the
/// PIN file `dir/pin` (mode 0600), and initialises a token `label` in it.
/// (`softhsm2-util` takes the PINs as arguments: fine on a dev machine, not
/// for a production HSM.)
pub fn init_token(
    dir: &Path,
    label: &str,
    pin: &str,
    so_pin: &str,
) -> Result<SoftHsmToken, PlatformOpenError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PlatformOpenError::Io { path, source }
    };
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(io(&tokens))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(io(&conf))?;
    let pin_file = dir.join("pin");
    write_private_file(&pin_file, pin.as_bytes()).map_err(io(&pin_file))?;
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", pin, "--so-pin", so_pin])
        .output()
        .map_err(|e| {
            PlatformOpenError::Token(format!(
                "run softhsm2-util (install the Debian package softhsm2): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(PlatformOpenError::Token(format!(
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(SoftHsmToken {
        conf,
        config: Pkcs11Config {
            module: SOFTHSM_MODULE.into(),
            token_label: label.into(),
            pin_file,
        },
    })
}
