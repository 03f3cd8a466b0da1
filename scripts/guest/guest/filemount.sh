#!/bin/sh
# Guest script (busybox sh): single-file volumes (boxfsd --shared-file) mounted by the guest mount
# plans boxfsd printed. The host delivers them in $BOXFS_FM_DIR (default /fm, an initramfs
# appended by tests/guest_e2e.rs):
#   plan-rw.sh   the plan of a read-write file share, destination /root/test.txt
#   plan-ro.sh   the plan of a read-only file share, destination /root/ro.txt
#   env          FM_TOKEN=..., FM_TAG_RW=..., FM_TAG_RO=..., FM_UNLINKABLE=0|1 (sourced)
# Run with boxfs.automount=0 (nothing else mounts the shares) and both devices attached.
#
# Host <-> guest protocol: the host created the read-write file holding "boxfs host->guest TOKEN"
# and the read-only one holding "boxfs read-only TOKEN". The guest writes "boxfs guest->host
# TOKEN" into the read-write file and, once done checking it, prints "FM-STEP replace"; the host,
# seeing both, replaces its file atomically (rename) with "boxfs replaced TOKEN"; the guest waits
# to see that through the same bind mount, then writes "boxfs guest->host-2 TOKEN" (which must land
# in the new host file) and prints "FM-STEP unlinkable" once done checking it.
# Then the host swaps the file for things the daemon must not serve as before (issue 14):
#   1. (only with FM_UNLINKABLE=1: the daemon runs unprivileged) a root-owned file the daemon can
#      read but not hard-link: the guest must see its content, and writes fail (EACCES);
#      the guest then prints "FM-STEP symlink";
#   2. a symlink to a sibling file "boxfs secret TOKEN": the guest must get errors (EIO), never
#      the sibling's content; it then prints "FM-STEP restore";
#   3. a regular file "boxfs restored TOKEN": served again, and the guest writes
#      "boxfs guest->host-3 TOKEN" into it (the host checks it at the end).
# The host reads the "FM-STEP" lines from the live console log.
# One "PASS name" / "FAIL name detail" line per check; last line "FILEMOUNT-DONE pass=N fail=N".
FM=${BOXFS_FM_DIR:-/fm}
P=0
F=0
pass() { echo "PASS $1"; P=$((P + 1)); }
fail() { n=$1; shift; printf 'FAIL %s %s\n' "$n" "$(printf '%s' "$*" | tr '\n' '|')"; F=$((F + 1)); }
eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2' want '$3'"; fi
}
ok() {
    n=$1; shift
    if out=$("$@" 2>&1); then pass "$n"; else fail "$n" "'$*' failed: $out"; fi
}
ko() {
    n=$1; shift
    if out=$("$@" 2>&1); then fail "$n" "'$*' unexpectedly succeeded: $out"; else pass "$n"; fi
}
done_() { echo "FILEMOUNT-DONE pass=$P fail=$F"; exit 0; }

if [ ! -f "$FM/env" ]; then fail fm_inputs "no $FM/env"; done_; fi
. "$FM/env"
T=/root/test.txt
R=/root/ro.txt
STAGE=/run/boxfs-filemount

# --- read-write share ---------------------------------------------------------------------------
echo "INFO plan-rw: $(grep -c . "$FM/plan-rw.sh") lines"
if out=$(sh "$FM/plan-rw.sh" 2>&1); then pass plan_rw; else fail plan_rw "$out"; done_; fi
echo "INFO mounts: $(grep -E "virtiofs" /proc/mounts | tr '\n' ';')"
eq rw_bind_mounted "$(awk -v t="$T" '$2 == t { print $1 " " $3 }' /proc/mounts)" "$FM_TAG_RW virtiofs"
eq rw_host_to_guest "$(cat "$T")" "boxfs host->guest $FM_TOKEN"
ko rw_staging_path_gone ls "$STAGE/$FM_TAG_RW"
eq rw_staging_unmounted "$(grep -c " $STAGE/" /proc/mounts)" 0
case "$(awk -v t="$T" '$2 == t { print $4 }' /proc/mounts)" in
    *nosuid*nodev*) pass rw_flags ;;
    *) fail rw_flags "$(awk -v t="$T" '$2 == t { print $4 }' /proc/mounts)" ;;
esac
if printf 'boxfs guest->host %s\n' "$FM_TOKEN" > "$T"; then pass rw_guest_write; else fail rw_guest_write "write failed"; fi
eq rw_guest_reread "$(cat "$T")" "boxfs guest->host $FM_TOKEN"
ok rw_chmod_777 chmod 777 "$T"
eq rw_chmod_guest_mode "$(stat -c %a "$T")" 777
# The bind-mounted file cannot be moved away or unlinked (it is a mount point).
ko rw_unlink_refused rm -f "$T"

