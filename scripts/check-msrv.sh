#!/usr/bin/env bash
# Checks the declared minimum supported Rust version (`rust-version` in Cargo.toml).
#
#   scripts/check-msrv.sh
#
# With that toolchain installed (`rustup toolchain list` shows it), builds the library and the
# daemon with it. Without it (rustup's toolchain server is not reachable from every machine), it
# checks what can be checked with the current toolchain: every crate of the workspace declares
# the version, no dependency in the build graph declares a newer `rust-version`, and clippy's
# `incompatible_msrv` lint (run by scripts/test.sh with -D warnings) finds no std API newer
# than it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$msrv" ] || { echo "check-msrv: no rust-version in Cargo.toml" >&2; exit 1; }
if rustup toolchain list 2>/dev/null | grep -q "^$msrv"; then
    echo "check-msrv: building with Rust $msrv"
    cargo "+$msrv" check --workspace --locked
    exit 0
fi
echo "check-msrv: Rust $msrv is not installed; checking the dependency graph against it"
cargo metadata --format-version 1 --locked --filter-platform "$(rustc -vV | sed -n "s/^host: //p")" | python3 -c '
import json, sys
msrv = tuple(int(x) for x in sys.argv[1].split("."))
meta = json.load(sys.stdin)
pkgs = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
bad, seen = [], set()
stack = [m for m in meta["workspace_members"]]
for m in stack:
    rv = pkgs[m].get("rust_version")
    if rv is None:
        bad.append(pkgs[m]["name"] + ": no rust-version declared")
while stack:
    i = stack.pop()
    if i in seen:
        continue
    seen.add(i)
    p = pkgs[i]
    rv = p.get("rust_version")
    if rv and tuple(int(x) for x in rv.split(".")[:3]) > msrv + (0,) * (3 - len(msrv)):
        bad.append("%s %s needs Rust %s" % (p["name"], p["version"], rv))
    for d in nodes[i]["deps"]:
        if any(k["kind"] in (None, "build") for k in d["dep_kinds"]):
            stack.append(d["pkg"])
if bad:
    print("check-msrv: above the declared rust-version " + sys.argv[1] + ":\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"check-msrv: {len(seen)} crates in the build graph, none needs more than Rust {sys.argv[1]}")
' "$msrv"
