# benchlib.sh: what every bench script shares (sourced, not run).
#
#   bench_begin TITLE   the header: command, commit, machine, date; puts the
#                       script and everything it starts into a cgroup of its
#                       own, so that the load of other processes shows.
#   load_mark           start of a measured run.
#   load_other          after the run: the CPU that processes outside the
#                       benchmark used meanwhile, in % of one core.
#   load_flag PCT       "" if PCT <= BENCH_MAX_OTHER (10), else " (busy)".
#   spread V...         "min/median/max" of the values (numbers).
#   figure KEY UNIT BETTER V...
#                       one machine-readable line per figure, read by
#                       scripts/bench-check.sh and scripts/bench-doc.sh:
#                       FIGURE<TAB>KEY<TAB>min<TAB>median<TAB>max<TAB>UNIT<TAB>BETTER<TAB>runs
#                       (BETTER: higher or lower).
#   aoe_peer            PEER=vblade, or PEER=peer when PEER_FABRICD names
#                       another fabricd build (the AoE benchmarks' A/B mode).
#   aoe_summary RUNS PREFIX "COLUMNS" MBFMT
#                       the AoE benchmarks' summary: RUNS holds a line per
#                       run, the point's COLUMNS, then target, MB/s, CPU
#                       s/GiB (tab separated); prints each point's
#                       min/median/max for fabric and $PEER, the ratios of
#                       the medians and the goal (at most 0.7x vblade's CPU
#                       per GiB, at least its throughput), and FIGURE lines
#                       keyed PREFIX.POINT.
#   BENCH_CGROUP=0      no cgroup (the load figure is then the machine's).
#
# Other load: the machine's busy time from /proc/stat minus the cgroup's
# CPU time (cgroup v2 cpu.stat, or v1 cpuacct) and minus the kernel's own
# threads (children of kthreadd: the journal commits of a server's fsyncs,
# softirq work), which work for the benchmark as much as for anyone, over
# the run. Without a cgroup it is the machine's whole busy time, benchmark
# included, and the header says so.

BENCH_MAX_OTHER=${BENCH_MAX_OTHER:-10}
BENCH_CG=

bench_begin() {
  local title=$1 rev dirty=""
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || dirty="+changes"
  _bench_cgroup
  echo "== $title"
  echo "command: ${BENCH_COMMAND:-$0 $*}"
  echo "commit:  $rev$dirty"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), $(date -u +%FT%TZ)"
  if [ -n "$BENCH_CG" ]; then
    echo "load:    other processes' CPU during each run, in % of a core (cgroup $BENCH_CG); a run above ${BENCH_MAX_OTHER}% is marked (busy)"
  else
    echo "load:    no cgroup here: the figure is the machine's whole busy CPU, benchmark included"
  fi
}

_bench_cgroup() {
  local d
  if [ "${BENCH_CGROUP:-1}" = 0 ]; then
    :
  elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    d=/sys/fs/cgroup/fabric-bench-$$
    mkdir -p "$d" 2>/dev/null && echo $$ > "$d/cgroup.procs" 2>/dev/null && BENCH_CG=$d && _bench_usage() { awk '/^usage_usec/{print $2 * 1000}' "$BENCH_CG/cpu.stat"; }
  elif [ -d /sys/fs/cgroup/cpuacct ]; then
    d=/sys/fs/cgroup/cpuacct/fabric-bench-$$
    mkdir -p "$d" 2>/dev/null && echo $$ > "$d/cgroup.procs" 2>/dev/null && BENCH_CG=$d && _bench_usage() { cat "$BENCH_CG/cpuacct.usage"; }
  fi
  if [ -z "$BENCH_CG" ]; then
    _bench_usage() { echo 0; }
  fi
}

# bench_end leaves the cgroup (call it from the script's cleanup, after
# its processes are gone).
bench_end() {
  [ -n "$BENCH_CG" ] || return 0
  local parent
  parent=$(dirname "$BENCH_CG")
  echo $$ > "$parent/cgroup.procs" 2>/dev/null || true
  rmdir "$BENCH_CG" 2>/dev/null || true
  BENCH_CG=
}

# Busy nanoseconds of the whole machine (user, nice, system, irq, softirq,
# steal; USER_HZ is 100).
_bench_busy() { awk '/^cpu /{printf "%.0f\n", ($2+$3+$4+$7+$8+$9) * 10000000}' /proc/stat; }

# CPU nanoseconds of the kernel's threads (the children of kthreadd).
# A process that exits between the glob and its read makes cat fail: not
# an error here (under set -e -o pipefail it ended a whole benchmark).
_bench_kthreads() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{ sub(/^.*\) /, ""); if ($2 == 2) t += $12 + $13 } END { printf "%.0f\n", t * 10000000 }'
}

load_mark() {
  _L_BUSY=$(_bench_busy); _L_CG=$(_bench_usage); _L_K=$(_bench_kthreads); _L_T=$(date +%s%N)
}

load_other() {
  local busy cg k t
  busy=$(_bench_busy); cg=$(_bench_usage); k=$(_bench_kthreads); t=$(date +%s%N)
  awk -v b=$((busy - _L_BUSY)) -v c=$((cg - _L_CG)) -v k=$((k - _L_K)) -v t=$((t - _L_T)) \
    'BEGIN { o = (b - c - k) * 100 / t; if (o < 0) o = 0; printf "%.0f\n", o }'
}