# --- read-only share ----------------------------------------------------------------------------
if out=$(sh "$FM/plan-ro.sh" 2>&1); then pass plan_ro; else fail plan_ro "$out"; fi
eq ro_content "$(cat "$R")" "boxfs read-only $FM_TOKEN"
if out=$( (printf 'x' > "$R") 2>&1 ); then
    fail ro_write_erofs "write succeeded"
else
    case "$out" in
        *"Read-only file system"*) pass ro_write_erofs ;;
        *) fail ro_write_erofs "$out" ;;
    esac
fi
if out=$(touch "$R" 2>&1); then fail ro_touch_erofs "touch succeeded"; else
    case "$out" in *"Read-only file system"*) pass ro_touch_erofs ;; *) fail ro_touch_erofs "$out" ;; esac
fi
ko ro_staging_path_gone ls "$STAGE/$FM_TAG_RO"
eq ro_content_unchanged "$(cat "$R")" "boxfs read-only $FM_TOKEN"

# --- host replaces the read-write file atomically -----------------------------------------------
echo "FM-STEP replace"
echo "INFO waiting for the host to replace the file"
want="boxfs replaced $FM_TOKEN"
i=0
got="$(cat "$T" 2>&1)"
while [ "$got" != "$want" ] && [ $i -lt 240 ]; do
    sleep 0.5
    i=$((i + 1))
    got="$(cat "$T" 2>&1)"
done
echo "INFO replace seen after ${i} polls"
eq rw_host_replace_seen "$got" "$want"
if printf 'boxfs guest->host-2 %s\n' "$FM_TOKEN" > "$T"; then pass rw_write_after_replace; else fail rw_write_after_replace "write failed"; fi
eq rw_mode_after_replace "$(stat -c %a "$T")" 777
ko rw_staging_still_gone ls "$STAGE/$FM_TAG_RW"
sync
echo "FM-STEP unlinkable"

# Polls `cat $T` (up to 120 s) until it prints $1; prints the last output.
wait_content() {
    i=0
    got="$(cat "$T" 2>&1)"
    while [ "$got" != "$1" ] && [ $i -lt 240 ]; do
        sleep 0.5
        i=$((i + 1))
        got="$(cat "$T" 2>&1)"
    done
    printf '%s' "$got"
}

# --- host swaps in a file the daemon can read but not link --------------------------------------
if [ "${FM_UNLINKABLE:-0}" = 1 ]; then
    echo "INFO waiting for the root-owned replacement"
    got=$(wait_content "boxfs root-owned $FM_TOKEN")
    eq rw_unlinkable_seen "$got" "boxfs root-owned $FM_TOKEN"
    if out=$( (printf 'x\n' > "$T") 2>&1 ); then
        fail rw_unlinkable_write_refused "write succeeded"
    else
        case "$out" in
            *"Permission denied"*) pass rw_unlinkable_write_refused ;;
            *) fail rw_unlinkable_write_refused "$out" ;;
        esac
    fi
    eq rw_unlinkable_unchanged "$(cat "$T" 2>&1)" "boxfs root-owned $FM_TOKEN"
else
    echo "INFO unlinkable replacement skipped (the daemon is not unprivileged)"
fi
echo "FM-STEP symlink"

# --- host swaps in a symlink to a sibling -------------------------------------------------------
echo "INFO waiting for the symlink swap"
i=0
leaked=0
while [ $i -lt 240 ]; do
    if got=$(cat "$T" 2>&1); then
        case "$got" in *secret*) leaked=1; break ;; esac
        sleep 0.5
        i=$((i + 1))
    else
        break
    fi
done
echo "INFO symlink swap seen after ${i} polls: $got"
if [ $leaked = 1 ]; then
    fail rw_symlink_never_target "read the symlink's target: $got"
else
    pass rw_symlink_never_target
fi
case "$got" in
    *"I/O error"*|*"Input/output error"*) pass rw_symlink_eio ;;
    *) fail rw_symlink_eio "$got" ;;
esac
case "$(cat "$T" 2>&1)" in
    *secret*) fail rw_symlink_still_refused "read the symlink's target" ;;
    *"I/O error"*|*"Input/output error"*) pass rw_symlink_still_refused ;;
    *) fail rw_symlink_still_refused "$(cat "$T" 2>&1)" ;;
esac
echo "FM-STEP restore"

# --- host puts a regular file back --------------------------------------------------------------
got=$(wait_content "boxfs restored $FM_TOKEN")
eq rw_restored "$got" "boxfs restored $FM_TOKEN"
if printf 'boxfs guest->host-3 %s\n' "$FM_TOKEN" > "$T"; then pass rw_write_after_restore; else fail rw_write_after_restore "write failed"; fi
sync
done_
