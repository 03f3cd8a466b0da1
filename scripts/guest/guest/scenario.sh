#!/bin/sh
# Guest script (busybox sh): the end-to-end scenario on a virtio-fs share mounted at $BOXFS_MNT.
#
# Every check prints exactly one line, "PASS <name>" or "FAIL <name> <detail>"; informational lines
# start with "INFO ". The last line is "SCENARIO-DONE pass=N fail=N".
# Optional kernel command line parameters (see /init):
#   boxfs.token=HEX              host<->guest exchange: the host created host-to-guest.txt holding
#                                "boxfs host->guest HEX" and host-dir/{a,b,c}; the guest checks them
#                                and writes guest-to-host.txt holding "boxfs guest->host HEX".
#   boxfs.hidden_xattr=NAME      an xattr the backend must hide and refuse (PassthroughFs's
#                                ownership key): checked absent from listxattr and not settable.
#   boxfs.big_mib=N              size of the big file (default 64).
#   boxfs.dir_entries=N          entries of the big directory (default 10000).
M=${BOXFS_MNT:-/mnt}
D=$M/scenario
BIG_MIB=${BOXFS_BIG_MIB:-64}
NDIR=${BOXFS_DIR_ENTRIES:-10000}
P=0
F=0

pass() { echo "PASS $1"; P=$((P + 1)); }
fail() { n=$1; shift; printf 'FAIL %s %s\n' "$n" "$(printf '%s' "$*" | tr '\n' '|')"; F=$((F + 1)); }
# eq NAME GOT WANT
eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2' want '$3'"; fi
}
# ok NAME COMMAND...   (passes when the command succeeds; its output is shown on failure)
ok() {
    n=$1; shift
    if out=$("$@" 2>&1); then pass "$n"; else fail "$n" "'$*' failed: $out"; fi
}
# ko NAME COMMAND...   (passes when the command fails)
ko() {
    n=$1; shift
    if out=$("$@" 2>&1); then fail "$n" "'$*' unexpectedly succeeded: $out"; else pass "$n"; fi
}
now() { cut -d' ' -f1 /proc/uptime; }
elapsed() { echo "$(now) $1" | awk '{printf "%.1f", $1 - $2}'; }
drop_caches() { sync; [ -n "${BOXFS_NO_DROP_CACHES:-}" ] || echo 3 > /proc/sys/vm/drop_caches; }
sum() { sha256sum | cut -d' ' -f1; }

echo "INFO scenario on $M ($(grep " $M " /proc/mounts))"
rm -rf "$D" 2>/dev/null
ok mkdir mkdir "$D"
cd "$D" || { echo "SCENARIO-DONE pass=$P fail=$((F + 1))"; exit 1; }

# --- big file: write, read back by checksum, partial read, shrink ------------------------------
t0=$(now)
dd if=/dev/urandom of=/tmp/big bs=1M count="$BIG_MIB" 2>/dev/null
want=$(sum < /tmp/big)
t1=$(now)
ok big_write dd if=/tmp/big of=big bs=1M
eq big_size "$(stat -c %s big)" $((BIG_MIB * 1048576))
drop_caches
eq big_checksum "$(sum < big)" "$want"
echo "INFO big_sha256 $want"
eq big_pread "$(dd if=big bs=4096 skip=1000 count=3 2>/dev/null | sum)" \
    "$(dd if=/tmp/big bs=4096 skip=1000 count=3 2>/dev/null | sum)"
# Overwrite in the middle without truncating.
printf 'boxfs-overwrite' | dd of=big bs=1 seek=12345 conv=notrunc 2>/dev/null
printf 'boxfs-overwrite' | dd of=/tmp/big bs=1 seek=12345 conv=notrunc 2>/dev/null
drop_caches
eq big_overwrite "$(dd if=big bs=4096 skip=2 count=3 2>/dev/null | sum)" \
    "$(dd if=/tmp/big bs=4096 skip=2 count=3 2>/dev/null | sum)"
eq big_overwrite_size "$(stat -c %s big)" $((BIG_MIB * 1048576))
ok big_shrink truncate -s 1048576 big
drop_caches
eq big_shrink_content "$(sum < big)" "$(head -c 1048576 /tmp/big | sum)"
rm -f /tmp/big
echo "INFO big_file_seconds $(elapsed "$t1") (urandom+sha256 $(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}'))"

