#!/usr/bin/env bash
# Boot the test guest (QEMU, TCG) against a running vhost-user virtio-fs daemon.
#
#   scripts/guest/run-guest.sh --socket PATH [--tag TAG] [--scripts scenario,pjdfstest]
#                              [--param KEY=VALUE]... [--extra-share SOCKET,TAG]...
#                              [--timeout SECONDS] [--log FILE]
#                              [--initrd FILE] [--kernel FILE] [--mem SIZE] [--smp N]
#                              [--request-queues N] [--qemu PATH] [--qemu-data DIR]...
#                              [--qemu-dir DIR] [--rootfs DIR] [--quiet]
#
#   --socket     the daemon's vhost-user socket (must already exist: the daemon listens, QEMU connects)
#   --tag        virtio-fs tag (default boxfs); must match the daemon's tag
#   --scripts    guest scripts from scripts/guest/guest/ to run, in order (default scenario,pjdfstest)
#   --param      extra kernel command line parameter boxfs.KEY=VALUE (guest scripts see BOXFS_KEY)
#   --extra-share  one more vhost-user-fs device: a running daemon's socket and its tag (repeatable;
#                the guest scripts mount it themselves)
#   --timeout    hard limit for the whole boot, in seconds (default 900); QEMU is killed after it
#   --log        console log (\r stripped); default target/guest/console-<pid>.log
#   --initrd     initramfs; default: built (or taken from the cache) by build-initramfs.sh
#   --kernel     default: the kernel recorded next to the initramfs
#   --mem        guest RAM, shared with the daemon through a memfd (default 1024M)
#   --smp        guest vCPUs (default 1)
#   --request-queues  request queues of the (first) virtio-fs device: QEMU 10's
#                `vhost-user-fs-pci,num-request-queues=N` (default: QEMU's, 1). The daemon must offer
#                at least N (boxfsd --request-queues N); Linux 6.11+ maps them to the vCPUs.
#   --qemu       the QEMU binary (default qemu-system-x86_64 from PATH)
#   --qemu-data  a firmware/option-ROM directory for that QEMU, searched before its built-in ones
#                (QEMU's -L; repeatable)
#   --qemu-dir   a QEMU unpacked by fetch-qemu72.sh: DIR/usr/bin/qemu-system-x86_64 with -L
#                DIR/usr/share/qemu -L DIR/usr/share/seabios (then the host's /usr/share/qemu and
#                /usr/lib/ipxe/qemu), and QEMU_MODULE_DIR=DIR/modules (its own modules: Debian's 7.2
#                builds TCG as one; never the system QEMU's)
#   --quiet      do not copy the console to stdout
#   --rootfs DIR boot with the root filesystem on the first device (the daemon serves DIR, as built
#                by build-userland.sh, typically as an overlay's lower layer): no initramfs, kernel
#                from DIR.kernel unless --kernel, `root=TAG rootfstype=virtiofs rw init=/boxfs/init`
#
# The console log's first line is `run-guest: VMM <the QEMU's --version line>`.
#
# Exit status: 0 when the guest printed its end marker BOXFS-GUEST-DONE, 3 when it did not
# (QEMU failed, the guest hung and hit the timeout, or it panicked), 2 on bad usage.
# The status does not say whether the checks passed: read PASS/FAIL lines from the log.
#
# The QEMU command line (the one to copy into other setups):
#   qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 1024M \
#     -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
#     -chardev socket,id=c0,path=$SOCK -device vhost-user-fs-pci,chardev=c0,tag=$TAG,queue-size=1024 \
#     -kernel /boot/vmlinuz-$VER -initrd $INITRD -nic none -nographic -no-reboot \
#     -append "console=ttyS0 quiet panic=-1 no_timer_check reboot=t boxfs.tag=$TAG boxfs.scripts=scenario,pjdfstest"
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT_DIR="${CARGO_TARGET_DIR:-$REPO/target}/guest"

SOCK=""
TAG=boxfs
SCRIPTS=scenario,pjdfstest
PARAMS=()
EXTRA_SHARES=()
TIMEOUT=900
LOG=""
INITRD=""
KERNEL=""
MEM=1024M
SMP=1
REQUEST_QUEUES=""
QEMU=qemu-system-x86_64
QEMU_DATA=()
QUIET=0
ROOTFS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --socket) SOCK="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --scripts) SCRIPTS="$2"; shift 2 ;;
        --param) PARAMS+=("boxfs.$2"); shift 2 ;;
        --extra-share) EXTRA_SHARES+=("$2"); shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --log) LOG="$2"; shift 2 ;;
        --initrd) INITRD="$2"; shift 2 ;;
        --kernel) KERNEL="$2"; shift 2 ;;
        --mem) MEM="$2"; shift 2 ;;
        --smp) SMP="$2"; shift 2 ;;
        --request-queues) REQUEST_QUEUES="$2"; shift 2 ;;
        --qemu) QEMU="$2"; shift 2 ;;
        --qemu-data) QEMU_DATA+=(-L "$2"); shift 2 ;;
        --qemu-dir)
            QEMU="$2/usr/bin/qemu-system-x86_64"
            # Its own ROMs and BIOS first; the host's iPXE ROMs (NICs) after them.
            QEMU_DATA+=(-L "$2/usr/share/qemu" -L "$2/usr/share/seabios" -L /usr/share/qemu
                        -L /usr/lib/ipxe/qemu)
            export QEMU_MODULE_DIR="$2/modules"
            shift 2 ;;
        --quiet) QUIET=1; shift ;;
        --rootfs) ROOTFS="$2"; shift 2 ;;
        -h|--help) sed -n '2,49p' "$0"; exit 0 ;;
        *) echo "run-guest.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$SOCK" ] || { echo "run-guest.sh: --socket is required" >&2; exit 2; }
