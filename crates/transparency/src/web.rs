//! Web builds: the files of a browser-client build named by one manifest, which the operator
//! logs with the auditor. A browser runs whatever code it is served, so the page is only as
//! trustworthy as the build; with the manifest in the log, anyone can check that a deployment
//! serves a logged build (`bkv audit web URL`) and that a logged build is what the source
//! reproduces (`bkv audit web DIR` on a local build).
//!
//! The manifest is `sha256sum` output of the build's files, sorted by name (bytewise): one
//! line per file, `<64 lower-case hex> <two spaces> <name>\n`, so `sha256sum -c` checks a
//! directory against it. Names are 1 to 64 characters of letters, digits, `.`, `_` and `-`,
//! not starting with `.`; at most 64 files. The build ships it as [`MANIFEST_FILE`].

use sha2::{Digest, Sha256};

/// The manifest's file name in a build directory (and at the page's URL).
pub const MANIFEST_FILE: &str = "bkv-web-manifest.txt";
/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 8 * 1024;
/// Most files a build may have.
pub const MAX_FILES: usize = 64;

/// Why a manifest or a build was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebError {
    /// Larger than [`MAX_MANIFEST`].
    #[error("the web manifest is larger than {MAX_MANIFEST} bytes")]
    TooLarge,
    /// More than [`MAX_FILES`] files, or none.
    #[error("a web build has 1 to {MAX_FILES} files")]
    FileCount,
    /// A line is not `<hex>  <name>`, or the lines are not sorted and unique.
    #[error("web manifest line {0}: not `<sha256 hex>  <name>` in name order")]
    Malformed(usize),
    /// A file name outside the allowed characters.
    #[error("web build file name {0:?} is not allowed")]
    Name(String),
}

/// A build's files and their SHA-256, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `(name, SHA-256 of the file)`, sorted by name, names unique.
    pub files: Vec<(String, [u8; 32])>,
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Manifest {
    /// The manifest of `files` (`(name, bytes)`, any order).
    pub fn of_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, WebError> {
        let mut out: Vec<(String, [u8; 32])> = Vec::new();
        for (name, bytes) in files {
            if !valid_name(name) {
                return Err(WebError::Name(name.to_owned()));
            }
            out.push((name.to_owned(), Sha256::digest(bytes).into()));
        }
        out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if out.is_empty() || out.len() > MAX_FILES {
            return Err(WebError::FileCount);
        }
        if out.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(WebError::Malformed(0));
        }
        Ok(Manifest { files: out })
    }

    /// The canonical bytes (what is logged and digested).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::new();
        for (name, h) in &self.files {
            s.push_str(&hex::encode(h));
            s.push_str("  ");
            s.push_str(name);
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Parses canonical manifest bytes; anything else (another order, spacing, case) is
    /// refused, so one build has exactly one manifest and one digest.
    pub fn parse(bytes: &[u8]) -> Result<Self, WebError> {
        if bytes.len() > MAX_MANIFEST {
            return Err(WebError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| WebError::Malformed(1))?;
        let mut files: Vec<(String, [u8; 32])> = Vec::new();
        let body = text.strip_suffix('\n').ok_or(WebError::Malformed(1))?;
        for (i, line) in body.split('\n').enumerate() {
            let bad = || WebError::Malformed(i + 1);
            let (h, name) = line.split_once("  ").ok_or_else(bad)?;
            let mut d = [0u8; 32];
            if h.len() != 64 || h.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(bad());
            }
            hex::decode_to_slice(h, &mut d).map_err(|_| bad())?;
            if !valid_name(name) {
                return Err(WebError::Name(name.to_owned()));
            }
            if files
                .last()
                .is_some_and(|(prev, _)| prev.as_bytes() >= name.as_bytes())
            {
                return Err(bad());
            }
            files.push((name.to_owned(), d));
        }
        if files.len() > MAX_FILES {
            return Err(WebError::FileCount);
        }
        Ok(Manifest { files })
    }
}

/// SHA-256 of the manifest's bytes: what the log and audits name a build by.
pub fn digest(manifest: &[u8]) -> [u8; 32] {
    Sha256::digest(manifest).into()
}

/// The log leaf of a web build: `"bkv-web-leaf-v1\0" || SHA-256(manifest)`.
pub fn leaf_data(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = b"bkv-web-leaf-v1\0".to_vec();
    m.extend_from_slice(digest);
    m
}

/// What the auditor signs for a logged web build.
pub fn auditor_message(namespace: &str, digest: &[u8; 32]) -> Vec<u8> {
    let mut m = b"bkv web build auditor signature v1\0".to_vec();
    m.extend_from_slice(&bkv_wire::encode(&(namespace, digest)));
    m
}

/// What the operator signs to ask the auditor to log a web build.
pub fn append_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = b"bkv auditor append web build v1\0".to_vec();
    m.extend_from_slice(manifest);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_manifest_is_sha256sum_output_in_name_order() {
        let m = Manifest::of_files([("index.html", &b"<p>"[..]), ("app.js", &b""[..])]).unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        // The empty file's SHA-256 first: names sort bytewise.
        let expected = format!(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  app.js\n{}  index.html\n",
            hex::encode(Sha256::digest(b"<p>"))
        );
        assert_eq!(text, expected);
        assert_eq!(Manifest::parse(&m.encode()).unwrap(), m);
    }

    #[test]
    fn anything_but_the_canonical_form_is_refused() {
        let h = "ab".repeat(32);
        for bad in [
            format!("{h}  b.js\n{h}  a.js\n"),
            format!("{h}  a.js\n{h}  a.js\n"),
            format!("{h} a.js\n"),
            format!("{h}  a.js"),
            format!("{}  a.js\n", h.to_uppercase()),
            format!("{h}  ../a.js\n"),
            format!("{h}  .a.js\n"),
            format!("{h}  a js\n"),
            "\n".to_owned(),
        ] {
            assert!(Manifest::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert_eq!(
            Manifest::parse(&vec![b'a'; MAX_MANIFEST + 1]),
            Err(WebError::TooLarge)
        );
        assert!(Manifest::of_files([("a/b", &b""[..])]).is_err());
        assert!(Manifest::of_files(std::iter::empty()).is_err());
    }

    proptest! {
        #[test]
        fn parse_inverts_encode(names in proptest::collection::btree_set("[a-z0-9_-][a-z0-9._-]{0,20}", 1..10)) {
            let files: Vec<(String, Vec<u8>)> =
                names.iter().map(|n| (n.clone(), n.as_bytes().to_vec())).collect();
            let m = Manifest::of_files(files.iter().map(|(n, b)| (n.as_str(), b.as_slice()))).unwrap();
            prop_assert_eq!(Manifest::parse(&m.encode()).unwrap(), m);
        }
    }
}
