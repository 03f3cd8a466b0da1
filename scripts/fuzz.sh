#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one at a time with one
# worker, starting from the corpus kept in fuzz/corpus/<target>/. Fails on any crash, leak,
# timeout or out-of-memory (the reproducer is left in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS]
#
# Installs cargo-fuzz (cargo install --locked) and the nightly toolchain (rustup) when missing.
# New corpus entries found during the run go to a scratch directory, so the kept corpus only
# changes when someone merges them on purpose (cargo +nightly fuzz cmin, see fuzz/README.md).
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
SECONDS_EACH="${1:-60}"
case "$SECONDS_EACH" in
    ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a number, not '$SECONDS_EACH'" >&2; exit 2 ;;
esac
TARGETS=(fuse_server descriptor_chains stateful_model)

if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal </dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked </dev/null
fi

cd fuzz
cargo +nightly fuzz build -O
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
for t in "${TARGETS[@]}"; do
    printf '\n==> fuzz %s for %s s\n' "$t" "$SECONDS_EACH" >&2
    mkdir -p "$SCRATCH/$t" "corpus/$t"
    # The first directory receives new inputs; the kept corpus is only read.
    if ! cargo +nightly fuzz run -O "$t" "$SCRATCH/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -workers=1 -jobs=1 -rss_limit_mb=4096 \
        -timeout=30 -print_final_stats=1 2>"$SCRATCH/$t.log"; then
        tail -n 80 "$SCRATCH/$t.log" >&2
        echo "fuzz.sh: $t failed; reproducer in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' \
        "$SCRATCH/$t.log" >&2 || true
done
printf '\n==> fuzzing: no crash in %s targets x %s s\n' "${#TARGETS[@]}" "$SECONDS_EACH" >&2
