#!/bin/sh
# Guest script (busybox sh): one boxfsd device serving a table of volumes (issue 16), mounted by
# /init at $BOXFS_MNT (/mnt):
#   /              overlay (host lower dir holding bin/lower.txt, in-memory upper)
#   /work          dir volume (host dir holding x and .git/config; .git hidden)
#   /tmp           memfs volume
#   /etc/app.conf  file volume, read-only
#   /init.krun     virtual volume, mode 0755, a shell script
# Kernel command line: boxfs.vol_token=TOKEN (the host wrote it into work/x and app.conf).
#
# Host <-> guest protocol (the host reads "VOL-STEP" lines from the live console log and answers
# through files it writes into the work directory, seen at /mnt/work):
#   VOL-STEP attach        host: PUT /volumes {"path":"/extra","kind":"memfs"} on the API socket
#                          (the guest polls until /mnt/extra appears, then holds a file open there)
#   VOL-STEP detach-busy   host: DELETE /volumes?path=/extra, writes the HTTP status to
#                          work/.vol-busy (expected 409: the file is open)
#   VOL-STEP detach        (file closed) host: DELETE again, status to work/.vol-detach (204)
# Then pjdfstest runs inside /work, inside /tmp and at / (each prints its Summary line and
# PJDFSTEST-DONE).
# One "PASS name" / "FAIL name detail" line per check; last line "VOLUMES-DONE pass=N fail=N".
M=${BOXFS_MNT:-/mnt}
TOKEN=${BOXFS_VOL_TOKEN:-none}
P=0
F=0
pass() { echo "PASS $1"; P=$((P + 1)); }
fail() { n=$1; shift; printf 'FAIL %s %s\n' "$n" "$(printf '%s' "$*" | tr '\n' '|')"; F=$((F + 1)); }
eq() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2' want '$3'"; fi
}
# wait_for TEST SECONDS: polls TEST (a shell condition) every half second.
# submounts LABEL: which submounts below $M the guest has right now (INFO line).
submounts() { echo "INFO submounts_$1 $(awk -v m="$M/" 'index($5, m) == 1 { print $1 ":" $5 }' /proc/self/mountinfo | tr '\n' ' ')"; }
submount_ids() { awk -v m="$M/" 'index($5, m) == 1 { print $1 ":" $5 }' /proc/self/mountinfo | sort | tr '\n' ' '; }
wait_for() {
    i=0
    while [ "$i" -lt "$(($2 * 2))" ]; do
        if eval "$1"; then return 0; fi
        sleep 0.5
        i=$((i + 1))
    done
    return 1
}

echo "INFO mounts: $(grep virtiofs /proc/mounts | tr '\n' ';')"

# --- every volume at its path ------------------------------------------------------------------
eq root_overlay_lower "$(cat "$M/bin/lower.txt" 2>&1)" "lower $TOKEN"
eq work_host_file "$(cat "$M/work/x" 2>&1)" "work $TOKEN"
eq file_volume "$(cat "$M/etc/app.conf" 2>&1)" "conf $TOKEN"
eq tmp_is_empty_dir "$(ls -A "$M/tmp" 2>&1 | wc -l)" 0
d_root=$(stat -c %d "$M")
d_work=$(stat -c %d "$M/work/.")
d_tmp=$(stat -c %d "$M/tmp/.")
echo "INFO st_dev / $d_root /work $d_work /tmp $d_tmp /etc/app.conf $(stat -c %d "$M/etc/app.conf") /init.krun $(stat -c %d "$M/init.krun")"
if [ "$d_root" != "$d_work" ] && [ "$d_root" != "$d_tmp" ] && [ "$d_work" != "$d_tmp" ]; then
    pass distinct_st_dev
else
    fail distinct_st_dev "/ $d_root /work $d_work /tmp $d_tmp"
fi
submounts after_stat
# A listing of the parent keeps the submounts (the guest dropped them when a mount point's
# READDIRPLUS entry disagreed with its lookup).
before=$(submount_ids)
ls -A "$M" >/dev/null
eq submounts_survive_listing "$(submount_ids)" "$before"

