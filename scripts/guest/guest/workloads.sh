#!/bin/bash
# Guest script (bash, the Debian userland of build-userland.sh): real workloads on each target.
#
# Targets (kernel command line boxfs.wl_targets=NAME[:TAG],...; default "root"):
#   root           a directory on the root filesystem itself (the boxfs overlay the guest booted from)
#   NAME:TAG       a virtio-fs device with tag TAG, mounted on /mnt/NAME (e.g. passthrough:pt,memfs:mf)
# Sizes (boxfs.wl_files, wl_tx, wl_bigdir, wl_pymods; defaults are the CI sizes):
#   wl_files=N     files of the generated tree (in N/10 directories; plus symlinks and hard links)
#   wl_tx=T        SQLite transactions per writer process (4 writers)
#   wl_bigdir=M    entries of the big directory
#   wl_pymods=P    generated Python modules compiled by compileall
# Other knobs: boxfs.wl_steps=a,b (only these steps: a partial run, the host test rejects it),
#   boxfs.wl_approx_statfs=NAME,... targets whose statfs may drift (a host directory on a disk
#   other processes write to): checked within 5% of the tree's size instead of exactly.
#   boxfs.wl_pause=S: before and after every step print "WL-MARK TARGET begin|end STEP" and
#   sleep S seconds (outside the step's time), so that the host can read the daemon's request
#   counters while the share is idle (scripts/bench-workloads.sh: SIGUSR2 to boxfsd).
#
# Steps, each checking its result (not only exit status):
#   py_stdlib     import a stdlib module list (root: the userland's /usr/lib/python3.11, which
#                 copies directories up into the overlay's upper; shares: a copy of it on the
#                 share), then again from the __pycache__ files it wrote (none rewritten)
#   create        the tree: N files in N/10 dirs, modes, owners, xattrs, symlinks, hard links
#   git_commit    git init, add, commit; ls-files count exact
#   git_status    status clean
#   git_edit      edit 100 files: status lists exactly those 100
#   git_checkout  checkout -- .: status clean, contents restored
#   git_fsck      fsck --strict clean
#   tar           tar c | tar x with xattrs, numeric owners, hard links, symlinks; manifests equal
#   cp_a          cp -a; manifests equal (sha256 of every file, stat of every entry, xattrs,
#                 hard-link groups)
#   py_compile    compileall of P generated modules, import all from __pycache__, results exact
#   sqlite_wal    4 writers x T transactions + a reader (counts never go down); integrity ok,
#                 exact row count per writer
#   sqlite_journal  the same in rollback-journal mode
#   sqlite_kill   kill -9 of a writer inside a big transaction (WAL and journal mode): the
#                 next opener recovers, integrity ok, the uncommitted rows are gone
#   mmap          MAP_SHARED writes of one process seen by read() and mmap of another; msync,
#                 then a remount (root: drop_caches) shows the data
#   bigdir        M entries: create, ls -f | wc -l exact, stat all, remove all
#   rm_rf         rm -rf of everything; statfs and df back to the baseline
# Opt-in steps (only when wl_steps names them; scripts/bench-workloads.sh --steps), a
# metadata-heavy job on a tree of wl_files files in wl_files/10 directories, packed into a
# tarball on the guest's tmpfs before the first of them (outside their times):
#   meta_untar    tar x of the tarball: file count exact
#   meta_stat     find -exec stat {} + of every entry: entry count exact
#   meta_rm       rm -rf of the tree: gone
#
# Output: "PASS wl/TARGET/STEP seconds=S" or "FAIL wl/TARGET/STEP detail", one per step,
# "WL-TIME TARGET STEP SECONDS IRQS" (IRQS: interrupts of the target's virtio-fs request queues
# during the step, a proxy for round trips), INFO lines, and last "WORKLOADS-DONE pass=N fail=N".
set -u
export LC_ALL=C
N=${BOXFS_WL_FILES:-500}
T=${BOXFS_WL_TX:-20}
M=${BOXFS_WL_BIGDIR:-2000}
PYMODS=${BOXFS_WL_PYMODS:-100}
TARGETS=${BOXFS_WL_TARGETS:-root}
ONLY=${BOXFS_WL_STEPS:-}
PAUSE=${BOXFS_WL_PAUSE:-0}
APPROX=",${BOXFS_WL_APPROX_STATFS:-},"
EDITS=100
[ "$N" -ge $((EDITS * 2)) ] || N=$((EDITS * 2))

PASSES=0
FAILS=0
H=/dev/shm/wl            # helpers and scratch: tmpfs, not a target
mkdir -p "$H"
export GIT_AUTHOR_NAME=boxfs GIT_AUTHOR_EMAIL=boxfs@example.invalid
export GIT_COMMITTER_NAME=boxfs GIT_COMMITTER_EMAIL=boxfs@example.invalid
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null

