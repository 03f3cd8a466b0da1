#!/usr/bin/env bash
# Build the busybox initramfs the real-guest end-to-end test boots.
#
#   scripts/guest/build-initramfs.sh [--kernel-version VER] [--extra-script FILE]... [--out-dir DIR]
#
# Prints the path of the initramfs (a newc cpio, uncompressed: TCG decompresses slowly) on stdout.
# The kernel to boot it with is written next to it, in "<initramfs>.kernel".
# The image is cached by content under ${CARGO_TARGET_DIR:-target}/guest/: it is rebuilt only when
# an input changes (these scripts, the guest scripts, busybox, the kernel modules, pjdfstest, the
# xattr tools or any library they load).
#
# Contents:
#   /init                      scripts/guest/init: mounts proc/sys/dev, loads the virtio-fs modules,
#                              mounts the share, runs the guest scripts named on the kernel command line
#                              (boxfs.scripts=scenario,pjdfstest), prints BOXFS-GUEST-DONE, powers off.
#   /guest/*.sh                scripts/guest/guest/*.sh plus every --extra-script FILE.
#                              (Per-run inputs, such as the file-mount plans of guest/filemount.sh
#                              in /fm/, are appended by the caller as a second cpio archive, so this
#                              image stays cached.)
#   /bin/busybox + applets     static busybox.
#   /lib/modules/*.ko          virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
#                              virtio_pci fuse virtiofs (decompressed), plus /lib/modules/order.
#   /usr/local/bin/pjdfstest   and the libraries ldd lists, at their absolute paths.
#   /usr/bin/{set,get}fattr    busybox has no xattr tools; copied from the host's `attr` package.
#   /etc/passwd, /etc/group    root, daemon, nobody/nogroup (pjdfstest's dummy_auth users).
#   /etc/pjdfstest.toml        scripts/guest/pjdfstest.toml.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

KVER=""
OUT_DIR=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel-version) KVER="$2"; shift 2 ;;
        --extra-script) EXTRA+=("$(realpath "$2")"); shift 2 ;;
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "build-initramfs.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
OUT_DIR="${OUT_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/guest}"
mkdir -p "$OUT_DIR"

die() { echo "build-initramfs: $*" >&2; exit 1; }

# --- inputs ----------------------------------------------------------------------------------
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci fuse virtiofs)

if [ -z "$KVER" ]; then
    # Newest installed kernel that has virtiofs (a module, or built in as in 6.12).
    for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
        v="${k#/boot/vmlinuz-}"
        if ls /lib/modules/"$v"/kernel/fs/fuse/virtiofs.ko* >/dev/null 2>&1 \
            || grep -q '/virtiofs.ko$' /lib/modules/"$v"/modules.builtin 2>/dev/null; then
            KVER="$v"; break
        fi
    done
fi
[ -n "$KVER" ] || die "no /boot/vmlinuz-* with virtiofs (run scripts/guest/install-deps.sh)"
KERNEL="/boot/vmlinuz-$KVER"
[ -r "$KERNEL" ] || die "$KERNEL not readable"

BUSYBOX=""
for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then BUSYBOX="$b"; break; fi
done
[ -n "$BUSYBOX" ] || die "no static busybox (apt-get install busybox-static)"

PJDFSTEST="$(command -v pjdfstest || true)"
[ -n "$PJDFSTEST" ] || die "pjdfstest not on PATH (cargo install pjdfstest --version 0.2.2 --locked)"
PJDFSTEST="$(realpath "$PJDFSTEST")"

BINARIES=("$PJDFSTEST")
# A real `sleep`: pjdfstest's ETXTBSY cases copy `which sleep` into the share and run the copy
# under a random name. Busybox's applet link would run as an unknown applet and exit at once,
# so whether the file is still being executed when the test opens it for writing would be a
# race the test loses under load.
SLEEP="$(realpath "$(command -v sleep)")"
case "$(basename "$SLEEP")" in
    busybox) die "the host's sleep is busybox; pjdfstest's ETXTBSY cases need a real one (coreutils)" ;;
    *) BINARIES+=("$SLEEP") ;;
esac
for t in setfattr getfattr; do
    p="$(command -v "$t" || true)"
    if [ -n "$p" ]; then BINARIES+=("$(realpath "$p")"); else echo "build-initramfs: warning: no $t on the host, guest xattr checks will FAIL" >&2; fi
done

declare -A MODFILE=()
for m in "${MODULES[@]}"; do
    f="$(find /lib/modules/"$KVER"/kernel -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)"
    if [ -z "$f" ]; then
        # Built into the kernel: nothing to load.
        if grep -q "/$m.ko\$" /lib/modules/"$KVER"/modules.builtin 2>/dev/null; then continue; fi
        die "module $m not found for kernel $KVER"
    fi
    MODFILE[$m]="$f"
