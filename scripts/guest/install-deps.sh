#!/usr/bin/env bash
# Install what the real-guest end-to-end test needs, when it is missing.
#
#   scripts/guest/install-deps.sh [--with-virtiofsd]
#
# Idempotent and non-interactive: nothing is downloaded when everything is present.
#   - Debian packages: QEMU 10 (qemu-system-x86, from bookworm-backports; pulls seabios +
#     ipxe-qemu, the BIOS and option ROMs QEMU needs) and Linux 6.12 (linux-image-amd64, from
#     bookworm-backports: virtio, fuse and virtiofs built in, and several request queues per
#     device, which 6.1 lacks), busybox-static
#     (the guest userland), attr (setfattr/getfattr, copied into the guest: busybox has none),
#     cpio (to pack the initramfs).
#   - The distribution's older stack, for guest_e2e_qemu72: Linux 6.1 (bookworm's
#     linux-image-6.1.0-N-amd64, the package bookworm's linux-image-amd64 depends on, installed
#     beside 6.12; virtiofs as modules) and QEMU 7.2 (bookworm's qemu-system-x86, NOT installed:
#     scripts/guest/fetch-qemu72.sh downloads and unpacks it under target/guest/).
#   - pjdfstest 0.2.2 (cargo install), the POSIX conformance suite run inside the guest.
#   - apt's package lists, when absent: scripts/guest/build-userland.sh downloads the workload
#     guest's Debian userland with `apt-get download`.
#   - --with-virtiofsd: also `cargo install virtiofsd` (the reference daemon, used to validate the
#     harness and for benchmarks; needs libcap-ng-dev and libseccomp-dev).
#
# Must run as root (or with sudo available) on a Debian/Ubuntu host when packages are missing.
set -euo pipefail

WITH_VIRTIOFSD=0
for arg in "$@"; do
    case "$arg" in
        --with-virtiofsd) WITH_VIRTIOFSD=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "install-deps.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive
export CI=true
export PATH="$HOME/.cargo/bin:$PATH"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "install-deps: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi

# The guest stack: QEMU >= 10 and a kernel >= 6.12 (multi-queue virtio-fs, device state).
QEMU_MIN=10
KERNEL_MIN=6.12

has_virtiofs() {
    # virtiofs as a module or built in.
    ls /lib/modules/"$1"/kernel/fs/fuse/virtiofs.ko* >/dev/null 2>&1 \
        || grep -q '/virtiofs.ko$' /lib/modules/"$1"/modules.builtin 2>/dev/null
}

have_kernel() {
    # A bootable kernel of at least KERNEL_MIN with virtiofs.
    local k ver
    for k in /boot/vmlinuz-*; do
        [ -r "$k" ] || continue
        ver="${k#/boot/vmlinuz-}"
        if [ "$(printf '%s\n%s\n' "$KERNEL_MIN" "$ver" | sort -V | head -n1)" = "$KERNEL_MIN" ] \
            && has_virtiofs "$ver"; then
            return 0
        fi
    done
    return 1
}

# The distribution's 6.1 kernel with its virtiofs module (the older stack).
have_kernel61() {
    local k
    for k in /boot/vmlinuz-6.1.*; do
        [ -r "$k" ] && has_virtiofs "${k#/boot/vmlinuz-}" && return 0
    done
    return 1
}

# The linux-image-6.1.0-N-amd64 package bookworm's (not backports') newest linux-image-amd64
# 6.1 depends on.
kernel61_package() {
    local v
    v="$(apt-cache madison linux-image-amd64 | awk -F'|' '$3 !~ /backports/ { gsub(/ /, "", $2); print $2 }' \
        | grep '^6\.1\.' | sort -V | tail -n1)"
    [ -n "$v" ] || return 1
    apt-cache depends "linux-image-amd64=$v" | sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*\)$/\1/p' | head -n1
}

have_qemu() {
    local v
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    v="$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')"
    [ -n "$v" ] && [ "$v" -ge "$QEMU_MIN" ]
}

# Debian's bookworm-backports suite, from the archive the bookworm entry already names.
enable_backports() {
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    local uri
    uri="$(grep -rhs '^URIs:.*debian$\|^URIs:.*debian/$' /etc/apt/sources.list.d/*.sources | head -n1 | awk '{print $2}')"
    [ -n "$uri" ] || uri="$(grep -hs '^deb .*debian.* bookworm ' /etc/apt/sources.list | head -n1 | awk '{print $2}')"
    [ -n "$uri" ] || { log "no bookworm entry in apt's sources to add bookworm-backports beside"; return 1; }
    log "adding bookworm-backports ($uri) to apt's sources"
    $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<EOF2
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF2
}