now() { date +%s.%N; }
# Request-queue interrupts of the device behind mount point $1 (0 when unknown).
irqs() {
    local dev
    dev=$(awk -v m="$1" '$2 == m && $3 == "virtiofs" {print $1}' /proc/mounts | head -n1)
    [ -n "$dev" ] || { echo 0; return; }
    # /sys/fs/virtiofs/N/tag names each device's tag; N's "device" link is the virtio device.
    local d n=0
    for d in /sys/fs/virtiofs/*; do
        [ "$(cat "$d/tag" 2>/dev/null)" = "$dev" ] || continue
        n=$(basename "$(readlink -f "$d/device")")
        awk -v v="$n-requests" '$NF ~ "^" v {for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) s += $i} END {print s + 0}' /proc/interrupts
        return
    done
    echo 0
}

# mark begin|end STEP: with wl_pause, a marker line and an idle pause for the host's counters.
mark() {
    [ "$PAUSE" = 0 ] && return 0
    echo "WL-MARK $TGT $1 $2"
    sleep "$PAUSE"
}

want_step() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# step NAME FUNCTION: runs FUNCTION in a subshell in $D; it prints its failure detail and
# returns non-zero on failure.
step() {
    local name=$1 fn=$2 t0 t1 i0 i1 out rc
    want_step "$name" || return 0
    mark begin "$name"
    i0=$(irqs "$MNT")
    t0=$(now)
    out=$( cd "$D" && set -o pipefail && "$fn" 2>&1 )
    rc=$?
    t1=$(now)
    i1=$(irqs "$MNT")
    local secs
    secs=$(echo "$t1 $t0" | awk '{printf "%.2f", $1 - $2}')
    echo "WL-TIME $TGT $name $secs $((i1 - i0))"
    mark end "$name"
    if [ "$rc" = 0 ]; then
        echo "PASS wl/$TGT/$name seconds=$secs"
        PASSES=$((PASSES + 1))
    else
        echo "FAIL wl/$TGT/$name rc=$rc $(printf '%s' "$out" | tail -n 8 | tr '\n' '|')"
        FAILS=$((FAILS + 1))
    fi
}
# Inside a step (a subshell): report and end the step.
die_in() { echo "$*"; exit 1; }

# ---- helpers (Python) ------------------------------------------------------------------------
cat > "$H/gentree.py" <<'EOF'
# gentree.py ROOT N: N regular files in N/10 directories (d0000/f0000.txt ...), every 10th
# directory also with a symlink, a hard link, an executable, a 0600 file, a file owned by
# 1000:1000 and one with two user.* xattrs. Prints the number of regular-file paths.
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
ndirs = max(1, n // 10)
files = 0
os.mkdir(root)
for d in range(ndirs):
    dp = os.path.join(root, "d%04d" % d)
    os.mkdir(dp)
    for f in range(10):
        i = d * 10 + f
        if i >= n:
            break
        p = os.path.join(dp, "f%04d.txt" % f)
        with open(p, "w") as fh:
            fh.write(("line %d of file %d\n" % (0, i)) * (1 + i % 40))
        files += 1
    if d % 10 == 0:
        os.symlink("f0000.txt", os.path.join(dp, "link"))
        os.symlink("../d%04d/f0001.txt" % ((d + 1) % ndirs), os.path.join(dp, "xlink"))
        os.link(os.path.join(dp, "f0002.txt"), os.path.join(dp, "hard"))
        files += 1
        os.chmod(os.path.join(dp, "f0003.txt"), 0o755)
        os.chmod(os.path.join(dp, "f0004.txt"), 0o600)
        os.chown(os.path.join(dp, "f0005.txt"), 1000, 1000)
        os.setxattr(os.path.join(dp, "f0006.txt"), "user.wl.a", b"value-%d" % d)
        os.setxattr(os.path.join(dp, "f0006.txt"), "user.wl.b", b"\x00\x01binary")
        os.setxattr(dp, "user.wl.dir", b"dir-%d" % d)
print(files)
EOF

cat > "$H/manifest.py" <<'EOF'
# manifest.py DIR [EXCLUDE]: one line per entry below DIR, sorted: path, type, mode, owner, size,
# mtime (seconds, not for symlinks or dirs), symlink target, sha256 of files, user.* xattrs,
# and the hard-link group (the first path of each inode's group).
import hashlib, os, stat, sys
root = sys.argv[1]
exclude = sys.argv[2] if len(sys.argv) > 2 else None
first = {}
lines = []
for dirpath, dirnames, filenames in os.walk(root):
    if exclude and exclude in dirnames:
        dirnames.remove(exclude)
    dirnames.sort()
    for name in sorted(dirnames + filenames):
        p = os.path.join(dirpath, name)
        rel = os.path.relpath(p, root)
        st = os.lstat(p)
        kind = stat.S_IFMT(st.st_mode)
        extra = ""
        if stat.S_ISLNK(st.st_mode):
            extra = "-> " + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                h.update(f.read())
            extra = "sha256 %s mtime %d" % (h.hexdigest(), st.st_mtime)
            key = (st.st_dev, st.st_ino)
            first.setdefault(key, rel)
            extra += " group " + first[key] + " nlink %d" % st.st_nlink
        xa = ""
        if not stat.S_ISLNK(st.st_mode):
            xa = " ".join("%s=%r" % (k, os.getxattr(p, k)) for k in sorted(os.listxattr(p)) if k.startswith("user."))
        lines.append("%s %o %o %d:%d %s %s %s" % (rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_size if not stat.S_ISDIR(kind) else "-", extra, xa))
lines.sort()
sys.stdout.write("\n".join(lines) + "\n")
EOF

cat > "$H/stdlib.py" <<'EOF'
# stdlib.py LIBDIR OUT: imports every top-level module of the stdlib list below from LIBDIR (first
# on sys.path); writes "module path" lines to OUT; fails if a module is missing or came from
# elsewhere (except builtins, frozen and C extension modules, which live outside LIBDIR).
# Prints "IMPORTED FRESH": modules imported, and how many of them were loaded by this run from
# a .py file (the rest were loaded at interpreter start-up, frozen or from lib-dynload).
import importlib, os, sys, warnings
warnings.simplefilter("ignore")
lib, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, lib)
pre = set(sys.modules)
mods = open(os.environ["WL_MODLIST"]).read().split()
bad = []
rows = []
fresh = 0
for m in mods:
    try:
        mod = importlib.import_module(m)
    except Exception as e:
        bad.append("%s: %s" % (m, e))
        continue
    f = getattr(mod, "__file__", None) or ""
    frozen = getattr(getattr(mod, "__spec__", None), "origin", None) == "frozen"
    if m not in pre and not frozen and f.endswith(".py"):
        fresh += 1
        if not f.startswith(lib + "/"):
            bad.append("%s from %s, not %s" % (m, f, lib))
    rows.append("%s %s" % (m, f))
open(out, "w").write("\n".join(rows) + "\n")
if bad:
    print("import failures:", "; ".join(bad[:10]))
    sys.exit(1)
print(len(rows), fresh)
EOF

# The stdlib list: every top-level pure-Python module and package of the userland's Python,
# minus those that start GUIs, print, open browsers or need packages this userland lacks.
python3 - > "$H/modlist" <<'EOF'
import pkgutil, sys
lib = "/usr/lib/python3.%d" % sys.version_info[1]
skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__phello__",
        "__hello__", "ensurepip", "lib2to3", "pydoc_data", "test", "xxlimited", "_pyrepl",
        "sitecustomize", "usercustomize", "dbm", "distutils", "venv", "__main__", "_sysconfigdata__linux_x86_64-linux-gnu",
        "pty", "tty", "curses", "readline", "rlcompleter", "crypt", "nis", "spwd"}
names = sorted(m.name for m in pkgutil.iter_modules([lib]) if m.name not in skip and not m.name.startswith("_"))
print("\n".join(names))
EOF
export WL_MODLIST=$H/modlist

cat > "$H/pymods.py" <<'EOF'
# pymods.py DIR P: P modules in packages of 50 (pkgNN/modMMM.py); each defines a class and
# functions; value() returns a number derived from its index. Prints the expected sum.
import os, sys
root, p = sys.argv[1], int(sys.argv[2])
total = 0
for i in range(p):
    pkg = os.path.join(root, "pkg%02d" % (i // 50))
    if not os.path.isdir(pkg):
        os.makedirs(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").write("")
    body = ["'''generated module %d'''" % i, "import os, re", "K = %d" % i, ""]
    for j in range(8):
        body += ["def f%d(x):" % j, "    y = x * %d + K" % (j + 1), "    return y if y % 3 else -y", ""]
    body += ["class C%d:" % i, "    def __init__(self):", "        self.v = sum(f(K) for f in (%s))" % ", ".join("f%d" % j for j in range(8)),
             "", "def value():", "    return C%d().v" % i, ""]
    open(os.path.join(pkg, "mod%03d.py" % (i % 50)), "w").write("\n".join(body))
    def f(x, j):
        y = x * (j + 1) + i
        return y if y % 3 else -y
    total += sum(f(i, j) for j in range(8))
print(total)
EOF

cat > "$H/pyimport.py" <<'EOF'
# pyimport.py DIR P: imports every generated module, prints the sum of their value().
import importlib, sys
root, p = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, root)
print(sum(importlib.import_module("pkg%02d.mod%03d" % (i // 50, i % 50)).value() for i in range(p)))
EOF

cat > "$H/mmap_writer.py" <<'EOF'
# mmap_writer.py FILE: creates FILE (1 MiB), maps it MAP_SHARED, writes a pattern through the
# mapping, then runs the reader (another process) before any msync; then msync (flush).
import mmap, os, subprocess, sys
path = sys.argv[1]
size = 1 << 20
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, size)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for off in range(0, size, 4096):
    m[off:off + 16] = b"%015d\n" % off
m[size - 5:size] = b"TAIL\n"
r = subprocess.run([sys.executable, os.environ["WL_READER"], path], capture_output=True, text=True)
if r.returncode != 0:
    print("reader before msync:", r.stdout, r.stderr)
    sys.exit(1)
m.flush()
m.close()
os.close(fd)
print("ok")
EOF
cat > "$H/mmap_reader.py" <<'EOF'
# mmap_reader.py FILE: checks the writer's pattern with read() and with a mapping of its own.
import mmap, os, sys
path = sys.argv[1]
size = 1 << 20
with open(path, "rb") as f:
    data = f.read()
if len(data) != size:
    print("size", len(data)); sys.exit(1)
for off in range(0, size, 4096):
    if data[off:off + 16] != b"%015d\n" % off:
        print("read() at", off, data[off:off + 16]); sys.exit(1)
if data[size - 5:] != b"TAIL\n":
    print("read() tail", data[size - 5:]); sys.exit(1)
fd = os.open(path, os.O_RDONLY)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
if m[4096:4112] != b"%015d\n" % 4096 or m[size - 5:] != b"TAIL\n":
    print("mmap view differs"); sys.exit(1)
print("ok")
EOF
export WL_READER=$H/mmap_reader.py

# ---- the steps -------------------------------------------------------------------------------
S_stdlib_copy() {
    rm -rf "$STDLIB"
    cp -a "/usr/lib/python3.11/." "$STDLIB/" || die_in "copy of the stdlib failed"
    find "$STDLIB" -name __pycache__ -prune -exec rm -rf {} +
    # Directory sizes are each filesystem's own business: not compared.
    (cd /usr/lib/python3.11 && find . -mindepth 1 -name __pycache__ -prune -o -printf '%P %y %m %s\n' | sort) \
        | awk '$2 == "d" {$4 = "-"} {print}' > "$H/stdlib.src"
    (cd "$STDLIB" && find . -mindepth 1 -printf '%P %y %m %s\n' | sort) | awk '$2 == "d" {$4 = "-"} {print}' > "$H/stdlib.dst"
    diff "$H/stdlib.src" "$H/stdlib.dst" > "$H/stdlib.diff" \
        || die_in "the copy differs: $(grep '^[<>]' "$H/stdlib.diff" | head -n 6)"
}

S_py_stdlib() {
    local lib=$STDLIB n1 n2
    # Start without bytecode (on the root, the listing of the stdlib above wrote some).
    find "$lib" -name __pycache__ -prune -exec rm -rf {} +
    n1=$(python3 "$H/stdlib.py" "$lib" "$H/imp1") || die_in "first import: $n1"
    set -- $n1
    [ "$1" -ge 100 ] && [ "$2" -ge 50 ] || die_in "only $1 modules imported, $2 from source"
    find "$lib" -name '*.pyc' -printf '%P %s %T@\n' | sort > "$H/pyc1"
    local npy
    npy=$(wc -l < "$H/pyc1")
    [ "$npy" -ge "$2" ] || die_in "$npy .pyc files written for $2 modules loaded from source"
    n2=$(python3 "$H/stdlib.py" "$lib" "$H/imp2") || die_in "second import: $n2"
    [ "$n1" = "$n2" ] || die_in "first import '$n1' modules, second '$n2'"
    cmp -s "$H/imp1" "$H/imp2" || die_in "the second import found other files"
    find "$lib" -name '*.pyc' -printf '%P %s %T@\n' | sort > "$H/pyc2"
    cmp -s "$H/pyc1" "$H/pyc2" || die_in "the second import rewrote .pyc files: $(diff "$H/pyc1" "$H/pyc2" | head -n 4)"
    echo "INFO wl/$TGT/py_stdlib modules=$1 from-source=$2 pyc=$npy" >&2
}

S_create() {
    local files n
    files=$(python3 "$H/gentree.py" tree "$N") || die_in "gentree: $files"
    echo "$files" > "$H/files"
    n=$(find tree -type f | wc -l)
    [ "$n" = "$files" ] || die_in "find counts $n files, created $files"
    [ "$(find tree -type d | wc -l)" = $((N / 10 + 1)) ] || die_in "directory count $(find tree -type d | wc -l)"
    [ "$(stat -c %h tree/d0000/hard)" = 2 ] || die_in "hard link count $(stat -c %h tree/d0000/hard)"
    [ "$(stat -c '%u:%g %a' tree/d0000/f0005.txt)" = "1000:1000 644" ] || die_in "owner $(stat -c '%u:%g %a' tree/d0000/f0005.txt)"
    [ "$(getfattr --only-values -n user.wl.a tree/d0000/f0006.txt)" = value-0 ] || die_in "xattr"
}

S_git_commit() {
    cd tree || return 1
    git init -q . || return 1
    git add -A || return 1
    git commit -q -m "generated tree" || return 1
    local want got
    want=$(( $(find . -path ./.git -prune -o \( -type f -o -type l \) -print | wc -l) ))
    got=$(git ls-files | wc -l)
    [ "$got" = "$want" ] || die_in "ls-files $got, tree has $want"
    [ "$(git rev-list --count HEAD)" = 1 ] || die_in "commits $(git rev-list --count HEAD)"
    [ "$(git ls-files -s d0000/link | cut -c1-6)" = 120000 ] || die_in "symlink not committed as a link"
    [ "$(git ls-files -s d0000/f0003.txt | cut -c1-6)" = 100755 ] || die_in "exec bit lost"
}

S_git_status() {
    cd tree || return 1
    local s
    s=$(git status --porcelain) || return 1
    [ -z "$s" ] || die_in "status not clean: $(echo "$s" | head -n 5)"
}

S_git_edit() {
    cd tree || return 1
    # 100 distinct files, none hard-linked (only f0002.txt ever is).
    find . -path ./.git -prune -o -name 'f*.txt' ! -name f0002.txt -print | sort | head -n $EDITS > "$H/edited"
    [ "$(wc -l < "$H/edited")" = $EDITS ] || die_in "only $(wc -l < "$H/edited") candidates"
    xargs sha256sum < "$H/edited" > "$H/edited.sum"
    while read -r f; do echo "edited" >> "$f"; done < "$H/edited"
    git status --porcelain > "$H/status" || return 1
    [ "$(wc -l < "$H/status")" = $EDITS ] || die_in "status lists $(wc -l < "$H/status") paths: $(head -n 3 "$H/status")"
    [ -z "$(grep -v '^ M ' "$H/status")" ] || die_in "unexpected status lines: $(grep -v '^ M ' "$H/status" | head -n 3)"
    diff <(sed 's/^ M //' "$H/status" | sort) <(sed 's#^\./##' "$H/edited" | sort) >/dev/null \
        || die_in "status lists other paths than the edited ones"
}

S_git_checkout() {
    cd tree || return 1
    git checkout -- . || return 1
    local s
    s=$(git status --porcelain) || return 1
    [ -z "$s" ] || die_in "status after checkout: $(echo "$s" | head -n 5)"
    sha256sum --quiet -c "$H/edited.sum" || die_in "contents not restored"
}

S_git_fsck() {
    cd tree || return 1
    local out
    out=$(git fsck --strict --no-progress --no-dangling 2>&1) || die_in "fsck failed: $out"
    [ -z "$out" ] || die_in "fsck output: $(echo "$out" | head -n 5)"
    [ "$(git count-objects -v | awk '$1 == "count:" {print $2}')" -gt "$(cat "$H/files")" ] \
        || die_in "object count $(git count-objects -v | tr '\n' ' ')"
}

S_tar() {
    mkdir tarcopy || return 1
    tar --xattrs --xattrs-include='user.*' --numeric-owner --exclude=./.git -C tree -cf - . \
        | tar --xattrs --xattrs-include='user.*' --numeric-owner --same-owner -p -C tarcopy -xf - \
        || die_in "tar failed"
    python3 "$H/manifest.py" tree .git > "$H/m.tree" || return 1
    python3 "$H/manifest.py" tarcopy > "$H/m.tar" || return 1
    # Directory mtimes are not compared; the root line (".") is left out (tar sets it, cp too).
    [ "$(wc -l < "$H/m.tree")" -gt "$N" ] || die_in "manifest has $(wc -l < "$H/m.tree") lines"
    diff "$H/m.tree" "$H/m.tar" > "$H/m.diff" || die_in "tar copy differs: $(grep '^<' "$H/m.diff" | head -n 3) $(grep '^>' "$H/m.diff" | head -n 3)"
    (cd tree && find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum) > "$H/s.tree"
    (cd tarcopy && sha256sum --quiet -c "$H/s.tree") || die_in "sha256sum -c failed on the tar copy"
    (cd tree && find . -mindepth 1 -path ./.git -prune -o -printf '%P %y %m %U:%G %s %n %l\n' | sort) > "$H/st.tree"
    (cd tarcopy && find . -mindepth 1 -printf '%P %y %m %U:%G %s %n %l\n' | sort) > "$H/st.tar"
    # Directory sizes are the filesystem's business: drop them from the comparison.
    diff <(awk '$2 != "d"' "$H/st.tree") <(awk '$2 != "d"' "$H/st.tar") >/dev/null \
        || die_in "stat differs: $(diff <(awk '$2 != "d"' "$H/st.tree") <(awk '$2 != "d"' "$H/st.tar") | head -n 4)"
}

S_cp_a() {
    cp -a tarcopy cpcopy || die_in "cp -a failed"
    python3 "$H/manifest.py" cpcopy > "$H/m.cp" || return 1
    diff "$H/m.tar" "$H/m.cp" > "$H/m.diff" || die_in "cp -a copy differs: $(grep '^<' "$H/m.diff" | head -n 3) $(grep '^>' "$H/m.diff" | head -n 3)"
    (cd cpcopy && sha256sum --quiet -c "$H/s.tree") || die_in "sha256sum -c failed on the cp -a copy"
    [ "$(stat -c %i cpcopy/d0000/hard)" = "$(stat -c %i cpcopy/d0000/f0002.txt)" ] || die_in "hard link not kept"
}

S_py_compile() {
    local want got
    want=$(python3 "$H/pymods.py" pymods "$PYMODS") || return 1
    python3 -m compileall -q pymods > "$H/compile.out" 2>&1 || die_in "compileall: $(tail -n 3 "$H/compile.out")"
    local npyc ninit
    npyc=$(find pymods -name '*.pyc' | wc -l)
    ninit=$(( (PYMODS + 49) / 50 ))
    [ "$npyc" = $((PYMODS + ninit)) ] || die_in "$npyc .pyc files for $PYMODS modules + $ninit packages"
    find pymods -name '*.pyc' -printf '%P %s %T@\n' | sort > "$H/pyc.a"
    got=$(python3 "$H/pyimport.py" pymods "$PYMODS") || die_in "import: $got"
    [ "$got" = "$want" ] || die_in "sum $got, want $want"
    find pymods -name '*.pyc' -printf '%P %s %T@\n' | sort > "$H/pyc.b"
    cmp -s "$H/pyc.a" "$H/pyc.b" || die_in "importing rewrote .pyc files (not loaded from __pycache__)"
    # The cached files are bytecode of this interpreter (magic number).
    python3 -c 'import importlib.util,sys,glob
m = importlib.util.MAGIC_NUMBER
bad = [p for p in glob.glob(sys.argv[1] + "/**/*.pyc", recursive=True) if open(p, "rb").read(4) != m]
sys.exit("bad magic: %s" % bad[:3] if bad else 0)' pymods || return 1
}