done

# Libraries of every dynamic binary, at their absolute paths (symlinks resolved, both names kept).
LIBS=()
for bin in "${BINARIES[@]}"; do
    while read -r lib; do LIBS+=("$lib"); done < <(ldd "$bin" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
done
mapfile -t LIBS < <(printf '%s\n' "${LIBS[@]}" | sort -u)

GUEST_SCRIPTS=("$HERE"/guest/*.sh "${EXTRA[@]}")
INPUTS=("$0" "$HERE/init" "$HERE/pjdfstest.toml" "$BUSYBOX" "${BINARIES[@]}" "${GUEST_SCRIPTS[@]}")
for m in "${!MODFILE[@]}"; do INPUTS+=("${MODFILE[$m]}"); done
for l in "${LIBS[@]}"; do INPUTS+=("$(realpath "$l")"); done

HASH="$( { echo "$KVER"; for f in "${INPUTS[@]}"; do printf '%s ' "$(basename "$f")"; sha256sum < "$f"; done; } \
        | sort | sha256sum | cut -c1-16)"
OUT="$OUT_DIR/initramfs-$KVER-$HASH.cpio"
if [ -s "$OUT" ] && [ -s "$OUT.kernel" ]; then
    echo "$OUT"
    exit 0
fi

# --- build -----------------------------------------------------------------------------------
STAGE="$(mktemp -d "$OUT_DIR/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
cd "$STAGE"
mkdir -p bin sbin usr/bin usr/sbin usr/local/bin lib/modules etc proc sys dev tmp mnt root guest run var/tmp
chmod 1777 tmp var/tmp

install -m 0755 "$BUSYBOX" bin/busybox
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "bin/$applet" ] || ln -s busybox "bin/$applet"
done

: > lib/modules/order
for m in "${MODULES[@]}"; do
    f="${MODFILE[$m]:-}"
    [ -n "$f" ] || continue
    case "$f" in
        *.ko.xz)  xz -dc "$f" > "lib/modules/$m.ko" ;;
        *.ko.zst) zstd -q -dc "$f" > "lib/modules/$m.ko" ;;
        *.ko.gz)  gzip -dc "$f" > "lib/modules/$m.ko" ;;
        *)        cp "$f" "lib/modules/$m.ko" ;;
    esac
    echo "$m" >> lib/modules/order
done

for bin in "${BINARIES[@]}"; do
    case "$(basename "$bin")" in
        pjdfstest) install -m 0755 "$bin" usr/local/bin/pjdfstest ;;
        # Ahead of busybox's link in PATH (and `which sleep`).
        sleep) rm -f bin/sleep; install -m 0755 "$bin" bin/sleep ;;
        *) install -m 0755 "$bin" "usr/bin/$(basename "$bin")" ;;
    esac
done
for l in "${LIBS[@]}"; do
    mkdir -p ".$(dirname "$l")"
    cp -L "$l" ".$l"
    r="$(realpath "$l")"
    if [ "$r" != "$l" ]; then mkdir -p ".$(dirname "$r")"; cp -L "$l" ".$r"; fi
done
# /lib64 on Debian is a real directory holding only the loader symlink; lib/ is a real dir here.

cat > etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > etc/group <<'EOF'
root:x:0:
daemon:x:1:
nogroup:x:65534:
EOF
install -m 0644 "$HERE/pjdfstest.toml" etc/pjdfstest.toml
install -m 0755 "$HERE/init" init
for s in "${GUEST_SCRIPTS[@]}"; do install -m 0755 "$s" "guest/$(basename "$s")"; done
echo "$KVER" > etc/boxfs-kernel

# /dev/console must exist before /init runs, or init has no stdout.
mknod -m 0600 dev/console c 5 1 2>/dev/null || true
mknod -m 0666 dev/null c 1 3 2>/dev/null || true

TMP_OUT="$(mktemp "$OUT_DIR/initramfs.XXXXXX")"
trap 'rm -rf "$STAGE" "$TMP_OUT" "$TMP_OUT.kernel"' EXIT
find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 > "$TMP_OUT"
echo "$KERNEL" > "$TMP_OUT.kernel"
mv -f "$TMP_OUT.kernel" "$OUT.kernel"
mv -f "$TMP_OUT" "$OUT"
# Drop images of older inputs (not ones a concurrent run may have just built or be using).
find "$OUT_DIR" -maxdepth 1 -name 'initramfs-*.cpio*' ! -name "$(basename "$OUT")*" -mmin +10 -delete 2>/dev/null || true
echo "build-initramfs: built $OUT ($(du -h "$OUT" | cut -f1)) for kernel $KVER" >&2
echo "$OUT"
