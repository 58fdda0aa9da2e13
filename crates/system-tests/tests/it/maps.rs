//! Maps that cannot drift (issue 30, item 6): every crate of the workspace is on README's crate
//! table and on docs/architecture.md's, and every command README's code blocks show exists
//! (each subcommand named after `bkv`, `bkv-admin` or a service binary is listed by that
//! binary's `--help`).

use bkv_testkit::system::{admin_bin, bkv_bin};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo().join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"))
}

#[test]
fn every_crate_is_on_both_maps() {
    let readme = read("README.md");
    let arch = read("docs/architecture.md");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(toml) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let name = toml
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no package name in {}", dir.display()))
            .to_owned();
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !readme.contains(&format!("`crates/{folder}` (`{name}`")) {
            missing.push(format!("README.md: `crates/{folder}` (`{name}`)"));
        }
        if !arch.contains(&format!("| `{name}` |")) {
            missing.push(format!("docs/architecture.md: a `{name}` row"));
        }
    }
    assert!(
        missing.is_empty(),
        "crates missing from the maps: {missing:#?}"
    );
}

/// The subcommands `bin` lists for the subcommand path `path` (its `--help`'s "Commands:").
fn commands(bin: &Path, path: &[String]) -> Vec<String> {
    let out = Command::new(bin).args(path).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{} {path:?} --help failed",
        bin.display()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn is_word(t: &str) -> bool {
    !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !t.starts_with('-')
}

#[test]
fn every_command_the_readme_shows_exists() {
    let readme = read("README.md");
    let bins: BTreeMap<&str, PathBuf> = [("bkv", bkv_bin()), ("bkv-admin", admin_bin())]
        .into_iter()
        .collect();
    // The code blocks' lines, continuations joined, comments dropped, `$B` expanded.
    let mut lines = Vec::new();
    let mut in_code = false;
    let mut pending = String::new();
    for l in readme.lines() {
        if l.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            continue;
        }
        let l = l.split(" #").next().unwrap_or("");
        pending.push_str(l.trim_end().trim_end_matches('\\'));
        pending.push(' ');
        if !l.trim_end().ends_with('\\') {
            lines.push(std::mem::take(&mut pending));
        }
    }
    let mut b = String::new();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in lines {
        if let Some(v) = line.trim().strip_prefix("B=\"") {
            b = v.trim_end().trim_end_matches('"').to_owned();
            continue;
        }
        let line = line.replace("$B", &b);
        for part in line.split('|') {
            let tokens: Vec<&str> = part.split_whitespace().collect();
            let Some(at) = tokens
                .iter()
                .position(|t| bins.contains_key(t.rsplit('/').next().unwrap_or(t)))
            else {
                continue;
            };
            let name = tokens[at].rsplit('/').next().unwrap_or(tokens[at]);
            let bin = &bins[name];
            let mut path: Vec<String> = Vec::new();
            let mut offered = commands(bin, &path);
            for t in &tokens[at + 1..] {
                if !is_word(t) {
                    continue; // an option, or an option's value
                }
                if offered.iter().any(|c| c == t) {
                    path.push((*t).to_owned());
                    offered = commands(bin, &path);
                } else if path.is_empty() && !offered.is_empty() {
                    wrong.push(format!("`{name} {t}` in: {}", part.trim()));
                    break;
                } else {
                    break; // an argument of the command found
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} commands found in README");
    assert!(
        wrong.is_empty(),
        "README shows commands that do not exist: {wrong:#?}"
    );
}
