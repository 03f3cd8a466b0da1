#!/usr/bin/env bash
# boxfs against virtiofsd and the host syscall floor: one table (boxfsd/benches/vs_virtiofsd.rs).
#
#   scripts/bench.sh                 installs virtiofsd when missing (cargo install; Debian
#                                    packages libcap-ng-dev libseccomp-dev), builds boxfsd and
#                                    the load generator (release), runs every workload
#   BOXFS_BENCH_SECS=5 BOXFS_BENCH_ROUNDS=5 BOXFS_BENCH_DEPTH=16 scripts/bench.sh
#   BOXFS_BENCH_ONLY=getattr BOXFS_BENCH_DEPTH=8 BOXFS_BENCH_QUEUES=1,2 scripts/bench.sh
#                                    request-queue scaling (boxfsd --request-queues 2, one
#                                    load-generator thread per queue)
#   BOXFS_BENCH_BASELINE=/path/to/old/boxfsd scripts/bench.sh
#                                    a before/after comparison alternated in the same run
# Every knob is described at the top of boxfsd/benches/vs_virtiofsd.rs.
#
# Run it on an otherwise idle machine: every daemon shares the same cores as the load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v virtiofsd >/dev/null 2>&1; then
    scripts/guest/install-deps.sh --with-virtiofsd
fi
VIRTIOFSD="$(command -v virtiofsd)" exec cargo bench -p boxfsd --bench vs_virtiofsd