sqlite_concurrent() { # MODE
    local mode=$1 db=$PWD/$1.db w i
    rm -f "$db" "$db-wal" "$db-shm" "$db-journal"
    sqlite3 "$db" "PRAGMA journal_mode=$mode; CREATE TABLE t(id INTEGER PRIMARY KEY, w INT, i INT, pad TEXT);" >/dev/null \
        || die_in "create failed"
    [ "$(sqlite3 "$db" 'PRAGMA journal_mode;')" = "$(echo "$mode" | tr A-Z a-z)" ] || die_in "journal_mode $(sqlite3 "$db" 'PRAGMA journal_mode;')"
    for w in 1 2 3 4; do
        {
            echo ".timeout 120000"
            for ((i = 0; i < T; i++)); do
                echo "BEGIN IMMEDIATE; INSERT INTO t(w, i, pad) VALUES($w, $i, printf('%0200d', $i)); INSERT INTO t(w, i, pad) VALUES($w, -$i - 1, 'x'); COMMIT;"
            done
        } > "$H/writer$w.sql"
    done
    local pids=()
    for w in 1 2 3 4; do
        sqlite3 "$db" < "$H/writer$w.sql" > "$H/writer$w.out" 2>&1 &
        pids+=($!)
    done
    # The reader: counts never go down while the writers run.
    (
        prev=0
        while :; do
            c=$(sqlite3 -cmd ".timeout 120000" "$db" "SELECT count(*) FROM t;") || { echo "reader: query failed"; exit 1; }
            [ "$c" -ge "$prev" ] || { echo "reader: count went from $prev to $c"; exit 1; }
            prev=$c
            [ -e "$H/writers.done" ] && break
        done
        echo "reader ok last=$prev"
    ) > "$H/reader.out" 2>&1 &
    local rpid=$! bad=0
    rm -f "$H/writers.done"
    for p in "${pids[@]}"; do wait "$p" || bad=1; done
    touch "$H/writers.done"
    wait "$rpid" || die_in "$(cat "$H/reader.out")"
    rm -f "$H/writers.done"
    [ "$bad" = 0 ] || die_in "a writer failed: $(cat "$H"/writer?.out | head -n 4)"
    [ -z "$(cat "$H"/writer?.out)" ] || die_in "writer output: $(cat "$H"/writer?.out | head -n 4)"
    [ "$(sqlite3 "$db" 'PRAGMA integrity_check;')" = ok ] || die_in "integrity_check: $(sqlite3 "$db" 'PRAGMA integrity_check;' | head -n 3)"
    local got want
    got=$(sqlite3 "$db" 'SELECT w, count(*), count(DISTINCT i) FROM t GROUP BY w;' | tr '\n' ' ')
    want="1|$((2 * T))|$((2 * T)) 2|$((2 * T))|$((2 * T)) 3|$((2 * T))|$((2 * T)) 4|$((2 * T))|$((2 * T)) "
    [ "$got" = "$want" ] || die_in "rows per writer: got '$got' want '$want'"
    [ "$(sqlite3 "$db" 'SELECT count(*) FROM t;')" = $((8 * T)) ] || die_in "row count"
}
S_sqlite_wal() { sqlite_concurrent WAL; }
S_sqlite_journal() { sqlite_concurrent DELETE; }