load_flag() {
  [ "$1" -le "$BENCH_MAX_OTHER" ] && return 0
  echo " (busy)"
}

spread() {
  printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {printf "%s/%s/%s\n", v[1], v[int((NR+1)/2)], v[NR]}'
}

figure() {
  local key=$1 unit=$2 better=$3
  shift 3
  printf '%s\n' "$@" | sort -g | awk -v k="$key" -v u="$unit" -v b="$better" \
    '{v[NR]=$1} END {printf "FIGURE\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", k, v[1], v[int((NR+1)/2)], v[NR], u, b, NR}'
}

# table_figures PREFIX FILE: FIGURE lines for the min/median/max cells
# ("a / b / c" or "a/b/c", units after the numbers allowed) of the markdown
# tables in FILE, for the benchmarks whose Go tests print tables. The key
# is PREFIX.ROW.COLUMN (the row's text cells and the column header,
# lowercased, runs of other characters as _); a column counting throughput
# (MB/s, MiB/s, IOPS, per s) is better higher, anything else (times,
# latencies, stalls) lower.
table_figures() {
  python3 - "$1" "$2" <<'PY'
import re, sys
prefix, path = sys.argv[1:]
num = r"(-?[0-9.]+)\s*[a-zµ]*"
triple = re.compile(rf"^\s*{num}\s*/\s*{num}\s*/\s*{num}\s*$")
def slug(s):
    return re.sub(r"[^a-z0-9]+", "_", s.lower().replace("µ", "u")).strip("_")
header = None
for line in open(path):
    line = line.rstrip("\n")
    if not line.startswith("|"):
        header = None
        continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    if header is None:
        header = cells
        continue
    if all(set(c) <= set("-: ") for c in cells):
        continue
    label = "_".join(slug(c) for c in cells if c and not triple.match(c))
    for col, c in zip(header, cells):
        m = triple.match(c)
        if not m:
            continue
        better = "higher" if re.search(r"mb/s|mib/s|iops|/s\b|per s", col.lower()) else "lower"
        unit = re.sub(r"\s*min.*$", "", col).strip() or "value"
        print(f"FIGURE\t{prefix}.{label}.{slug(unit)}\t{m.group(1)}\t{m.group(2)}\t{m.group(3)}\t{unit}\t{better}\t0")
PY
}

aoe_peer() {
  PEER=vblade
  if [ -n "${PEER_FABRICD:-}" ]; then
    PEER=peer
    [ -x "$PEER_FABRICD" ] || { echo "PEER_FABRICD=$PEER_FABRICD: not an executable" >&2; exit 1; }
  else
    command -v vblade >/dev/null || { echo "vblade missing: run scripts/deps.sh" >&2; exit 1; }
  fi
}

aoe_summary() {
  echo "over $ROUNDS rounds, min/median/max; ratios are fabric's median over $PEER's (goal against vblade: CPU per GiB at most 0.7x, throughput at least 1x)"
  python3 - "$1" "$PEER" "$2" "$3" "$4" <<'PY'
import sys, statistics
runs, peer, prefix, columns, mbfmt = sys.argv[1:]
cols = columns.split()
pts = {}
for line in open(runs):
    f = line.rstrip("\n").split("\t")
    point, t, mbps, cpu = tuple(f[:len(cols)]), f[len(cols)], float(f[-2]), float(f[-1])
    pts.setdefault(point, {}).setdefault(t, []).append((mbps, cpu))
widths = [max([len(c)] + [len(p[i]) for p in pts]) for i, c in enumerate(cols)]
def sp(v, fmt):
    v = sorted(v)
    return "/".join(fmt.format(x) for x in (v[0], statistics.median(v), v[-1]))
label = lambda vals: " ".join(f"{x:<{n}}" for x, n in zip(vals, widths))
print(f"{label(cols)} {'fabric MB/s':>16} {peer + ' MB/s':>16} {'fabric CPU s/GiB':>18} {peer + ' CPU s/GiB':>18} {'CPU':>6} {'MB/s':>6}  goal")
met = total = 0
figs = []
for point, by in pts.items():
    if "fabric" not in by or peer not in by:
        continue
    fm, fc = [x[0] for x in by["fabric"]], [x[1] for x in by["fabric"]]
    vm, vc = [x[0] for x in by[peer]], [x[1] for x in by[peer]]
    cr = statistics.median(fc) / statistics.median(vc)
    mr = statistics.median(fm) / statistics.median(vm)
    ok = cr <= 0.7 and mr >= 1.0
    met += ok; total += 1
    print(f"{label(point)} {sp(fm, mbfmt):>16} {sp(vm, mbfmt):>16} {sp(fc, '{:.2f}'):>18} {sp(vc, '{:.2f}'):>18} {cr:5.2f}x {mr:5.2f}x  {('met' if ok else 'not met') if peer == 'vblade' else '-'}")
    key = prefix + "." + ".".join(point)
    figs.append((key + ".fabric_mb_per_s", "MB/s", "higher", fm))
    figs.append((key + ".fabric_cpu_s_per_gib", "s/GiB", "lower", fc))
    figs.append((key + f".{peer}_cpu_s_per_gib", "s/GiB", "lower", vc))
if peer == "vblade":
    print(f"goal met at {met} of {total} points")
for key, unit, better, v in figs:
    v = sorted(v)
    print(f"FIGURE\t{key}\t{v[0]:g}\t{statistics.median(v):g}\t{v[-1]:g}\t{unit}\t{better}\t{len(v)}")
PY
}
