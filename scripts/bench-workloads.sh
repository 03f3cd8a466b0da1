#!/usr/bin/env bash
# Side by side: the guest workloads (scripts/guest/guest/workloads.sh) on a share served by boxfsd
# (PassthroughFs, unprivileged) and by virtiofsd (root), same guest, same kernel, same root.
#
#   scripts/bench-workloads.sh [--full] [--runs N] [--out FILE] [--sizes FILES,TX,BIGDIR,PYMODS]
#
#   --full     the issue's sizes: 20,000 files in 2,000 dirs, 2,000 transactions per writer,
#              100,000-entry directory, 2,000 Python modules (default: the CI sizes of
#              boxfsd/tests/guest_workloads.rs: 500 / 20 / 2,000 / 100)
#   --sizes    other sizes, e.g. 500,50,2000,100
#   --runs N   runs per daemon (default 3), alternating which daemon goes first, medians reported
#   --out FILE also write the table (markdown) to FILE
#   --boxfsd PATH   run this boxfsd binary for the share instead of building one (e.g. an
#              older build, for its request counts)
#   --only boxfs|virtiofsd   run one daemon only (its raw per-step lines, no ratio)
#   --steps a,b  only these steps (boxfs.wl_steps), e.g. the opt-in metadata job
#              --steps meta_untar,meta_stat,meta_rm with --sizes 20000,20,2000,100
#
# Each run boots the workload guest (root: boxfsd overlay of the Debian userland over memfs:1G,
# the same for both) with a second device serving a fresh tmpfs directory: boxfsd --shared-dir
# (as uid 65534 when run as root) or virtiofsd --sandbox=none --cache=auto --xattr (as root).
# Both --cache auto. The workloads run on that share only (target "passthrough").
#
# Columns: median seconds per step, ratio = virtiofsd / boxfs (> 1: boxfs faster), boxfsd's
# requests per step (median; its per-opcode counters, read with SIGUSR2 at the guest's
# WL-MARK lines while the guest pauses 1 s before and after each step; virtiofsd has no
# counters), the main opcodes of those requests, and the guest's interrupt count of the share's
# request queue during the step for both daemons (a proxy for round trips).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
export PATH="$HOME/.cargo/bin:$PATH"
FULL=0
RUNS=3
OUT=""
CUSTOM=""
SHARE_BOXFSD=""
ONLY=""
STEPS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1; shift ;;
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --sizes) CUSTOM="$2"; shift 2 ;;
        --boxfsd) SHARE_BOXFSD="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --steps) STEPS=(--param wl_steps="$2"); shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
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
    SIZES=(--param wl_files=500 --param wl_tx=20 --param wl_bigdir=2000 --param wl_pymods=100)
    MEM=1536M; TIMEOUT=2400; SIZE_NAME="CI (files=500 tx=20 bigdir=2000 pymods=100)"
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
cp "${SHARE_BOXFSD:-$BOXFSD}" "$WORK/boxfsd-share"; chmod 0755 "$WORK/boxfsd-share"
RESULTS="$WORK/results.txt"
: > "$RESULTS"

# Sends SIGUSR2 to boxfsd (pid $2) once for every WL-MARK line that appears in the live console
# log $1, until the process $3 (the guest) ends: boxfsd then logs its request counters.
watch_marks() {
    local raw=$1 pid=$2 guest=$3 seen=0 n
    while kill -0 "$guest" 2>/dev/null; do
        n=$(grep -c '^WL-MARK' "$raw" 2>/dev/null || true)
        n=${n:-0}
        while [ "$seen" -lt "$n" ]; do
            kill -USR2 "$pid" 2>/dev/null || true
            seen=$((seen + 1))
            sleep 0.2
        done
        sleep 0.05
    done
}

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
        setpriv --reuid 65534 --regid 65534 --clear-groups "$WORK/boxfsd-share" --socket-path "$dir/pt.sock" \
            --shared-dir "$share" --cache auto --tag pt > "$dir/pt.log" 2>&1 &
        spid=$!
    else
        "$VIRTIOFSD" --socket-path "$dir/pt.sock" --shared-dir "$share" --sandbox=none --cache=auto \
            --xattr > "$dir/pt.log" 2>&1 &
        spid=$!
    fi
    PIDS+=("$spid")
    wait_socket "$dir/root.sock" && wait_socket "$dir/pt.sock" || { echo "bench-workloads: a daemon did not start ($dir)" >&2; return 1; }
    # Both daemons' guests pause 1 s around each step (outside its time); boxfsd's counters
    # are read during the pauses.
    local pause=(--param wl_pause=1)
    scripts/guest/run-guest.sh --rootfs "$ROOTFS" --socket "$dir/root.sock" --tag root \
        --extra-share "$dir/pt.sock,pt" --scripts workloads --mem "$MEM" --timeout "$TIMEOUT" --quiet \
        --param wl_targets=passthrough:pt "${SIZES[@]}" "${STEPS[@]}" "${pause[@]}" --log "$dir/console.log" \
        2>"$dir/run-guest.err" &
    local gpid=$!
    local wpid=""
    if [ "$daemon" = boxfs ]; then
        watch_marks "$dir/console.log.raw" "$spid" "$gpid" &
        wpid=$!
    fi
    wait "$gpid" || true
    [ -z "$wpid" ] || wait "$wpid" 2>/dev/null || true
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
    # Per step: daemon run step seconds irqs requests opcode=count,... (requests: boxfsd's
    # counter deltas between the step's begin and end marks; "-" for virtiofsd).
    python3 - "$daemon" "$run" "$dir/console.log" "$dir/pt.log" >> "$RESULTS" <<'PYEOF'
