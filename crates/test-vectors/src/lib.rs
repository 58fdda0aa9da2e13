//! Test vectors for every stored or signed bkv format, kept in `tests/vectors/` at the repository
//! root (one directory per format, an `index.json` naming every file and what must happen to it).
//!
//! Two readers check every vector: the bkv library itself, and [`spec`], an independent reader
//! written from `docs/formats.md` and `docs/auditor-api.md` without calling the library. When the
//! documentation, the code and the committed bytes disagree, a test fails, so none of the three can
//! drift from the others silently. `examples/generate.rs` writes the vectors; regenerate only when
//! a format version changes, and keep the old files as rejected cases.
//!
//! This crate is for tests only: it must never be a dependency of a shipped binary.

#![forbid(unsafe_code)]
#![deny(unreachable_pub, unnameable_types, missing_docs)]

pub mod spec;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The formats with vectors, each a directory under `tests/vectors/`.
pub const FORMATS: &[&str] = &[
    "backup-file",
    "protector-manifest",
    "sealed-value",
    "platform-statement",
    "bundle",
    "checkpoint",
    "recovery-key",
    "move-ticket",
    "log-entry",
    "snapshot",
    "core-boundary",
];

/// `tests/vectors/` in the repository.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// `tests/vectors/<format>/index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// The format's name, one of [`FORMATS`] (its directory's name).
    pub format: String,
    /// Where the format is specified (a file and section in this repository).
    pub doc: String,
    /// Inputs every case shares (keys in hex, names, times), unless a case overrides them.
    pub inputs: BTreeMap<String, String>,
    /// Every vector file of the format.
    pub cases: Vec<Case>,
}

/// One vector file in an [`Index`] and what must happen to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The vector's file name in the format's directory.
    pub file: String,
    /// What the vector is and why it must be accepted or rejected.
    pub comment: String,
    /// Whether the library accepts it.
    pub valid: bool,
    /// For rejected vectors: the start of the library error's `Debug` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the independent reader of the documented format accepts it. It checks what the
    /// bytes say on their own; a few rejections depend on what a client saw before (a rolled-back
    /// log, an older epoch), which only the library's stateful check can see.
    pub spec_valid: bool,
    /// Inputs for this case only (override [`Index::inputs`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// What a valid vector decodes to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expect: BTreeMap<String, String>,
}

impl Index {
    /// An input of `case`: its own parameter, else the shared one.
    pub fn input<'a>(&'a self, case: &'a Case, name: &str) -> Option<&'a str> {
        case.params
            .get(name)
            .or_else(|| self.inputs.get(name))
            .map(String::as_str)
    }
}

/// The deterministic plaintext of the backup vectors: byte `i` is `i * 7 + 3 (mod 251)`.
pub fn backup_plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) % 251) as u8).collect()
}
