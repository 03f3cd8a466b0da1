#!/usr/bin/env bash
# The whole boxfs test suite: one command on a fresh machine (README, `.ci/run`).
#
#   scripts/test.sh            everything: install what is missing, fmt, clippy, the macOS
#                              check, every test, a short fuzz run of every fuzz target, and
#                              the real-guest end-to-end tests
#   scripts/test.sh --no-guest skip the QEMU guest tests (quick local loop)
#
# Installs what it needs when missing (non-interactive): the rustfmt/clippy components and the
# aarch64-apple-darwin std (rustup), the Debian packages and pjdfstest the guest test uses
# (scripts/guest/install-deps.sh). Exits non-zero on the first failing step.
set -euo pipefail

cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
GUEST=1
for arg in "$@"; do
    case "$arg" in
        --no-guest) GUEST=0 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*" >&2; }
START=$(date +%s)

step "toolchain components"
if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt </dev/null
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy </dev/null
    rustup target list --installed | grep -qx aarch64-apple-darwin \
        || rustup target add aarch64-apple-darwin </dev/null
fi

if [ "$GUEST" = 1 ]; then
    step "guest test dependencies (QEMU, kernel, busybox, pjdfstest)"
    scripts/guest/install-deps.sh
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy: every crate, default and all features, and the library for macOS"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo clippy -p boxfs --no-default-features -- -D warnings
cargo clippy -p boxfs --target aarch64-apple-darwin --no-default-features -- -D warnings

step "cargo doc (warnings are errors: broken links, private links)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

step "cargo check --target aarch64-apple-darwin --no-default-features (backends on macOS)"
cargo check -p boxfs --target aarch64-apple-darwin --no-default-features

step "minimum supported Rust version: declared, and no dependency needs a newer one"
scripts/check-msrv.sh

step "packaging: cargo publish --dry-run of every crate (builds each from its package)"
# The dry run publishes each crate into a temporary registry under the target directory and verifies
# the next crate against it. Cargo takes a crate of a registry as immutable: it reuses an extraction
# in $CARGO_HOME/registry/src/-<hash of the registry's path>/ and a build in the target directory,
# so with a fixed path (a CI that clones to the same place every time) boxfsd was verified against
# the library as an earlier run had packaged it. A target directory of its own per run gives the
# temporary registry a new path; the extractions of earlier runs are removed (local registries
# only: their directories start with "-").
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rm -rf "$cargo_home"/registry/src/-*/boxfs-[0-9]* "$cargo_home"/registry/src/-*/boxfsd-[0-9]*
publish_target="$(mktemp -d "${TMPDIR:-/tmp}/boxfs-publish.XXXXXX")"
if ! CARGO_TARGET_DIR="$publish_target" cargo publish --workspace --dry-run --locked; then
    rm -rf "$publish_target"
    exit 1
fi
rm -rf "$publish_target" "$cargo_home"/registry/src/-*/boxfs-[0-9]* "$cargo_home"/registry/src/-*/boxfsd-[0-9]*

step "cargo test (unit, doc, integration; benchmarks built and run once as tests)"
cargo test --workspace --all-targets --all-features --no-fail-fast
cargo test --workspace --doc --all-features
# The library as an embedder takes it: the device only, no daemon crates (the README's example
# serves a MemFs this way).
cargo test -p boxfs --doc --no-default-features --features vhost

step "fuzzing: every target for 30 s (scripts/fuzz.sh; a crash fails the run)"
scripts/fuzz.sh 30

if [ "$GUEST" = 1 ]; then
    step "real-guest end-to-end tests (QEMU/TCG, pjdfstest; daemon unprivileged)"
    cargo test -p boxfsd --test guest_e2e -- --ignored --nocapture --test-threads=1
    cargo test -p boxfsd --test guest_migrate -- --ignored --nocapture --test-threads=1
    cargo test -p boxfsd --test guest_workloads -- --ignored --nocapture --test-threads=1
fi

step "all green in $(( $(date +%s) - START )) s"
