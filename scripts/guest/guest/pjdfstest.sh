#!/bin/sh
# Guest script: run pjdfstest on the share (mounted at $BOXFS_MNT, default /mnt).
#   boxfs.pjdfstest_filter=PATTERN   optional: only run the test cases whose name contains PATTERN
# Output: pjdfstest's own lines ("<name> ok|FAILED|skipped", failure details indented by a tab),
# its "Summary: N failed, N skipped, N passed, ..." line, then "PJDFSTEST-DONE rc=N".
M=${BOXFS_MNT:-/mnt}
D=$M/pjdfstest
export NO_COLOR=1 CLICOLOR=0 RUST_BACKTRACE=0
rm -rf "$D" 2>/dev/null
if ! mkdir -p "$D"; then
    echo "FAIL pjdfstest-mkdir cannot create $D"
    echo "PJDFSTEST-DONE rc=1"
    exit 1
fi
cd "$D" || exit 1
t0=$(cut -d' ' -f1 /proc/uptime)
# shellcheck disable=SC2086
pjdfstest -c /etc/pjdfstest.toml -p "$D" ${BOXFS_PJDFSTEST_FILTER:-}
rc=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "INFO pjdfstest_seconds $(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}')"
cd "$M"
rm -rf "$D" || echo "INFO pjdfstest cleanup failed"
echo "PJDFSTEST-DONE rc=$rc"
exit $rc