# --- append, truncate ---------------------------------------------------------------------------
printf 'one\n' > f
printf 'two\n' >> f
eq append_content "$(cat f)" "one
two"
eq append_size "$(stat -c %s f)" 8
ok truncate_shrink truncate -s 3 f
eq truncate_shrink_content "$(cat f)" "one"
ok truncate_grow truncate -s 4096 f
eq truncate_grow_size "$(stat -c %s f)" 4096
eq truncate_grow_zeros "$(tail -c 4093 f | tr -d '\000' | wc -c)" 0
: > f
eq truncate_otrunc "$(stat -c %s f)" 0
ok fallocate fallocate -l 65536 f
eq fallocate_size "$(stat -c %s f)" 65536

# --- chmod, chown --------------------------------------------------------------------------------
: > m
chmod 640 m
eq chmod_640 "$(stat -c %a m)" 640
chmod 4755 m
eq chmod_setuid "$(stat -c %a m)" 4755
chown 1234:5678 m
eq chown "$(stat -c %u:%g m)" 1234:5678
# Linux clears the set-user-ID bit of a regular file on chown, for root too.
eq chown_kills_suid "$(stat -c %a m)" 755
chmod 2755 m
chown 0:0 m
eq chown_root "$(stat -c %u:%g m)" 0:0
eq chown_kills_sgid "$(stat -c %a m)" 755
chmod 2755 m
mkdir sd
chmod 1777 sd
eq chmod_dir_sticky "$(stat -c %a sd)" 1777
chown 65534:65534 sd
eq chown_dir "$(stat -c %u:%g sd)" 65534:65534
drop_caches
eq chown_after_drop "$(stat -c %u:%g:%a m)" 0:0:2755

# --- mknod: devices and FIFOs ------------------------------------------------------------------
ok mknod_char mknod cdev c 1 3
eq mknod_char_type "$(stat -c '%F %t:%T' cdev)" "character special file 1:3"
ok mknod_block mknod bdev b 8 1
eq mknod_block_type "$(stat -c '%F %t:%T' bdev)" "block special file 8:1"
# The guest device node reaches the guest's own driver: /dev/null semantics.
echo discard > cdev 2>/dev/null
eq mknod_char_io "$(wc -c < cdev 2>/dev/null)" 0
ok mkfifo mkfifo fifo
eq mkfifo_type "$(stat -c %F fifo)" "fifo"
(echo through-fifo > fifo) &
eq fifo_io "$(cat fifo)" "through-fifo"
wait
drop_caches
eq mknod_after_drop "$(stat -c '%F %t:%T' cdev)" "character special file 1:3"

# --- symlinks ---------------------------------------------------------------------------------
echo data > target
ok symlink ln -s target link
eq symlink_readlink "$(readlink link)" target
eq symlink_type "$(stat -c %F link)" "symbolic link"
eq symlink_follow "$(cat link)" data
ln -s /no/such/place dangling
eq symlink_dangling "$(readlink dangling)" /no/such/place
ok lchown chown -h 42:43 link
eq lchown_owner "$(stat -c %u:%g link)" 42:43
eq lchown_target_untouched "$(stat -c %u:%g target)" "$(id -u):$(id -g)"
long=$(printf '%0200d' 0 | tr 0 x)
ln -s "$long" longlink
eq symlink_long "$(readlink longlink)" "$long"

# --- hard links -------------------------------------------------------------------------------
ok hardlink ln target hl
eq hardlink_nlink "$(stat -c %h target)" 2
eq hardlink_inode "$(stat -c %i hl)" "$(stat -c %i target)"
echo more >> hl
drop_caches
eq hardlink_shared_data "$(cat target)" "data
more"
rm target
eq hardlink_unlink_nlink "$(stat -c %h hl)" 1
eq hardlink_survives "$(cat hl)" "data
more"

# --- rename -------------------------------------------------------------------------------------
printf A > ra
printf B > rb
ino=$(stat -c %i rb)
ok rename_over mv -f rb ra
eq rename_over_content "$(cat ra)" B
eq rename_over_inode "$(stat -c %i ra)" "$ino"
ko rename_source_gone test -e rb
mkdir rd1
echo x > rd1/inner
ok rename_dir mv rd1 rd2
eq rename_dir_content "$(cat rd2/inner)" x
mkdir rd3
ok rename_dir_over_empty mv -T rd2 rd3
eq rename_dir_over_empty_content "$(cat rd3/inner 2>&1)" x
ko rmdir_notempty rmdir rd3
rm rd3/inner
ok rmdir rmdir rd3

# --- open-unlinked, timestamps, statfs -------------------------------------------------------
echo still-here > ou
exec 3< ou
rm ou
eq open_unlinked "$(cat <&3)" still-here
exec 3<&-
touch -d "2001-02-03 04:05:06" ts
eq utimes_mtime "$(stat -c %Y ts)" 981173106
bs=$(stat -f -c %b "$M")
if [ "${bs:-0}" -gt 0 ] 2>/dev/null; then pass statfs; else fail statfs "blocks='$bs'"; fi

