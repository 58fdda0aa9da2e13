//! The platform flags `bkv-hsm` and `bkv-core` share, and their inverse: the flags an agent
//! passes the core service it starts ([`platform_args`]).

use bkv_hsm_platform::pkcs11::Pkcs11Config;
use bkv_hsm_platform::PlatformConfig;
use std::ffi::OsString;
use std::path::PathBuf;

/// Which kind of platform holds a node's keys (`--platform`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformKind {
    /// Keys in files under --platform-dir (INSECURE: development only).
    Software,
    /// Keys inside a PKCS#11 token (--pkcs11-module, --token-label, --pin-file).
    Pkcs11,
}

/// Where a node's keys live.
#[derive(Clone, Debug, clap::Args)]
pub struct PlatformFlags {
    /// Where the node's keys live.
    #[arg(long, value_enum, default_value = "software")]
    pub platform: PlatformKind,
    /// Software platform directory (for `bkv-hsm`, default DATA_DIR/platform; put it elsewhere
    /// so that a rolled-back data directory is detected).
    #[arg(long)]
    pub platform_dir: Option<PathBuf>,
    /// PKCS#11 module.
    #[arg(long, default_value = bkv_hsm_platform::SOFTHSM_MODULE)]
    pub pkcs11_module: PathBuf,
    /// Label of this node's PKCS#11 token.
    #[arg(long)]
    pub token_label: Option<String>,
    /// File with the token's user PIN.
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
}

/// A flag the chosen platform needs is missing.
#[derive(Debug, thiserror::Error)]
#[error("--platform {0}")]
pub struct MissingFlag(&'static str);

impl PlatformFlags {
    /// The platform these flags name; a software platform without `--platform-dir` is in
    /// `default_dir` (none: the flag is required).
    pub fn config(&self, default_dir: Option<PathBuf>) -> Result<PlatformConfig, MissingFlag> {
        Ok(match self.platform {
            PlatformKind::Software => PlatformConfig::Software {
                dir: self
                    .platform_dir
                    .clone()
                    .or(default_dir)
                    .ok_or(MissingFlag("software needs --platform-dir"))?,
            },
            PlatformKind::Pkcs11 => PlatformConfig::Pkcs11(Pkcs11Config {
                module: self.pkcs11_module.clone(),
                token_label: self
                    .token_label
                    .clone()
                    .ok_or(MissingFlag("pkcs11 needs --token-label"))?,
                pin_file: self
                    .pin_file
                    .clone()
                    .ok_or(MissingFlag("pkcs11 needs --pin-file"))?,
            }),
        })
    }
}

/// The command-line flags that give `bkv-core` the platform `cfg`.
pub fn platform_args(cfg: &PlatformConfig) -> Vec<OsString> {
    match cfg {
        PlatformConfig::Software { dir } => vec![
            "--platform".into(),
            "software".into(),
            "--platform-dir".into(),
            dir.into(),
        ],
        PlatformConfig::Pkcs11(c) => vec![
            "--platform".into(),
            "pkcs11".into(),
            "--pkcs11-module".into(),
            (&c.module).into(),
            "--token-label".into(),
            (&c.token_label).into(),
            "--pin-file".into(),
            (&c.pin_file).into(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        p: PlatformFlags,
    }

    #[test]
    fn the_flags_an_agent_passes_name_the_platform_it_has() {
        for cfg in [
            PlatformConfig::Software {
                dir: "/keys".into(),
            },
            PlatformConfig::Pkcs11(Pkcs11Config {
                module: "/lib/p11.so".into(),
                token_label: "node-1".into(),
                pin_file: "/run/pin".into(),
            }),
        ] {
            let args = std::iter::once(OsString::from("bkv-core")).chain(platform_args(&cfg));
            let back = Cli::try_parse_from(args).unwrap().p.config(None).unwrap();
            assert_eq!(format!("{back:?}"), format!("{cfg:?}"));
        }
        let e = Cli::try_parse_from(["bkv-core", "--platform", "pkcs11"])
            .unwrap()
            .p
            .config(None)
            .unwrap_err();
        assert!(e.to_string().contains("--token-label"), "{e}");
    }
}