sqlite_kill() { # MODE
    local mode=$1 db=$PWD/kill-$1.db
    rm -f "$db" "$db-wal" "$db-shm" "$db-journal"
    sqlite3 "$db" "PRAGMA journal_mode=$mode; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000)
        INSERT INTO t(v) SELECT printf('%0100d', x) FROM c;" >/dev/null || die_in "setup"
    local fifo=$H/kill.fifo out=$H/kill.out
    rm -f "$fifo" "$out"; mkfifo "$fifo"
    # The writer reads its commands from the FIFO: a big transaction (a tiny page cache makes
    # it spill pages to the database or the WAL before the commit), then it waits for more input.
    sqlite3 "$db" < "$fifo" > "$out" 2>&1 &
    local pid=$!
    exec 7> "$fifo"
    echo "PRAGMA cache_size=10; BEGIN; WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) INSERT INTO t(v) SELECT printf('%0300d', x) FROM c; UPDATE t SET v = 'changed' WHERE id <= 1000; SELECT 'IN-TX', count(*) FROM t;" >&7
    local i
    for ((i = 0; i < 6000; i++)); do grep -q 'IN-TX' "$out" 2>/dev/null && break; sleep 0.05; done
    grep -q 'IN-TX|6000' "$out" || { kill -9 $pid; exec 7>&-; die_in "the writer never got inside its transaction: $(cat "$out")"; }
    if [ "$mode" = WAL ]; then
        [ -s "$db-wal" ] || { kill -9 $pid; exec 7>&-; die_in "no WAL content before the kill"; }
    else
        [ -s "$db-journal" ] || { kill -9 $pid; exec 7>&-; die_in "no rollback journal before the kill"; }
    fi
    kill -9 $pid
    wait $pid 2>/dev/null
    exec 7>&-
    rm -f "$fifo"
    [ "$(sqlite3 "$db" 'PRAGMA integrity_check;')" = ok ] || die_in "integrity_check after the kill: $(sqlite3 "$db" 'PRAGMA integrity_check;' | head -n 3)"
    [ "$(sqlite3 "$db" "SELECT count(*), sum(v = 'changed') FROM t;")" = "1000|0" ] \
        || die_in "after recovery: $(sqlite3 "$db" "SELECT count(*), sum(v = 'changed') FROM t;"), want 1000|0"
    [ "$mode" = WAL ] || [ ! -s "$db-journal" ] || die_in "hot journal left after recovery"
    # Still writable after the recovery.
    sqlite3 "$db" "INSERT INTO t(v) VALUES('after');" || die_in "write after recovery"
    [ "$(sqlite3 "$db" 'SELECT count(*) FROM t;')" = 1001 ] || die_in "count after the new write"
}
S_sqlite_kill() { sqlite_kill WAL && sqlite_kill DELETE; }

