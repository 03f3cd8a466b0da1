#!/usr/bin/env bash
# Build the Debian userland the workload guest boots from (its root filesystem is a boxfs overlay
# whose read-only lower layer is this directory).
#
#   scripts/guest/build-userland.sh [--out-dir DIR] [--kernel-version VER]
#
# Prints the path of the root directory on stdout; the kernel to boot it with is written next to
# it, in "<dir>.kernel".
#
# How: the packages below and their library dependencies (Depends/Pre-Depends, recursively, no
# Recommends; see PACKAGES/EXCLUDE) are fetched with `apt-get download` through the apt sources
# the machine already has (the package lists must be present: `apt-get update`), and unpacked with
# `dpkg -x`. No maintainer script runs; /etc/passwd, /etc/group and the init are written here.
#
# Cache, under ${CARGO_TARGET_DIR:-target}/guest/:
#   debs/                      the downloaded .deb files
#   userland-<pkghash>/        the unpacked packages; <pkghash> hashes the package=version list
#                              and this script, so a package update (or an edit here) rebuilds it
#   rootfs-<hash>/             userland-<pkghash> hard-linked (cp -al, cheap) plus the init and the
#                              guest scripts (scripts/guest/guest/*.sh in /boxfs/guest/); <hash> adds
#                              those files, so editing a guest script only redoes this step
#
# Inside the root:
#   /boxfs/init                the guest's PID 1 (bash): mounts proc/sys/dev/tmp, prints the boot
#                              time, runs the scripts named by boxfs.scripts= like scripts/guest/init,
#                              prints BOXFS-GUEST-DONE, powers off (sysrq: no systemd here).
#   /boxfs/guest/*.sh          the guest scripts.
# Boot it with `run-guest.sh --rootfs` (kernel `root=TAG rootfstype=virtiofs init=/boxfs/init`).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

OUT_DIR=""
KVER=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        --kernel-version) KVER="$2"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "build-userland.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
OUT_DIR="${OUT_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/guest}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

die() { echo "build-userland: $*" >&2; exit 1; }
command -v apt-cache >/dev/null && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "needs apt-get, apt-cache and dpkg-deb (a Debian host)"

# What the workloads run. python3.11's full standard library (libpython3.11-stdlib) is there so
# that the import step lists a real stdlib, as a sandbox's Python would.
PACKAGES=(bash coreutils findutils tar xz-utils git python3-minimal python3.11-minimal
          libpython3.11-minimal libpython3.11-stdlib sqlite3 attr util-linux procps grep sed
          gzip diffutils mount)
# Dependencies that are only one side of an alternative, or only matter to maintainer scripts,
# installers or services; none of the workloads loads them.
EXCLUDE=(cdebconf libdebian-installer4 libnewt0.52 libslang2 libtextwrap1 gawk libmpfr6
         libsigsegv2 original-awk libelogind0 debconf-2.0 init-system-helpers install-info
         dpkg perl perl-modules-5.36 libperl5.36 liberror-perl libgdbm-compat4 git-man
         usrmerge usr-is-merged libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl)

# --- kernel (the newest with virtiofs built in: no initramfs loads modules for this guest) -----
if [ -z "$KVER" ]; then
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        v="${k#/boot/vmlinuz-}"
        if grep -q '/virtiofs.ko$' /lib/modules/"$v"/modules.builtin 2>/dev/null; then
            KVER="$v"; break
        fi
    done
fi
[ -n "$KVER" ] || die "no /boot/vmlinuz-* with virtiofs built in (Linux 6.12 from bookworm-backports: scripts/guest/install-deps.sh)"
KERNEL="/boot/vmlinuz-$KVER"
[ -r "$KERNEL" ] || die "$KERNEL not readable"

# --- resolve the package set -------------------------------------------------------------------
resolve() {
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$@" 2>/dev/null \
        | grep -v '^ ' | grep -v '^<' | sort -u
}
excluded() { local p; for p in "${EXCLUDE[@]}"; do [ "$1" = "$p" ] && return 0; done; return 1; }
mapfile -t ALL < <(resolve "${PACKAGES[@]}")
[ "${#ALL[@]}" -gt 10 ] || die "apt-cache resolved no dependencies (are apt's lists present? apt-get update)"
SELECTED=()
for p in "${ALL[@]}"; do excluded "$p" || SELECTED+=("$p"); done
# Pin each to its candidate version: the cache key, and what `apt-get download` fetches.
mapfile -t PINNED < <(apt-cache policy "${SELECTED[@]}" \
    | awk '/^[^ ].*:$/ {p = substr($0, 1, length($0) - 1)} /^  Candidate: / {print p "=" $2}')
[ "${#PINNED[@]}" = "${#SELECTED[@]}" ] || die "apt-cache policy: ${#PINNED[@]} candidates for ${#SELECTED[@]} packages"
for pv in "${PINNED[@]}"; do [ "${pv#*=}" != "(none)" ] || die "no candidate version of ${pv%%=*}"; done
PKGHASH="$( { printf '%s\n' "${PINNED[@]}"; sha256sum < "$0"; } | sha256sum | cut -c1-16)"
USERLAND="$OUT_DIR/userland-$PKGHASH"