have_static_busybox() {
    local b
    for b in /bin/busybox /usr/bin/busybox; do
        # busybox-static ships a statically linked binary; the dynamic busybox package would not
        # run inside the guest.
        if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then return 0; fi
    done
    return 1
}

backports=()
have_qemu || backports+=(qemu-system-x86)
have_kernel || backports+=(linux-image-amd64)
missing=()
NEED_KERNEL61=0
have_kernel61 || NEED_KERNEL61=1
# QEMU's BIOS: part of `seabios`, a hard dependency, but check in case it was removed.
[ -e /usr/share/seabios/bios-256k.bin ] || [ -e /usr/share/qemu/bios-256k.bin ] || missing+=(seabios)
have_static_busybox || missing+=(busybox-static)
command -v setfattr >/dev/null 2>&1 && command -v getfattr >/dev/null 2>&1 || missing+=(attr)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ "$WITH_VIRTIOFSD" = 1 ] && ! command -v virtiofsd >/dev/null 2>&1; then
    [ -e /usr/include/cap-ng.h ] || missing+=(libcap-ng-dev)
    [ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
fi

if [ "${#missing[@]}" -gt 0 ] || [ "${#backports[@]}" -gt 0 ] || [ "$NEED_KERNEL61" = 1 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} ${backports[*]} and no apt-get: install them by hand"
        exit 1
    fi
    APT_OPTS=(-o DPkg::Lock::Timeout=600)   # another apt run (unattended upgrades, CI setup) may hold the lock
    if [ "${#backports[@]}" -gt 0 ]; then
        enable_backports
    fi
    $SUDO apt-get "${APT_OPTS[@]}" update -q
    APT_UPDATED=1
    if [ "$NEED_KERNEL61" = 1 ]; then
        k61="$(kernel61_package)" || k61=""
        [ -n "$k61" ] || { log "apt knows no bookworm linux-image-amd64 6.1"; exit 1; }
        missing+=("$k61")
    fi
    # No recommends: QEMU's firmware (seabios, ipxe-qemu) are hard dependencies, so nothing the
    # guest boot needs is lost; the recommended GUI/firmware packages are not needed.
    if [ "${#backports[@]}" -gt 0 ]; then
        log "installing from bookworm-backports: ${backports[*]}"
        $SUDO apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends \
            -t bookworm-backports "${backports[@]}" </dev/null
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing: ${missing[*]}"
        $SUDO apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null
    fi
else
    log "Debian packages present"
fi

# QEMU 7.2, unpacked under target/guest/ (quick when cached). A stale package list can name a
# build the mirror no longer has: refresh it once and retry.
if ! "$HERE/fetch-qemu72.sh" >/dev/null; then
    if [ "${APT_UPDATED:-0}" = 1 ]; then exit 1; fi
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
    "$HERE/fetch-qemu72.sh" >/dev/null
fi

if ! command -v pjdfstest >/dev/null 2>&1; then
    log "cargo install pjdfstest 0.2.2 (~3 min)"
    cargo install pjdfstest --version 0.2.2 --locked </dev/null
else
    log "pjdfstest present: $(command -v pjdfstest)"
fi

if [ "$WITH_VIRTIOFSD" = 1 ]; then
    if ! command -v virtiofsd >/dev/null 2>&1; then
        log "cargo install virtiofsd"
        cargo install virtiofsd --locked </dev/null
    else
        log "virtiofsd present: $(command -v virtiofsd)"
    fi
fi

# build-userland.sh (the workload guest's Debian userland) fetches packages with `apt-get download`,
# which needs apt's package lists.
if command -v apt-get >/dev/null 2>&1 \
    && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
    log "apt-get update (package lists for build-userland.sh)"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
fi

# Final check, so a broken install is reported here and not as an obscure boot failure.
have_qemu || { log "no qemu-system-x86_64 >= $QEMU_MIN"; exit 1; }
have_kernel || { log "no /boot/vmlinuz-* >= $KERNEL_MIN with virtiofs"; exit 1; }
have_kernel61 || { log "no /boot/vmlinuz-6.1.* with the virtiofs module"; exit 1; }
have_static_busybox || { log "no static busybox"; exit 1; }
command -v pjdfstest >/dev/null
log "ok"
