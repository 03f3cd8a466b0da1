#!/bin/sh
# Guest script (busybox sh): parallel jobs, one pinned to each vCPU, on the share at $BOXFS_MNT.
#
# A Linux 6.11+ guest sends each request on the request queue mapped to the CPU that issues it,
# so with several vCPUs and a device with as many request queues (QEMU 10's
# `vhost-user-fs-pci,num-request-queues=N`), jobs pinned to different CPUs use different queues.
# The host checks the daemon's per-queue counters; this script checks that every job's results
# are right.
#
# Every check prints "PASS <name>" or "FAIL <name> <detail>"; informational lines start with
# "INFO ". The last line is "MULTIQUEUE-DONE pass=N fail=N".
# Optional kernel command line parameters (see /init):
#   boxfs.mq_files=N    files each job creates, checks and removes (default 300).
M=${BOXFS_MNT:-/mnt}
D=$M/multiqueue
N=${BOXFS_MQ_FILES:-300}
P=0
F=0

pass() { echo "PASS $1"; P=$((P + 1)); }
fail() { n=$1; shift; printf 'FAIL %s %s\n' "$n" "$(printf '%s' "$*" | tr '\n' '|')"; F=$((F + 1)); }
eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2' want '$3'"; fi
}

# job CPU: runs on CPU (pinned by taskset), writes its verdict to $D/result-CPU.
job() {
    c=$1
    dir=$D/cpu$c
    errs=0
    mkdir "$dir" || errs=$((errs + 1))
    i=1
    while [ "$i" -le "$N" ]; do
        printf 'cpu%s file %s\n' "$c" "$i" > "$dir/f$i" || errs=$((errs + 1))
        i=$((i + 1))
    done
    # Read everything back, metadata and content, through the share.
    i=1
    while [ "$i" -le "$N" ]; do
        [ "$(cat "$dir/f$i")" = "cpu$c file $i" ] || errs=$((errs + 1))
        [ "$(stat -c %s "$dir/f$i")" = $((${#c} + ${#i} + 10)) ] || errs=$((errs + 1))
        i=$((i + 1))
    done
    count=$(ls "$dir" | wc -l)
    [ "$count" = "$N" ] || errs=$((errs + 1))
    rm -r "$dir" || errs=$((errs + 1))
    [ ! -e "$dir" ] || errs=$((errs + 1))
    # Which CPUs this job was allowed on (taskset's view), for the log.
    mask=$(taskset -p $$ 2>/dev/null | sed 's/.*: //')
    echo "errors=$errs count=$count mask=$mask" > "$D/result-$c"
}
if [ "${1:-}" = --job ]; then
    job "$2"
    exit 0
fi

CPUS=$(nproc)
echo "INFO multiqueue on $M: $CPUS CPUs online ($(cat /sys/devices/system/cpu/online)), $N files per job"
[ "$CPUS" -ge 2 ] || fail mq_cpus "only $CPUS CPU online: give the guest -smp 2 or more"
rm -rf "$D" 2>/dev/null
mkdir -p "$D" || { fail mq_mkdir "cannot create $D"; echo "MULTIQUEUE-DONE pass=$P fail=$F"; exit 1; }


t0=$(cut -d' ' -f1 /proc/uptime)
pids=""
c=0
while [ "$c" -lt "$CPUS" ]; do
    # Each job is a shell of its own pinned to CPU c (busybox taskset).
    taskset -c "$c" sh "$0" --job "$c" &
    pids="$pids $!"
    c=$((c + 1))
done
for p in $pids; do wait "$p"; done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "INFO multiqueue: $CPUS jobs in $(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}')s"

c=0
while [ "$c" -lt "$CPUS" ]; do
    r=$(cat "$D/result-$c" 2>/dev/null)
    echo "INFO multiqueue job cpu$c: ${r:-no result}"
    case "$r" in
        "errors=0 count=$N "*) pass "mq_job_cpu$c" ;;
        *) fail "mq_job_cpu$c" "${r:-no result file}" ;;
    esac
    c=$((c + 1))
done
# Both jobs wrote the same names in their own directories: nothing may have crossed over.
rm -f "$D"/result-*
eq mq_cleanup "$(ls -A "$D" | wc -l)" 0
rmdir "$D" || fail mq_rmdir "cannot remove $D"
echo "MULTIQUEUE-DONE pass=$P fail=$F"
