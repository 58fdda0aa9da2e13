//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) and
//! every saved crash reproducer (`fuzz/regressions/<target>/`) through its
//! target: the fuzzers' findings stay fixed without a fuzzer in CI.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn corpora_replay_without_findings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut total = 0;
    for (name, target) in bkv_fuzz_targets::TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(
            corpus.len() >= 10,
            "fuzz/corpus/{name} holds {} files; run scripts/fuzz.sh to grow it",
            corpus.len()
        );
        for path in corpus
            .iter()
            .chain(files(&root.join("regressions").join(name)).iter())
        {
            let data = std::fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} fails", path.display());
            total += 1;
        }
    }
    println!("replayed {total} corpus files");
}

#[test]
fn seeds_run_clean_and_the_vault_transcript_registers() {
    for (name, target) in bkv_fuzz_targets::TARGETS {
        let seeds = bkv_fuzz_targets::seeds::seeds(name);
        assert!(seeds.len() >= 3, "{name} has {} seeds", seeds.len());
        for s in &seeds {
            target(s);
        }
    }
}