S_mmap() {
    python3 "$H/mmap_writer.py" "$PWD/mapped" || return 1
    local want
    want=$(sha256sum < mapped)
    # Remount: the data must come back from the daemon, not the guest's page cache.
    cd /
    if [ "$TGT" = root ]; then
        sync; echo 3 > /proc/sys/vm/drop_caches
    else
        umount "$MNT" || die_in "umount $MNT failed"
        mount -t virtiofs "$TAG" "$MNT" || die_in "remount of $TAG failed"
    fi
    cd "$D" || return 1
    [ "$(sha256sum < mapped)" = "$want" ] || die_in "content after remount differs"
    python3 "$WL_READER" "$PWD/mapped" || die_in "pattern after remount"
}

S_bigdir() {
    mkdir big && cd big || return 1
    seq -f 'entry-%07g' 1 "$M" | xargs touch || die_in "create failed"
    local n
    n=$(ls -f | wc -l)
    [ "$n" = $((M + 2)) ] || die_in "ls -f lists $n entries, want $((M + 2))"
    n=$(ls -f | grep '^entry-' | xargs stat -c '%s %h' | grep -c '^0 1$')
    [ "$n" = "$M" ] || die_in "stat of all: $n of $M as expected"
    [ "$(ls -f | grep '^entry-' | sort | uniq | wc -l)" = "$M" ] || die_in "duplicate names in the listing"
    ls -f | grep '^entry-' | xargs rm -- || die_in "remove failed"
    n=$(ls -f | wc -l)
    [ "$n" = 2 ] || die_in "after removing all, ls -f lists $n"
    cd .. && rmdir big || die_in "rmdir of the emptied directory"
}