# --- virtual file: runs, read-only ---------------------------------------------------------------
eq init_krun_mode "$(stat -c %a "$M/init.krun")" 755
eq init_krun_runs "$("$M/init.krun" hello 2>&1)" "INIT-KRUN-RAN hello"
if out=$( (printf 'x' > "$M/init.krun") 2>&1 ); then fail init_krun_readonly "write succeeded"; else pass init_krun_readonly; fi
if rm -f "$M/init.krun" 2>/dev/null && [ ! -e "$M/init.krun" ]; then fail init_krun_kept "removed"; else pass init_krun_kept; fi

# --- ro file volume, hidden names, the root overlay ----------------------------------------------
if out=$( (printf 'x' >> "$M/etc/app.conf") 2>&1 ); then
    fail conf_erofs "append succeeded"
else
    case "$out" in *"Read-only file system"*) pass conf_erofs ;; *) fail conf_erofs "$out" ;; esac
fi
eq hidden_not_listed "$(ls -A "$M/work" | grep -c '^\.git$')" 0
if cat "$M/work/.git/config" >/dev/null 2>&1; then fail hidden_unreachable "read .git/config"; else pass hidden_unreachable; fi
if echo up > "$M/upper.txt" && [ "$(cat "$M/upper.txt")" = up ]; then pass root_write; else fail root_write "cannot write at /"; fi

# --- mv across volumes: EXDEV, the guest copies ---------------------------------------------------
if out=$(mv "$M/work/x" "$M/tmp/" 2>&1); then pass mv_work_to_tmp; else fail mv_work_to_tmp "$out"; fi
eq mv_content "$(cat "$M/tmp/x" 2>&1)" "work $TOKEN"
if [ -e "$M/work/x" ]; then fail mv_source_gone "still there"; else pass mv_source_gone; fi
submounts after_mv

# --- runtime attach and detach through the API socket ---------------------------------------------
echo "VOL-STEP attach"
if wait_for "[ -d '$M/extra' ]" 120; then pass api_attach_visible; else fail api_attach_visible "no $M/extra"; fi
d_extra=$(stat -c %d "$M/extra/." 2>/dev/null)
if [ -n "$d_extra" ] && [ "$d_extra" != "$d_root" ]; then pass api_attach_own_st_dev; else fail api_attach_own_st_dev "$d_extra"; fi
if echo "held $TOKEN" > "$M/extra/f"; then pass api_volume_write; else fail api_volume_write "write"; fi
exec 3< "$M/extra/f"
submounts after_attach
echo "VOL-STEP detach-busy"
if wait_for "[ -s '$M/work/.vol-busy' ]" 120; then
    eq api_detach_busy_409 "$(cat "$M/work/.vol-busy")" 409
else
    fail api_detach_busy_409 "host never answered"
fi
eq api_busy_unchanged "$(cat "$M/extra/f" 2>&1)" "held $TOKEN"
read -r held <&3
eq api_busy_fd_reads "$held" "held $TOKEN"
exec 3<&-
echo "VOL-STEP detach"
if wait_for "[ -s '$M/work/.vol-detach' ]" 120; then
    eq api_detach_204 "$(cat "$M/work/.vol-detach")" 204
else
    fail api_detach_204 "host never answered"
fi
if wait_for "[ ! -e '$M/extra' ]" 60; then pass api_detached_gone; else fail api_detached_gone "$M/extra still there"; fi
submounts after_detach
eq api_detached_not_listed "$(ls -A "$M" | grep -c '^extra$')" 0
submounts after_detach_ls
if cat "$M/extra/f" >/dev/null 2>&1; then fail api_detached_unreachable "read $M/extra/f"; else pass api_detached_unreachable; fi

echo "VOLUMES-DONE pass=$P fail=$F"

# --- pjdfstest in a dir volume, a memfs volume, and the overlay root ------------------------------
for d in "$M/work" "$M/tmp" "$M"; do
    echo "VOL-PJDFSTEST $d"
    echo "INFO mount_id_before $d $(awk -v d="$d" '$5 == d { print $1 }' /proc/self/mountinfo | tr '\n' ' ')"
    BOXFS_MNT=$d sh /guest/pjdfstest.sh
    echo "INFO mount_id_after $d $(awk -v d="$d" '$5 == d { print $1 }' /proc/self/mountinfo | tr '\n' ' ')"
done
exit 0
