//! Services under test: a throwaway PKI for TLS tests, a ready-line reader, an HTTP(S) GET,
//! and free loopback ports to start them on.

use std::path::Path;

/// A free port on 127.0.0.1 below the kernel's ephemeral range (the one implementation, which
/// `bkv-admin dev up` also picks its ports with: see `bkv_service::free_loopback_port`).
pub use bkv_service::free_loopback_port as free_port;

/// Makes a CA and a certificate it issued for 127.0.0.1 and localhost; writes the certificate to
/// `dir/cert.pem` and its key to `dir/key.pem` (mode 0600); returns the CA certificate (PEM).
pub fn pki(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "bkv test CA");
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
        .signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join("cert.pem"), leaf.pem())?;
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(ca.pem())
}

/// Starts `cmd` with its stdout piped and returns the child and its first line (a service's
/// ready line). The child is not killed here: the caller owns it.
pub fn spawn_ready(
    cmd: &mut std::process::Command,
) -> std::io::Result<(std::process::Child, String)> {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    Ok((child, line))
}

/// The value of `key=` in a ready line.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// `GET url` (trusting only the PEM CA `ca`, if given): the status and the body.
pub fn get(url: &str, ca: Option<&str>) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(20));
        if let Some(ca) = ca {
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
        }
        let r = b.build()?.get(url).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    })
}
