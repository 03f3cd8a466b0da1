#!/usr/bin/env bash
# Side by side: the guest workloads (scripts/guest/guest/workloads.sh) on a share served by boxfsd
# (PassthroughFs, unprivileged) and by virtiofsd (root), same guest, same kernel, same root.
#
#   scripts/bench-workloads.sh [--full] [--runs N] [--out FILE] [--sizes FILES,TX,BIGDIR,PYMODS]
#
#   --full     the issue's sizes: 20,000 files in 2,000 dirs, 2,000 transactions per writer,
#              100,000-entry directory, 2,000 Python modules (default: the CI sizes of
#              boxfsd/tests/guest_workloads.rs: 1,000 / 50 / 5,000 / 200)
#   --sizes    other sizes, e.g. 500,50,2000,100
#   --runs N   runs per daemon (default 3), alternating which daemon goes first, medians reported
#   --out FILE also write the table (markdown) to FILE
#
# Each run boots the workload guest (root: boxfsd overlay of the Debian userland over memfs:1G,
# the same for both) with a second device serving a fresh tmpfs directory: boxfsd --shared-dir
# (as uid 65534 when run as root) or virtiofsd --sandbox=none --cache=auto --xattr (as root).
# Both --cache auto. The workloads run on that share only (target "passthrough").
#
# Columns: median seconds per step, ratio = virtiofsd / boxfs (> 1: boxfs faster), and the
# guest's interrupt count of the share's request queue during the step (a proxy for round trips:
# boxfsd exposes only a total request counter in the library's DeviceStats, no per-step or
# per-opcode count through the daemon, and virtiofsd none).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"
FULL=0
RUNS=3
OUT=""
CUSTOM=""
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1; shift ;;
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --sizes) CUSTOM="$2"; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "bench-workloads.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-workloads.sh: run as root (virtiofsd as root, a tmpfs per run)" >&2; exit 2; }
VIRTIOFSD="$(command -v virtiofsd || true)"
[ -n "$VIRTIOFSD" ] || { echo "bench-workloads.sh: no virtiofsd (scripts/guest/install-deps.sh --with-virtiofsd)" >&2; exit 2; }

if [ "$FULL" = 1 ]; then
    SIZES=(--param wl_files=20000 --param wl_tx=2000 --param wl_bigdir=100000 --param wl_pymods=2000)
    MEM=2048M; TIMEOUT=7200; SIZE_NAME="full (files=20000 tx=2000 bigdir=100000 pymods=2000)"
elif [ -n "$CUSTOM" ]; then
    IFS=, read -r f t b p <<< "$CUSTOM"
    SIZES=(--param wl_files="$f" --param wl_tx="$t" --param wl_bigdir="$b" --param wl_pymods="$p")
    MEM=1536M; TIMEOUT=3600; SIZE_NAME="files=$f tx=$t bigdir=$b pymods=$p"
else
    SIZES=(--param wl_files=1000 --param wl_tx=50 --param wl_bigdir=5000 --param wl_pymods=200)
    MEM=1536M; TIMEOUT=2400; SIZE_NAME="CI (files=1000 tx=50 bigdir=5000 pymods=200)"
fi

echo "bench-workloads: building boxfsd (release) and the userland" >&2
cargo build -q --release -p boxfsd
BOXFSD="${CARGO_TARGET_DIR:-$REPO/target}/release/boxfsd"
ROOTFS="$(scripts/guest/build-userland.sh)"

WORK="$(mktemp -d /tmp/boxfs-bench-wl.XXXXXX)"
chmod 0755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    umount -l "$WORK"/share-* 2>/dev/null || true
}
trap cleanup EXIT
cp "$BOXFSD" "$WORK/boxfsd"; chmod 0755 "$WORK/boxfsd"
RESULTS="$WORK/results.txt"
: > "$RESULTS"

wait_socket() { for _ in $(seq 1 300); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }

