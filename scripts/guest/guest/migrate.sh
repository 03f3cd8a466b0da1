#!/bin/sh
# Guest script (busybox sh): the guest side of the snapshot/restore and live-migration tests
# (boxfsd/tests/guest_migrate.rs). Runs on the share mounted at $BOXFS_MNT.
#
# Before: holds BOXFS_HELD files (dentries: the daemon holds their lookups), optionally fills
# BOXFS_FILL_MIB MiB, opens `data` read-write and keeps it open (fd 3), writes 200 lines and
# fsyncs, writes 200 more without fsync, opens it again for reading (fd 5) and reads 1000 bytes,
# and makes directory `dir` its working directory (a held directory). With boxfs.mode=live a
# background loop appends a line to `live` and reads it back, over and over.
# Then it prints "BOXFS-MIGRATE: ready" and waits for a line on the console: the host migrates
# or snapshots the VM meanwhile and sends the line to the (new) QEMU.
# After: reads `data` on from fd 5's position, writes through fd 3, lists its working directory,
# and checks every byte. Prints "PASS name" / "FAIL name detail" lines and
# "MIGRATE-DONE pass=N fail=N".
M=${BOXFS_MNT:-/mnt}
HELD=${BOXFS_HELD:-100}
FILL=${BOXFS_FILL_MIB:-0}
MODE=${BOXFS_MODE:-snapshot}
P=0
F=0
pass() { echo "PASS $1"; P=$((P + 1)); }
fail() { n=$1; shift; printf 'FAIL %s %s\n' "$n" "$(printf '%s' "$*" | tr '\n' '|')"; F=$((F + 1)); }
eq() { if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2' want '$3'"; fi; }
sum() { sha256sum | cut -d' ' -f1; }
now() { cut -d' ' -f1 /proc/uptime; }
gen() { i=$1; while [ "$i" -lt "$2" ]; do echo "line-$i-$3"; i=$((i + 1)); done; }

W=$M/mig
mkdir -p "$W/held" || { fail setup "mkdir $W"; echo "MIGRATE-DONE pass=$P fail=$F"; exit 1; }
cd "$W" || exit 1
t0=$(now)
i=0
while [ "$i" -lt "$HELD" ]; do
    : > "held/f$i" || { fail held_create "f$i"; break; }
    i=$((i + 1))
done
echo "INFO held $HELD files in $(echo "$(now) $t0" | awk '{printf "%.1f", $1 - $2}')s"
if [ "$FILL" -gt 0 ]; then
    t0=$(now)
    dd if=/dev/urandom of=fill bs=1M count="$FILL" 2>/dev/null || fail fill_write "dd"
    sha256sum fill > /tmp/fill.sum
    echo "INFO filled $FILL MiB in $(echo "$(now) $t0" | awk '{printf "%.1f", $1 - $2}')s"
fi

# `other`: open (fd 6) with nothing of it cached, so reading it after the restore asks the
# daemon. With boxfs.changed=1 the host deletes it between save and restore.
echo "other file" > other
sync
echo 1 > /proc/sys/vm/drop_caches  # page cache only: the held dentries stay
exec 6<other

exec 3<>data
gen 0 200 synced >&3
sync data || fail fsync "sync data"
gen 200 400 unsynced >&3
gen 0 200 synced > /tmp/want
gen 200 400 unsynced >> /tmp/want
exec 5<data
dd bs=1 count=1000 <&5 > /tmp/first 2>/dev/null
mkdir dir && : > dir/a && : > dir/b
cd dir || fail cd "dir"

if [ "$MODE" = live ]; then
    rm -f /tmp/stop
    (
        n=0
        while [ ! -e /tmp/stop ]; do
            echo "live-$n" >> "$W/live" || echo "FAIL live_write $n"
            got=$(tail -n 1 "$W/live")
            [ "$got" = "live-$n" ] || echo "FAIL live_readback $n got '$got'"
            n=$((n + 1))
        done
        echo "$n" > /tmp/live.n
    ) &
    LOOP=$!
    # Let the loop run a while on the source before the host starts.
    while [ ! -s "$W/live" ]; do sleep 0.1; done
fi

echo "BOXFS-MIGRATE: ready"
read -r go
echo "BOXFS-MIGRATE: resumed ($go)"

if [ "$MODE" = live ]; then
    touch /tmp/stop
    wait "$LOOP"
    n=$(cat /tmp/live.n)
    i=0
    while [ "$i" -lt "$n" ]; do echo "live-$i"; i=$((i + 1)); done > /tmp/live.want
    eq live_lines "$(sum < "$W/live")" "$(sum < /tmp/live.want)"
    echo "INFO live loop wrote $n lines"
fi

if [ "${BOXFS_CHANGED:-0}" = 1 ]; then
    # Only this inode fails; everything below must still pass.
    if got=$(dd bs=64 count=1 <&6 2>/dev/null); then
        fail changed_file_error "read of the deleted file succeeded: '$got'"
    else
        pass changed_file_error
    fi
else
    eq other_file "$(dd bs=64 count=1 <&6 2>/dev/null)" "other file"
fi
exec 6<&-

# fd 5 goes on from byte 1000.
dd bs=65536 <&5 > /tmp/rest 2>/dev/null || fail read_on "dd"
eq read_from_position "$(cat /tmp/first /tmp/rest | sum)" "$(sum < /tmp/want)"
echo "written-after-restore" >&3 || fail write_after "write through fd 3"
echo "written-after-restore" >> /tmp/want
exec 3>&-
exec 5<&-
eq list_held_dir "$(ls . | tr '\n' ' ')" "a b "
eq all_bytes "$(sum < ../data)" "$(sum < /tmp/want)"
eq held_files "$(ls ../held | wc -l)" "$HELD"
if [ "$FILL" -gt 0 ]; then
    (cd .. && sha256sum -c /tmp/fill.sum >/dev/null 2>&1) && pass fill_content || fail fill_content "checksum"
fi
cd / || true
echo "MIGRATE-DONE pass=$P fail=$F"
