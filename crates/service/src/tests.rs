use super::*;

#[test]
fn a_free_loopback_port_is_bindable_and_below_the_ephemeral_range() {
    let port = super::free_loopback_port().unwrap();
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768);
    assert!(port >= 10_000 && port < low, "{port}");
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

/// Ports handed out but not yet bound (a deployment picks all its ports before any node
/// starts) are never handed out again by the same process.
#[test]
fn one_process_never_hands_out_a_port_twice() {
    let ports: Vec<u16> = (0..500)
        .map(|_| super::free_loopback_port().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len());
}

/// Parallel test processes (nextest runs four at a time, each picking a deployment's ports
/// before any node binds them) are never handed the same port: they share one sequence.
/// Four processes taking 2,000 ports each from per-process random starts overlap with
/// probability ~70 %.
#[test]
fn parallel_processes_never_hand_out_the_same_port() {
    const CHILD: &str = "BKV_TEST_PORT_CHILD";
    const NAME: &str = "tests::parallel_processes_never_hand_out_the_same_port";
    if std::env::var_os(CHILD).is_some() {
        let ports: Vec<String> = (0..2_000)
            .map(|_| super::free_loopback_port().unwrap().to_string())
            .collect();
        println!("ports {}", ports.join(" "));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut all = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        // libtest prints the test's name on the same line, before the test's own output.
        let line = text.lines().find_map(|l| l.split_once("ports ")).unwrap().1;
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(ports.len(), 2_000);
        all.extend(ports);
    }
    let distinct: std::collections::BTreeSet<u16> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len());
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Sample {
    name: String,
    limits: Limits,
    log: LogConfig,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Limits {
    idle_timeout_secs: u64,
    nodes: Vec<String>,
}

impl Default for Sample {
    fn default() -> Self {
        Sample {
            name: "default".into(),
            limits: Limits::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout_secs: 30,
            nodes: vec![],
        }
    }
}

fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn defaults_then_file_then_environment() {
    let s: Sample = parse("", "f", "BKV_T", &[]).unwrap();
    assert_eq!(s, Sample::default());
    let s: Sample = parse("[limits]\nidle_timeout_secs = 5\n", "f", "BKV_T", &[]).unwrap();
    assert_eq!(s.limits.idle_timeout_secs, 5);
    assert_eq!(s.name, "default");
    let s: Sample = parse(
        "[limits]\nidle_timeout_secs = 5\n",
        "f",
        "BKV_T",
        &env(&[
            ("BKV_T__LIMITS__IDLE_TIMEOUT_SECS", "7"),
            ("BKV_T__NAME", "123"),
            ("BKV_T__LIMITS__NODES", r#"["a:1", "b:2"]"#),
            ("BKV_T__LOG__FORMAT", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(s.limits.idle_timeout_secs, 7);
    assert_eq!(s.name, "123", "a string field stays a string");
    assert_eq!(s.limits.nodes, vec!["a:1", "b:2"]);
    assert_eq!(s.log.format, LogFormat::Json);
}

#[test]
fn errors_name_the_field() {
    let e = parse::<Sample>(
        "[limits]\nidle_timeout_secs = \"soon\"\n",
        "f.toml",
        "BKV_T",
        &[],
    )
    .unwrap_err();
    match &e {
        ConfigError::Field { field, .. } => assert_eq!(field, "limits.idle_timeout_secs"),
        other => panic!("{other:?}"),
    }
    let e = parse::<Sample>("[limits]\nidle_timeout = 3\n", "f.toml", "BKV_T", &[]).unwrap_err();
    assert!(e.to_string().contains("idle_timeout"), "{e}");
    let e = parse::<Sample>("[log]\nformat = \"xml\"\n", "f.toml", "BKV_T", &[]).unwrap_err();
    assert!(e.to_string().contains("log.format"), "{e}");
    let e = parse::<Sample>("x = [", "f.toml", "BKV_T", &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
    let e = parse::<Sample>("", "f", "BKV_T", &env(&[("BKV_T__LIMITS__BOGUS", "1")])).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = parse::<Sample>("", "f", "BKV_T", &env(&[("BKV_T__NAME__X", "1")])).unwrap_err();
    assert!(matches!(e, ConfigError::Env { .. }), "{e}");
}

#[cfg(feature = "http")]
#[test]
fn tls_files_are_read_and_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.cert.pem()).unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls = TlsConfig {
        cert_file: "c.pem".into(),
        key_file: "k.pem".into(),
    };
    tls.server_config(dir.path()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(&key, other.key_pair.serialize_pem()).unwrap();
    let e = tls.server_config(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tls.key_file"), "{e}");
    std::fs::write(dir.path().join("c.pem"), "not pem").unwrap();
    let e = tls.server_config(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tls.cert_file"), "{e}");
}

#[test]
fn secrets_come_from_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(read_key32(&p)
        .unwrap_err()
        .to_string()
        .contains("chmod 600"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(*read_key32(&p).unwrap(), [0xab; 32]);
    std::fs::write(&p, [7u8; 32]).unwrap();
    assert_eq!(*read_key32(&p).unwrap(), [7; 32]);
    std::fs::write(&p, "zz").unwrap();
    assert!(read_key32(&p).is_err());
}