one_run() { # DAEMON RUN
    local daemon=$1 run=$2 dir="$WORK/$1-$2"
    mkdir -p "$dir" "$WORK/share-$daemon-$run"
    local share="$WORK/share-$daemon-$run"
    mount -t tmpfs -o size=4G,mode=0755 bench-wl "$share"
    chown 65534:65534 "$dir" "$share"
    setpriv --reuid 65534 --regid 65534 --clear-groups "$WORK/boxfsd" --socket-path "$dir/root.sock" \
        --lower "$ROOTFS" --upper memfs:1G --cache auto --tag root > "$dir/root.log" 2>&1 &
    local rpid=$!; PIDS+=("$rpid")
    local spid
    if [ "$daemon" = boxfs ]; then
        setpriv --reuid 65534 --regid 65534 --clear-groups "$WORK/boxfsd" --socket-path "$dir/pt.sock" \
            --shared-dir "$share" --cache auto --tag pt > "$dir/pt.log" 2>&1 &
        spid=$!
    else
        "$VIRTIOFSD" --socket-path "$dir/pt.sock" --shared-dir "$share" --sandbox=none --cache=auto \
            --xattr > "$dir/pt.log" 2>&1 &
        spid=$!
    fi
    PIDS+=("$spid")
    wait_socket "$dir/root.sock" && wait_socket "$dir/pt.sock" || { echo "bench-workloads: a daemon did not start ($dir)" >&2; return 1; }
    scripts/guest/run-guest.sh --rootfs "$ROOTFS" --socket "$dir/root.sock" --tag root \
        --extra-share "$dir/pt.sock,pt" --scripts workloads --mem "$MEM" --timeout "$TIMEOUT" --quiet \
        --param wl_targets=passthrough:pt "${SIZES[@]}" --log "$dir/console.log" 2>"$dir/run-guest.err" || true
    for p in $rpid $spid; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
    done
    umount -l "$share" || true
    rmdir "$share" 2>/dev/null || true
    local fails
    fails=$(grep -c '^FAIL ' "$dir/console.log" || true)
    grep -q '^WORKLOADS-DONE' "$dir/console.log" || fails="$fails+unfinished"
    echo "bench-workloads: run $run $daemon: $(grep -o 'boot-to-shell [0-9.]*s' "$dir/console.log" | head -n1), fails=$fails" >&2
    grep '^FAIL ' "$dir/console.log" | cut -c1-200 | sed 's/^/bench-workloads:   /' >&2 || true
    awk -v d="$daemon" -v r="$run" '$1 == "WL-TIME" {print d, r, $3, $4, $5}' "$dir/console.log" >> "$RESULTS"
}

for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order=(boxfs virtiofsd); else order=(virtiofsd boxfs); fi
    for d in "${order[@]}"; do one_run "$d" "$run"; done
done

TABLE="$WORK/table.md"
python3 - "$RESULTS" "$RUNS" "$SIZE_NAME" > "$TABLE" <<'EOF'
import statistics, sys
path, runs, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = {}
order = []
for line in open(path):
    d, r, step, secs, irq = line.split()
    if step not in order:
        order.append(step)
    data.setdefault((d, step), []).append((float(secs), int(irq)))
print("Sizes: %s; medians of %d alternating runs; ratio = virtiofsd time / boxfs time." % (sizes, runs))
print()
print("| step | boxfs s | virtiofsd s | ratio | boxfs irqs | virtiofsd irqs |")
print("|---|---:|---:|---:|---:|---:|")
tb = tv = 0.0
for s in order:
    b = data.get(("boxfs", s), [])
    v = data.get(("virtiofsd", s), [])
    if not b or not v:
        continue
    mb = statistics.median(x[0] for x in b); mv = statistics.median(x[0] for x in v)
    ib = statistics.median(x[1] for x in b); iv = statistics.median(x[1] for x in v)
    tb += mb; tv += mv
    print("| %s | %.2f | %.2f | %.2f× | %d | %d |" % (s, mb, mv, mv / mb if mb else float("nan"), ib, iv))
print("| **total** | %.2f | %.2f | %.2f× | | |" % (tb, tv, tv / tb if tb else float("nan")))
EOF
cat "$TABLE"
[ -z "$OUT" ] || cp "$TABLE" "$OUT"
echo "bench-workloads: raw results and logs in $WORK" >&2
