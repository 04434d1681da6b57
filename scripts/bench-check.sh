#!/usr/bin/env bash
# bench-check.sh [NAME...]: reruns each benchmark that has a record
# (docs/bench/NAME.txt with FIGURE lines; default: all of them) and names
# every figure whose new median moved from the recorded median by more
# than the recorded spread (max - min), in either direction. Exits 1 if
# one did. Nothing is recorded: see scripts/bench-record.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
names=("$@")
if [ ${#names[@]} = 0 ]; then
  for f in docs/bench/*.txt; do grep -q '^FIGURE' "$f" && names+=("$(basename "$f" .txt)"); done
fi
[ ${#names[@]} -gt 0 ] || { echo "bench-check: no recorded benchmark (scripts/bench-record.sh NAME)"; exit 1; }
moved=0
for name in "${names[@]}"; do
  rec=docs/bench/$name.txt
  [ -f "$rec" ] || { echo "bench-check: no record $rec"; exit 1; }
  # The recorded command's arguments, so that the same run is compared.
  args=$(awk '/^command: /{sub(/^command: scripts\/bench-[a-z-]*\.sh ?/, ""); sub(/ ?\(.*$/, ""); print; exit}' "$rec")
  envs=$(awk '/^command: /{if (match($0, /\((.*)\)$/)) print substr($0, RSTART + 1, RLENGTH - 2); exit}' "$rec")
  echo "== bench-check $name: scripts/bench-$name.sh $args ${envs:+($envs)}"
  new=$(mktemp)
  eval "env $envs scripts/bench-$name.sh $args" > "$new"
  python3 - "$rec" "$new" <<'PY' || moved=1
import sys
def figures(path):
    out = {}
    for line in open(path):
        if line.startswith("FIGURE\t"):
            _, key, lo, med, hi, unit, better, runs = line.rstrip("\n").split("\t")
            out[key] = (float(lo), float(med), float(hi), unit, better)
    return out
rec, new = figures(sys.argv[1]), figures(sys.argv[2])
bad = 0
print(f"{'figure':48} {'recorded median (spread)':>26} {'now':>10}")
for key, (lo, med, hi, unit, better) in rec.items():
    if key not in new:
        print(f"{key:48} {med:>14g} ({hi - lo:g}) {'missing':>10}  MISSING")
        bad += 1
        continue
    now = new[key][1]
    flag = ""
    if abs(now - med) > hi - lo:
        worse = (now < med) == (better == "higher")
        flag = "  MOVED " + ("(worse)" if worse else "(better)")
        bad += 1
    print(f"{key:48} {med:>14g} ({hi - lo:g}) {now:>10g} {unit}{flag}")
sys.exit(1 if bad else 0)
PY
  rm -f "$new"
done
exit $moved