S_meta_untar() {
    tar -xf "$H/meta.tar" -C . || die_in "tar x failed"
    local n
    n=$(find meta -type f | wc -l)
    [ "$n" = "$(cat "$H/meta.files")" ] || die_in "untarred $n files, the tarball has $(cat "$H/meta.files")"
}

S_meta_stat() {
    local n
    n=$(find meta -exec stat -c '%i %s %Y' {} + | wc -l)
    [ "$n" = "$(cat "$H/meta.entries")" ] || die_in "stat of $n entries, the tree has $(cat "$H/meta.entries")"
}

S_meta_rm() {
    rm -rf meta || die_in "rm -rf failed"
    [ ! -e meta ] || die_in "meta still exists"
}

# The opt-in metadata job's tarball, on the guest's tmpfs (not timed).
meta_prepare() {
    [ -f "$H/meta.tar" ] && return 0
    rm -rf "$H/metasrc" && mkdir -p "$H/metasrc" || return 1
    python3 "$H/gentree.py" "$H/metasrc/meta" "$N" > "$H/meta.files" || return 1
    find "$H/metasrc/meta" | wc -l > "$H/meta.entries"
    tar -cf "$H/meta.tar" -C "$H/metasrc" meta || return 1
    rm -rf "$H/metasrc"
}

