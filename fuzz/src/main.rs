//! One AFL++ binary for every target; `BKV_FUZZ_TARGET` names the target
//! (see `bkv_fuzz_targets::TARGETS`). With `BKV_FUZZ_WRITE_SEEDS=DIR` it
//! writes every target's seed inputs to `DIR/<target>/` instead.

use std::path::Path;

fn main() {
    if let Some(dir) = std::env::var_os("BKV_FUZZ_WRITE_SEEDS") {
        for (name, _) in bkv_fuzz_targets::TARGETS {
            let d = Path::new(&dir).join(name);
            std::fs::create_dir_all(&d).expect("create seed dir");
            for (i, s) in bkv_fuzz_targets::seeds::seeds(name).iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i:02}")), s).expect("write seed");
            }
        }
        return;
    }
    let name = std::env::var("BKV_FUZZ_TARGET").unwrap_or_default();
    let Some((_, target)) = bkv_fuzz_targets::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = bkv_fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("set BKV_FUZZ_TARGET to one of: {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| {
        target(data);
    });
}