# --- download and unpack (cached by package versions) ------------------------------------------
if [ ! -f "$USERLAND/.complete" ]; then
    DEBS="$OUT_DIR/debs"
    mkdir -p "$DEBS"
    missing=()
    for pv in "${PINNED[@]}"; do
        p="${pv%%=*}"; v="${pv#*=}"
        # apt-get download names files PKG_VERSION_ARCH.deb with the epoch's ':' as %3a.
        ls "$DEBS/${p}_${v//:/%3a}_"*.deb >/dev/null 2>&1 || missing+=("$pv")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "build-userland: apt-get download of ${#missing[@]} packages" >&2
        # As root, apt drops to _apt to download and warns when that user cannot write here;
        # the download then runs unsandboxed, which is fine for a cache directory we own.
        (cd "$DEBS" && apt-get -q -o APT::Sandbox::User=root download "${missing[@]}" >&2) \
            || die "apt-get download failed"
    fi
    STAGE="$(mktemp -d "$OUT_DIR/userland-stage.XXXXXX")"
    trap 'rm -rf "$STAGE"' EXIT
    for pv in "${PINNED[@]}"; do
        p="${pv%%=*}"; v="${pv#*=}"
        deb="$(ls "$DEBS/${p}_${v//:/%3a}_"*.deb | head -n1)"
        dpkg-deb -x "$deb" "$STAGE"
    done
    # What maintainer scripts would have done, as far as the workloads care.
    cd "$STAGE"
    mkdir -p proc sys dev tmp run root mnt var/tmp boxfs/guest
    chmod 1777 tmp var/tmp
    cat > etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
    cat > etc/group <<'EOF'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOF
    echo boxfs-guest > etc/hostname
    # Alternatives that postinst scripts would have made.
    [ -e usr/bin/awk ] || { [ -e usr/bin/mawk ] && ln -s mawk usr/bin/awk; }
    [ -e usr/bin/python3 ] || ln -s python3.11 usr/bin/python3
    [ -e bin/sh ] || ln -s bash bin/sh
    printf '%s\n' "${PINNED[@]}" > boxfs/packages
    cd - >/dev/null
    # Check that every program the workloads use is there and that its libraries resolve inside
    # the tree (the host's loader, with the tree's library path, checks the ELF dependencies).
    for b in bin/bash bin/tar bin/cp bin/ls usr/bin/stat usr/bin/find usr/bin/xargs usr/bin/git \
             usr/bin/python3.11 usr/bin/sqlite3 usr/bin/setfattr usr/bin/getfattr \
             usr/bin/sha256sum bin/mount bin/umount usr/bin/xz bin/df bin/kill usr/bin/xargs; do
        [ -e "$STAGE/$b" ] || die "the userland has no /$b"
        libdirs="$STAGE/lib/x86_64-linux-gnu:$STAGE/usr/lib/x86_64-linux-gnu"
        if LD_LIBRARY_PATH="$libdirs" ldd "$STAGE/$b" 2>/dev/null | grep -q 'not found'; then
            die "/$b: $(LD_LIBRARY_PATH="$libdirs" ldd "$STAGE/$b" | grep 'not found' | head -n3 | tr '\n' ' ')"
        fi
    done
    touch "$STAGE/.complete"
    rm -rf "$USERLAND"
    mv "$STAGE" "$USERLAND"
    trap - EXIT
    echo "build-userland: unpacked ${#PINNED[@]} packages into $USERLAND ($(du -sh "$USERLAND" | cut -f1))" >&2
    # Drop trees of older package sets (not ones a concurrent run may be using).
    find "$OUT_DIR" -maxdepth 1 -name 'userland-*' ! -name "$(basename "$USERLAND")" -mmin +30 \
        -exec rm -rf {} + 2>/dev/null || true
fi

# --- the root: userland + init + guest scripts ---------------------------------------------------
GUEST_SCRIPTS=("$HERE"/guest/*.sh)
HASH="$( { echo "$PKGHASH $KVER"; for f in "$HERE/rootfs-init" "${GUEST_SCRIPTS[@]}"; do
            printf '%s ' "$(basename "$f")"; sha256sum < "$f"; done; } | sha256sum | cut -c1-16)"
ROOT="$OUT_DIR/rootfs-$HASH"
if [ ! -f "$ROOT/.complete" ]; then
    STAGE="$(mktemp -d "$OUT_DIR/rootfs-stage.XXXXXX")"
    trap 'rm -rf "$STAGE"' EXIT
    rmdir "$STAGE"
    cp -al "$USERLAND" "$STAGE"
    rm -f "$STAGE/.complete"
    install -m 0755 "$HERE/rootfs-init" "$STAGE/boxfs/init"
    for s in "${GUEST_SCRIPTS[@]}"; do install -m 0755 "$s" "$STAGE/boxfs/guest/$(basename "$s")"; done
    echo "$KVER" > "$STAGE/boxfs/kernel"
    touch "$STAGE/.complete"
    rm -rf "$ROOT"
    mv "$STAGE" "$ROOT"
    trap - EXIT
    find "$OUT_DIR" -maxdepth 1 -name 'rootfs-*' ! -name "$(basename "$ROOT")*" -mmin +30 \
        -exec rm -rf {} + 2>/dev/null || true
    echo "build-userland: root $ROOT" >&2
fi
echo "$KERNEL" > "$ROOT.kernel"
echo "$ROOT"