S_rm_rf() {
    cd / || return 1
    rm -rf "$D" || die_in "rm -rf failed"
    [ ! -e "$D" ] || die_in "$D still exists"
    sync
    statfs_check "$BASE1" "after rm -rf"
}

statfs_now() { stat -f -c '%b %f %a %c %d' "$MNT"; }   # blocks, bfree, bavail, files, ffree
statfs_check() { # BASELINE WHAT
    local now
    now=$(statfs_now)
    if [[ "$APPROX" == *",$TGT,"* ]]; then
        # A host directory on a shared disk: other processes change its free space. The tree's
        # blocks and inodes must be back, within 5% of the peak usage of the run.
        local ok
        ok=$(echo "$1 $now $PEAK" | awk '{
            used0 = $1 - $2; used1 = $6 - $7; peak = $11 - $12;
            d = used1 - used0; if (d < 0) d = -d;
            i0 = $4 - $5; i1 = $9 - $10; ip = $14 - $15; di = i1 - i0; if (di < 0) di = -di;
            print (d * 20 <= (peak - used0) + 1024 && di * 20 <= (ip - i0) + 16) ? "ok" : "no" }')
        [ "$ok" = ok ] || die_in "statfs $2: $now, baseline $1, peak $PEAK (approximate)"
    else
        [ "$now" = "$1" ] || die_in "statfs $2: '$now', baseline '$1' (blocks bfree bavail files ffree)"
        local dfn
        dfn=$(df -k "$MNT" | awk 'NR == 2 {print $2, $3, $4}')
        [ "$dfn" = "$DF1" ] || die_in "df $2: '$dfn', baseline '$DF1'"
    fi
}

