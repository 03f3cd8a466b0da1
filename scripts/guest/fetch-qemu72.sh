#!/usr/bin/env bash
# Fetch the distribution's QEMU 7.2 (Debian bookworm's `qemu-system-x86`) next to the system-wide
# QEMU 10, without installing it: the older-VMM test (`guest_e2e_qemu72`) boots it.
#
#   scripts/guest/fetch-qemu72.sh [--print-version]
#
# Downloads, with `apt-get download` at pinned versions (the newest 7.2 build apt knows, from
# bookworm or bookworm-security, never backports):
#   qemu-system-x86   the binary; every library it links is already on a host with QEMU 10
#   qemu-system-common  its modules: Debian's 7.2 builds TCG as one (accel-tcg-x86_64.so)
#   qemu-system-data  its option ROMs (linuxboot_dma.bin, kvmvapic.bin, ...), 7.2's own
#   seabios           bookworm's BIOS (1.16.2), the one 7.2 ships with
# and unpacks them with `dpkg -x` into ${CARGO_TARGET_DIR:-target}/guest/qemu-<version without epoch>/.
# The directory is keyed by the qemu-system-x86 version; a complete one (marker file `.complete`)
# is reused without touching apt or the network. Prints the directory on stdout.
#
# Use it as (run-guest.sh --qemu-dir DIR does this):
#   QEMU_MODULE_DIR=DIR/modules DIR/usr/bin/qemu-system-x86_64 \
#       -L DIR/usr/share/qemu -L DIR/usr/share/seabios -L /usr/share/qemu -L /usr/lib/ipxe/qemu ...
# (DIR/modules links to 7.2's own module directory, so it never loads QEMU 10's modules.)
#
# Needs apt's package lists (scripts/guest/install-deps.sh runs `apt-get update`); no root needed
# when the lists are current. --print-version prints the pinned version and exits.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT_DIR="${CARGO_TARGET_DIR:-$REPO/target}/guest"

PRINT_VERSION=0
for arg in "$@"; do
    case "$arg" in
        --print-version) PRINT_VERSION=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "fetch-qemu72.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { echo "fetch-qemu72: $*" >&2; }
die() { log "$*"; exit 1; }

# The newest version of PACKAGE matching the glob VERSION_GLOB from a suite other than backports.
pick_version() {
    local pkg="$1" glob="$2"
    apt-cache madison "$pkg" 2>/dev/null \
        | awk -F'|' '$3 !~ /backports/ { gsub(/ /, "", $2); print $2 }' \
        | while read -r v; do
            # shellcheck disable=SC2254
            case "$v" in $glob) echo "$v" ;; esac
        done \
        | sort -V | tail -n1
}

# A complete cache from an earlier run: use it without asking apt (works offline).
newest_cached() {
    local d
    for d in $(ls -1d "$OUT_DIR"/qemu-7.2* 2>/dev/null | sort -V -r); do
        if [ -e "$d/.complete" ]; then echo "$d"; return 0; fi
    done
    return 1
}

QVER="$(pick_version qemu-system-x86 '1:7.2+*')"
if [ "$PRINT_VERSION" = 1 ]; then
    [ -n "$QVER" ] || die "apt knows no qemu-system-x86 7.2 (apt-get update?)"
    echo "$QVER"
    exit 0
fi
if [ -z "$QVER" ]; then
    if d="$(newest_cached)"; then echo "$d"; exit 0; fi
    die "apt knows no qemu-system-x86 7.2 (bookworm) and nothing is cached: run apt-get update"
fi
DEST="$OUT_DIR/qemu-${QVER#*:}"   # no epoch: keep a colon out of the path
if [ -e "$DEST/.complete" ]; then
    echo "$DEST"
    exit 0
fi

# The data package is architecture-independent and has no binNMU suffix (+bN): take the newest
# 7.2 one; the BIOS is bookworm's 1.16.x.
DVER="$(pick_version qemu-system-data '1:7.2+*')"
SVER="$(pick_version seabios '1.16.*')"
[ -n "$DVER" ] || die "apt knows no qemu-system-data 7.2"
[ -n "$SVER" ] || die "apt knows no bookworm seabios 1.16"

mkdir -p "$OUT_DIR"
STAGE="$(mktemp -d "$OUT_DIR/qemu72-stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
chmod 0755 "$STAGE"
log "apt-get download qemu-system-x86=$QVER qemu-system-common=$QVER qemu-system-data=$DVER seabios=$SVER"
# apt drops to the _apt user for downloads; it must be able to write the directory, or apt warns
# and downloads as root. Either works.
(cd "$STAGE" && apt-get download -q \
    "qemu-system-x86=$QVER" "qemu-system-common=$QVER" "qemu-system-data=$DVER" "seabios=$SVER" \
    </dev/null) >&2
mkdir -p "$STAGE/root"
for deb in "$STAGE"/*.deb; do dpkg -x "$deb" "$STAGE/root"; done
rm -f "$STAGE"/*.deb
TCG="$(find "$STAGE/root/usr/lib" -name accel-tcg-x86_64.so | head -n1)"
[ -n "$TCG" ] || die "no accel-tcg-x86_64.so in qemu-system-common=$QVER"
if ldd "$TCG" | grep -q 'not found'; then
    ldd "$TCG" | grep 'not found' >&2
    die "QEMU 7.2's TCG module needs libraries that are not installed (see above)"
fi
ln -s "$(dirname "${TCG#"$STAGE/root/"}")" "$STAGE/root/modules"

BIN="$STAGE/root/usr/bin/qemu-system-x86_64"
[ -x "$BIN" ] || die "no usr/bin/qemu-system-x86_64 in qemu-system-x86=$QVER"
if ldd "$BIN" | grep -q 'not found'; then
    ldd "$BIN" | grep 'not found' >&2
    die "QEMU 7.2 needs libraries that are not installed (see above)"
fi
"$BIN" --version | head -n1 | grep -q '^QEMU emulator version 7\.2\.' \
    || die "$BIN --version is not 7.2: $("$BIN" --version | head -n1)"
[ -e "$STAGE/root/usr/share/seabios/bios-256k.bin" ] || die "no bios-256k.bin in seabios=$SVER"
printf 'qemu-system-x86=%s\nqemu-system-data=%s\nseabios=%s\n' "$QVER" "$DVER" "$SVER" \
    > "$STAGE/root/.complete"

# Publish atomically; a concurrent run that won the race leaves its complete copy in place.
[ -e "$DEST" ] && [ ! -e "$DEST/.complete" ] && rm -rf "$DEST"   # left by an interrupted run
if ! mv -T "$STAGE/root" "$DEST" 2>/dev/null; then
    [ -e "$DEST/.complete" ] || die "could not create $DEST"
fi
log "unpacked $("$DEST/usr/bin/qemu-system-x86_64" --version | head -n1) into $DEST"
echo "$DEST"
