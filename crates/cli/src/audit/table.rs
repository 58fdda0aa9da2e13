//! The human-readable audit report.

use super::*;

pub fn print_table(r: &LogReport) {
    println!(
        "auditor {}  log {}  size {}  root {}",
        r.auditor, r.origin, r.size, r.root
    );
    println!(
        "{:>5} {:>6}  {:<24} {:<18} {:>5}  {:<23} {:<8} change",
        "index", "epoch", "fleet", "noise key", "nodes", "valid (unix)", "evidence"
    );
    for e in &r.epochs {
        println!(
            "{:>5} {:>6}  {:<24} {:<18} {:>5}  {:<23} {:<8} {}",
            e.index,
            e.epoch,
            e.fleet_id,
            format!("{}…", e.noise_key.get(..16).unwrap_or(&e.noise_key)),
            e.node_keys,
            format!("{}..{}", e.not_before, e.not_after),
            e.evidence
                .map(|i| format!("#{i}"))
                .unwrap_or_else(|| "none".into()),
            e.change
        );
        if !e.previous.is_empty() {
            println!(
                "{:>14}  also serving (rotation): {}",
                "",
                e.previous.join(", ")
            );
        }
    }
    for w in &r.web {
        println!(
            "web build at index {}: manifest {}…  {} files",
            w.index,
            w.digest.get(..16).unwrap_or(&w.digest),
            w.files
        );
    }
    for e in &r.evidence {
        println!(
            "evidence at index {}: fleet {}  digest {}…  {} nodes  bkv-core {}…  commit {}  witnesses {}",
            e.index,
            e.fleet_id,
            e.digest.get(..16).unwrap_or(&e.digest),
            e.nodes,
            e.binary_sha256.get(..16).unwrap_or(&e.binary_sha256),
            e.source_commit.get(..12).unwrap_or(&e.source_commit),
            e.witnesses.join(", ")
        );
    }
    if !r.members.is_empty() {
        println!("membership changes (each node's signed platform statement):");
        println!(
            "{:>5}  {:<24} {:<6} {:>4}  {:<18} {:<8} {:<18} {:<8} token",
            "index",
            "fleet",
            "change",
            "node",
            "identity key",
            "platform",
            "bkv-core sha256",
            "evidence"
        );
        for m in &r.members {
            let short = |s: &str| format!("{}…", s.get(..16).unwrap_or(s));
            println!(
                "{:>5}  {:<24} {:<6} {:>4}  {:<18} {:<8} {:<18} {:<8} {}",
                m.index,
                m.fleet_id,
                m.change,
                m.node_id,
                short(&m.identity_key),
                m.platform.as_deref().unwrap_or("-"),
                m.binary_sha256
                    .as_deref()
                    .map(short)
                    .unwrap_or_else(|| "-".into()),
                m.evidence
                    .map(|i| format!("#{i}"))
                    .unwrap_or_else(|| "none".into()),
                m.token.as_deref().unwrap_or("-"),
            );
        }
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!("verified: every digest, auditor signature, operator signature, platform statement, evidence transcript and witness signature, inclusion proof and consistency proof");
}