# ---- run every target ------------------------------------------------------------------------
echo "INFO workloads: files=$N tx=$T bigdir=$M pymods=$PYMODS targets=$TARGETS $(python3 --version) $(git --version) sqlite $(sqlite3 --version | cut -d' ' -f1)"
echo "INFO workloads: stdlib list of $(wc -l < "$WL_MODLIST") modules"
for spec in ${TARGETS//,/ }; do
    TGT=${spec%%:*}
    TAG=""
    [ "$spec" = "$TGT" ] || TAG=${spec#*:}
    if [ "$TGT" = root ]; then
        MNT=/
        D=/wl
        STDLIB=/usr/lib/python3.11
    else
        MNT=/mnt/$TGT
        D=$MNT/wl
        STDLIB=$MNT/wl-stdlib
        mkdir -p "$MNT"
        if ! mount -t virtiofs "$TAG" "$MNT"; then
            echo "FAIL wl/$TGT/mount tag $TAG"
            FAILS=$((FAILS + 1))
            continue
        fi
    fi
    echo "INFO wl/$TGT on $MNT: $(awk -v m="$MNT" '$2 == m' /proc/mounts | head -n1)"
    BASE0=$(statfs_now)
    DF0=$(df -k "$MNT" | awk 'NR == 2 {print $2, $3, $4}')
    D_SAVE=$D
    D=/
    [ "$TGT" = root ] || step stdlib_copy S_stdlib_copy
    step py_stdlib S_py_stdlib
    D=$D_SAVE
    rm -rf "$D"
    sync
    BASE1=$(statfs_now)
    DF1=$(df -k "$MNT" | awk 'NR == 2 {print $2, $3, $4}')
    mkdir -p "$D"
    if [[ ",$ONLY," == *",meta_"* ]]; then
        meta_prepare || echo "FAIL wl/$TGT/meta_prepare"
        step meta_untar S_meta_untar
        step meta_stat S_meta_stat
        step meta_rm S_meta_rm
    fi
    step create S_create
    step git_commit S_git_commit
    step git_status S_git_status
    step git_edit S_git_edit
    step git_checkout S_git_checkout
    step git_fsck S_git_fsck
    step tar S_tar
    step cp_a S_cp_a
    step py_compile S_py_compile
    step sqlite_wal S_sqlite_wal
    step sqlite_journal S_sqlite_journal
    step sqlite_kill S_sqlite_kill
    step mmap S_mmap
    step bigdir S_bigdir
    sync
    PEAK=$(statfs_now)
    step rm_rf S_rm_rf
    if [ "$TGT" != root ] && [ -z "$ONLY" ]; then
        # The stdlib copy too: the share is back to how it was before the run.
        rm -rf "$STDLIB"; sync
        BASE1=$BASE0 DF1=$DF0
        if out=$(statfs_check "$BASE0" "after removing everything" 2>&1); then
            echo "INFO wl/$TGT statfs back to the first baseline"
        else
            echo "FAIL wl/$TGT/statfs_initial $out"
            FAILS=$((FAILS + 1))
        fi
        cd /
        umount "$MNT" || { echo "FAIL wl/$TGT/umount"; FAILS=$((FAILS + 1)); }
    fi
done
echo "WORKLOADS-DONE pass=$PASSES fail=$FAILS"