import re, sys
daemon, run, console, log = sys.argv[1:5]
marks = [l.split()[2:4] for l in open(console, errors="replace") if l.startswith("WL-MARK ")]
counts = []
for l in open(log, errors="replace"):
    m = re.search(r"request counts: (.*)$", l)
    if m:
        counts.append(dict((k, int(v)) for k, v in (f.split("=") for f in m.group(1).split())))
per_step = {}
if daemon == "boxfs" and len(counts) == len(marks):
    for i in range(0, len(marks) - 1):
        (kind, step), (kind2, step2) = marks[i], marks[i + 1]
        if kind == "begin" and kind2 == "end" and step == step2:
            a, b = counts[i], counts[i + 1]
            d = {k: b.get(k, 0) - a.get(k, 0) for k in b}
            ops = sorted(((v, k) for k, v in d.items() if k not in ("total", "served_us") and v > 0), reverse=True)
            ops.append((d.get("served_us", 0), "served_us"))
            per_step[step] = (d.get("total", 0), ",".join("%s=%d" % (k, v) for v, k in ops))
elif daemon == "boxfs":
    print("bench-workloads: %d marks but %d counter lines: no request counts" % (len(marks), len(counts)), file=sys.stderr)
for l in open(console, errors="replace"):
    f = l.split()
    if len(f) >= 5 and f[0] == "WL-TIME":
        reqs, ops = per_step.get(f[2], ("-", "-"))
        print(daemon, run, f[2], f[3], f[4], reqs, ops or "-")
PYEOF
}

for run in $(seq 1 "$RUNS"); do
    if [ $((run % 2)) = 1 ]; then order=(boxfs virtiofsd); else order=(virtiofsd boxfs); fi
    for d in "${order[@]}"; do
        [ -z "$ONLY" ] || [ "$ONLY" = "$d" ] || continue
        one_run "$d" "$run"
    done
done

TABLE="$WORK/table.md"
if [ -n "$ONLY" ]; then
    cp "$RESULTS" "$TABLE"
    cat "$TABLE"
    [ -z "$OUT" ] || cp "$TABLE" "$OUT"
    echo "bench-workloads: raw results and logs in $WORK" >&2
    exit 0
fi
python3 - "$RESULTS" "$RUNS" "$SIZE_NAME" > "$TABLE" <<'EOF'
import statistics, sys
path, runs, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = {}
order = []
reqs = {}
for line in open(path):
    d, r, step, secs, irq, nreq, ops = line.split()
    if step not in order:
        order.append(step)
    data.setdefault((d, step), []).append((float(secs), int(irq)))
    if nreq != "-":
        reqs.setdefault(step, []).append((int(nreq), ops))
def req_cols(step):
    rs = reqs.get(step)
    if not rs:
        return "", ""
    n = statistics.median_low([x[0] for x in rs])
    ops = next(o for c, o in rs if c == n)
    return str(n), " ".join(ops.split(",")[:4])
print("Sizes: %s; medians of %d alternating runs; ratio = virtiofsd time / boxfs time." % (sizes, runs))
print()
print("| step | boxfs s | virtiofsd s | ratio | boxfs requests | main opcodes (boxfs) | boxfs irqs | virtiofsd irqs |")
print("|---|---:|---:|---:|---:|---|---:|---:|")
tb = tv = 0.0
for s in order:
    b = data.get(("boxfs", s), [])
    v = data.get(("virtiofsd", s), [])
    if not b or not v:
        continue
    mb = statistics.median(x[0] for x in b); mv = statistics.median(x[0] for x in v)
    ib = statistics.median(x[1] for x in b); iv = statistics.median(x[1] for x in v)
    tb += mb; tv += mv
    n, ops = req_cols(s)
    print("| %s | %.2f | %.2f | %.2f× | %s | %s | %d | %d |" % (s, mb, mv, mv / mb if mb else float("nan"), n, ops, ib, iv))
print("| **total** | %.2f | %.2f | %.2f× | | | | |" % (tb, tv, tv / tb if tb else float("nan")))
EOF
cat "$TABLE"
[ -z "$OUT" ] || cp "$TABLE" "$OUT"
echo "bench-workloads: raw results and logs in $WORK" >&2