# --- xattrs --------------------------------------------------------------------------------------
if command -v setfattr >/dev/null 2>&1 && command -v getfattr >/dev/null 2>&1; then
    : > xf
    ok xattr_set setfattr -n user.boxfs -v hello xf
    eq xattr_get "$(getfattr --only-values -n user.boxfs xf 2>&1)" hello
    val=$(printf '%01000d' 7)
    ok xattr_set_large setfattr -n user.big -v "$val" xf
    eq xattr_get_large "$(getfattr --only-values -n user.big xf 2>&1)" "$val"
    eq xattr_list "$(getfattr --absolute-names -d -m '^user\.' xf 2>/dev/null | grep -o '^user\.[a-z]*' | sort | tr '\n' ' ')" "user.big user.boxfs "
    ok xattr_replace setfattr -n user.boxfs -v world xf
    eq xattr_replaced "$(getfattr --only-values -n user.boxfs xf 2>&1)" world
    ok xattr_remove setfattr -x user.boxfs xf
    ko xattr_removed getfattr -n user.boxfs xf
    ko xattr_missing getfattr -n user.nothere xf
    mkdir xd
    ok xattr_dir setfattr -n user.d -v dirval xd
    eq xattr_dir_get "$(getfattr --only-values -n user.d xd 2>&1)" dirval
    drop_caches
    eq xattr_after_drop "$(getfattr --only-values -n user.big xf 2>&1)" "$val"
    if [ -n "${BOXFS_HIDDEN_XATTR:-}" ]; then
        chown 7:8 xf
        eq xattr_hidden_listed "$(getfattr --absolute-names -d -m - xf 2>&1 | grep -c -F "$BOXFS_HIDDEN_XATTR")" 0
        ko xattr_hidden_get getfattr -n "$BOXFS_HIDDEN_XATTR" xf
        ko xattr_hidden_set setfattr -n "$BOXFS_HIDDEN_XATTR" -v 0:0:0100777 xf
        ko xattr_hidden_remove setfattr -x "$BOXFS_HIDDEN_XATTR" xf
        eq xattr_hidden_owner_kept "$(stat -c %u:%g xf)" 7:8
    fi
else
    fail xattr "no setfattr/getfattr in the guest"
fi

# --- a big directory, listed and counted exactly ---------------------------------------------
t0=$(now)
mkdir many
i=0
while [ $i -lt "$NDIR" ]; do
    : > "many/f$i"
    i=$((i + 1))
done
t1=$(now)
drop_caches
ls -A many > /tmp/listing
eq readdir_count "$(wc -l < /tmp/listing)" "$NDIR"
want=$(i=0; while [ $i -lt "$NDIR" ]; do echo "f$i"; i=$((i + 1)); done | sort | sum)
eq readdir_names "$(sort /tmp/listing | sum)" "$want"
rm -f /tmp/listing
drop_caches
# Long listing: every entry's attributes (READDIRPLUS or LOOKUP per entry).
eq readdir_stat_count "$(ls -lA many | grep -c '^-')" "$NDIR"
t2=$(now)
ok readdir_rm rm -rf many
ko readdir_rm_gone test -e many
echo "INFO dir_entries=$NDIR create_seconds=$(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}') list_seconds=$(echo "$t2 $t1" | awk '{printf "%.1f", $1 - $2}') rm_seconds=$(elapsed "$t2")"

# --- host <-> guest ---------------------------------------------------------------------------
if [ -n "${BOXFS_TOKEN:-}" ]; then
    eq host_to_guest_file "$(cat "$M/host-to-guest.txt" 2>&1)" "boxfs host->guest $BOXFS_TOKEN"
    eq host_to_guest_dir "$(ls "$M/host-dir" 2>&1 | tr '\n' ' ')" "a b c "
    printf 'boxfs guest->host %s\n' "$BOXFS_TOKEN" > "$M/guest-to-host.txt.tmp"
    ok guest_to_host_write mv "$M/guest-to-host.txt.tmp" "$M/guest-to-host.txt"
    # The host checks that this guest ownership did (virtiofsd as root) or did not (an
    # unprivileged daemon virtualizing ownership) reach the host file.
    chown 1234:5678 "$M/guest-to-host.txt"
    chmod 0640 "$M/guest-to-host.txt"
    eq guest_to_host_owner "$(stat -c %u:%g:%a "$M/guest-to-host.txt")" 1234:5678:640
fi

# --- cleanup ---------------------------------------------------------------------------------
cd "$M"
ok cleanup rm -rf "$D"
ko cleanup_gone test -e "$D"
sync
echo "SCENARIO-DONE pass=$P fail=$F"
[ "$F" -eq 0 ]
