#!/usr/bin/env bash
# Install what the real-guest end-to-end test needs, when it is missing.
#
#   scripts/guest/install-deps.sh [--with-virtiofsd]
#
# Idempotent and non-interactive: nothing is downloaded when everything is present.
#   - Debian packages: qemu-system-x86 (pulls seabios + ipxe-qemu, the BIOS and option ROMs QEMU
#     needs), linux-image-amd64 (the guest kernel and its virtio/fuse modules), busybox-static
#     (the guest userland), attr (setfattr/getfattr, copied into the guest: busybox has none),
#     cpio (to pack the initramfs).
#   - pjdfstest 0.2.2 (cargo install), the POSIX conformance suite run inside the guest.
#   - --with-virtiofsd: also `cargo install virtiofsd` (the reference daemon, used to validate the
#     harness and for benchmarks; needs libcap-ng-dev and libseccomp-dev).
#
# Must run as root (or with sudo available) on a Debian/Ubuntu host when packages are missing.
set -euo pipefail

WITH_VIRTIOFSD=0
for arg in "$@"; do
    case "$arg" in
        --with-virtiofsd) WITH_VIRTIOFSD=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install-deps.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

export DEBIAN_FRONTEND=noninteractive
export CI=true
export PATH="$HOME/.cargo/bin:$PATH"

log() { echo "install-deps: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi

have_kernel() {
    # A bootable kernel plus the virtiofs module of the same version.
    local k ver
    for k in /boot/vmlinuz-*; do
        [ -r "$k" ] || continue
        ver="${k#/boot/vmlinuz-}"
        if ls /lib/modules/"$ver"/kernel/fs/fuse/virtiofs.ko* >/dev/null 2>&1; then
            return 0
        fi
    done
    return 1
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

missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
# QEMU's BIOS: part of `seabios`, a hard dependency, but check in case it was removed.
[ -e /usr/share/seabios/bios-256k.bin ] || [ -e /usr/share/qemu/bios-256k.bin ] || missing+=(seabios)
have_kernel || missing+=(linux-image-amd64)
have_static_busybox || missing+=(busybox-static)
command -v setfattr >/dev/null 2>&1 && command -v getfattr >/dev/null 2>&1 || missing+=(attr)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ "$WITH_VIRTIOFSD" = 1 ] && ! command -v virtiofsd >/dev/null 2>&1; then
    [ -e /usr/include/cap-ng.h ] || missing+=(libcap-ng-dev)
    [ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} and no apt-get: install them by hand"
        exit 1
    fi
    log "installing: ${missing[*]}"
    APT_OPTS=(-o DPkg::Lock::Timeout=600)   # another apt run (unattended upgrades, CI setup) may hold the lock
    $SUDO apt-get "${APT_OPTS[@]}" update -q
    # No recommends: QEMU's firmware (seabios, ipxe-qemu) are hard dependencies, so nothing the
    # guest boot needs is lost; the recommended GUI/firmware packages are not needed.
    $SUDO apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    log "Debian packages present"
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

# Final check, so a broken install is reported here and not as an obscure boot failure.
command -v qemu-system-x86_64 >/dev/null
have_kernel || { log "no /boot/vmlinuz-* with a virtiofs module"; exit 1; }
have_static_busybox || { log "no static busybox"; exit 1; }
command -v pjdfstest >/dev/null
log "ok"
