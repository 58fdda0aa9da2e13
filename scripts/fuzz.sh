#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ through cargo-afl (stable toolchain).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each target (default: all of bkv_fuzz_targets::TARGETS) for SECONDS
# (default 600), BKV_FUZZ_JOBS at a time (default: number of cores), starting
# from the committed corpus plus the seeds. Afterwards it minimises each
# queue into fuzz/corpus/<target>/ (commit it: CI replays it), copies any
# crash to fuzz/regressions/<target>/ (commit it with the fix: CI replays
# it too), prints execs/s and coverage per target, and exits non-zero if a
# target crashed or hung.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
all=(node_frame vault_session transparency backup client_files token node_storage)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
jobs="${BKV_FUZZ_JOBS:-$(nproc)}"

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked
fi
# cargo-afl builds AFL++ once per toolchain.
afl_fuzz() { compgen -G "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz" | head -1; }
[ -n "$(afl_fuzz)" ] || cargo afl config --build
aflbin="$(dirname "$(afl_fuzz)")"
(cd fuzz && cargo afl build --release)
bin="$PWD/fuzz/target/release/bkv-fuzz"
out="$PWD/fuzz/out"
mkdir -p "$out"
rm -rf "$out/seeds"
BKV_FUZZ_WRITE_SEEDS="$out/seeds" "$bin"

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1
run_one() {
    local t="$1" secs="$2" bin="$3" out="$4"
    local in="$out/in-$t"
    rm -rf "$in" "$out/$t"
    mkdir -p "$in"
    cp "$out/seeds/$t/"* "$in/" 2>/dev/null || true
    cp fuzz/corpus/"$t"/* "$in/" 2>/dev/null || true
    BKV_FUZZ_TARGET="$t" cargo afl fuzz -V "$secs" -i "$in" -o "$out/$t" -- "$bin" \
        >"$out/$t.log" 2>&1 || echo "afl-fuzz for $t exited $? (see $out/$t.log)"
}
export -f run_one
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$secs" "$bin" "$out"

status=0
printf '%-14s %10s %12s %9s %8s %7s %6s\n' target execs/s execs coverage corpus crashes hangs
for t in "${targets[@]}"; do
    st="$out/$t/default/fuzzer_stats"
    if [ ! -f "$st" ]; then
        echo "$t: no stats (did afl-fuzz start? see $out/$t.log)"
        status=1
        continue
    fi
    get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$st"; }
    dur=$(( $(get last_update) - $(get start_time) ))
    [ "$dur" -gt 0 ] || dur=1
    printf '%-14s %10s %12s %9s %8s %7s %6s\n' "$t" "$(( $(get execs_done) / dur ))" \
        "$(get execs_done)" "$(get bitmap_cvg)" "$(get corpus_count)" \
        "$(get saved_crashes)" "$(get saved_hangs)"
    # Minimised queue becomes the committed corpus.
    rm -rf "$out/cmin-$t"
    # afl-cmin.bash: the Python afl-cmin of AFL++ 4.40 finds no tuples in
    # cargo-afl's persistent-mode binaries.
    if BKV_FUZZ_TARGET="$t" AFL_PATH="$aflbin" PATH="$aflbin:$PATH" "$aflbin/afl-cmin.bash" \
        -i "$out/$t/default/queue" -o "$out/cmin-$t" -- "$bin" >"$out/cmin-$t.log" 2>&1 \
        && compgen -G "$out/cmin-$t/*" >/dev/null; then
        rm -rf "fuzz/corpus/$t"
        mkdir -p "fuzz/corpus/$t"
        for f in "$out/cmin-$t"/*; do
            cp "$f" "fuzz/corpus/$t/$(sha256sum "$f" | cut -c1-16)"
        done
    else
        echo "$t: corpus minimisation failed (see $out/cmin-$t.log); corpus left as it was"
    fi
    for kind in crashes hangs; do
        for f in "$out/$t/default/$kind"/id:*; do
            [ -f "$f" ] || continue
            mkdir -p "fuzz/regressions/$t"
            cp "$f" "fuzz/regressions/$t/$kind-$(sha256sum "$f" | cut -c1-16)"
            status=1
        done
    done
done
[ "$status" -eq 0 ] || echo "findings saved under fuzz/regressions/: fix them, keep the files (CI replays them)"
exit "$status"