case "$SMP" in ''|*[!0-9]*) echo "run-guest.sh: --smp wants a number: $SMP" >&2; exit 2 ;; esac
case "$REQUEST_QUEUES" in *[!0-9]*) echo "run-guest.sh: --request-queues wants a number: $REQUEST_QUEUES" >&2; exit 2 ;; esac
for p in "${PARAMS[@]}"; do
    case "$p" in *' '*|*'"'*) echo "run-guest.sh: --param values cannot contain spaces or quotes: $p" >&2; exit 2 ;; esac
done

mkdir -p "$OUT_DIR"
if [ -n "$ROOTFS" ]; then
    [ -n "$KERNEL" ] || KERNEL="$(cat "$ROOTFS.kernel")"
else
    [ -n "$INITRD" ] || INITRD="$("$HERE/build-initramfs.sh")"
    [ -n "$KERNEL" ] || KERNEL="$(cat "$INITRD.kernel")"
fi
[ -n "$LOG" ] || LOG="$OUT_DIR/console-$$.log"

if [ ! -S "$SOCK" ]; then
    echo "run-guest.sh: $SOCK is not a socket (start the daemon first)" >&2
    exit 3
fi

# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can fail and panic
# ("IO-APIC + timer doesn't work"); reboot=t: a panic resets at once (-no-reboot exits QEMU)
# instead of crawling through reboot methods with an uncalibrated delay loop.
APPEND="console=ttyS0 quiet panic=-1 no_timer_check reboot=t boxfs.tag=$TAG boxfs.scripts=$SCRIPTS ${PARAMS[*]:-}"
[ -z "$ROOTFS" ] || APPEND="$APPEND root=$TAG rootfstype=virtiofs rw init=/boxfs/init"
CMD=("$QEMU" "${QEMU_DATA[@]}"
    -accel tcg -cpu max -smp "$SMP" -m "$MEM"
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on" -numa node,memdev=mem
    -chardev "socket,id=c0,path=$SOCK"
    -device "vhost-user-fs-pci,chardev=c0,tag=$TAG,queue-size=1024${REQUEST_QUEUES:+,num-request-queues=$REQUEST_QUEUES}"
    )
n=1
for share in "${EXTRA_SHARES[@]}"; do
    esock="${share%%,*}"; etag="${share#*,}"
    if [ "$esock" = "$share" ] || [ ! -S "$esock" ]; then
        echo "run-guest.sh: --extra-share $share: expected SOCKET,TAG with a listening socket" >&2
        exit 3
    fi
    CMD+=(-chardev "socket,id=c$n,path=$esock"
          -device "vhost-user-fs-pci,chardev=c$n,tag=$etag,queue-size=1024")
    n=$((n + 1))
done
CMD+=(-kernel "$KERNEL")
[ -n "$ROOTFS" ] || CMD+=(-initrd "$INITRD")
CMD+=(-nic none -nographic -no-reboot
    -append "$APPEND")

echo "run-guest: ${CMD[*]}" >&2
# The console log starts with the VMM's version line, so a test can prove which QEMU it ran.
QEMU_VERSION="$("$QEMU" --version 2>&1 | head -n1)" || true
case "$QEMU_VERSION" in
    "QEMU emulator version "*) ;;
    *) echo "run-guest.sh: $QEMU --version failed: $QEMU_VERSION" >&2; exit 3 ;;
esac
start=$(date +%s.%N)
RAW="$LOG.raw"
echo "run-guest: VMM $QEMU_VERSION" > "$RAW"
# `timeout` puts QEMU in a process group of its own, so a signal to ours would miss it: forward
# TERM/INT/HUP explicitly (the e2e test stops the guest this way when the daemon dies).
timeout --kill-after=10 "$TIMEOUT" "${CMD[@]}" </dev/null >>"$RAW" 2>&1 &
QPID=$!
trap 'kill -TERM "$QPID" 2>/dev/null' TERM INT HUP
if [ "$QUIET" != 1 ]; then
    tail -n +1 -f --pid="$QPID" "$RAW" 2>/dev/null | tr -d '\r' &
fi
set +e
while :; do
    wait "$QPID"
    rc=$?
    kill -0 "$QPID" 2>/dev/null || break
done
set -e
trap - TERM INT HUP
wait 2>/dev/null || true
tr -d '\r' < "$RAW" > "$LOG"
rm -f "$RAW"
secs=$(echo "$(date +%s.%N) $start" | awk '{printf "%.1f", $1 - $2}')

if grep -q '^BOXFS-GUEST-DONE' "$LOG"; then
    echo "run-guest: guest finished in ${secs}s (qemu rc=$rc), log $LOG" >&2
    exit 0
fi
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "run-guest: TIMEOUT after ${TIMEOUT}s: guest did not reach BOXFS-GUEST-DONE, log $LOG" >&2
else
    echo "run-guest: guest did not reach BOXFS-GUEST-DONE (qemu rc=$rc, ${secs}s), log $LOG" >&2
fi
tail -n 20 "$LOG" | sed 's/^/run-guest:   /' >&2
exit 3
