#!/usr/bin/env bash
# bench-doc.sh: puts each recorded benchmark output (docs/bench/NAME.txt)
# into docs/benchmarks.md, between the lines
#   <!-- bench:NAME -->  and  <!-- /bench:NAME -->
# as a code block, as the script printed it: the tables are never edited
# by hand. The prose around them is.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import pathlib, re
doc = pathlib.Path("docs/benchmarks.md")
text = doc.read_text()
def fill(m):
    name = m.group(1)
    rec = pathlib.Path(f"docs/bench/{name}.txt")
    if not rec.exists():
        body = f"(no record: run `scripts/bench-record.sh {name}`)\n"
    else:
        # FIGURE lines are for bench-check; the table shows the rest.
        lines = [l for l in rec.read_text().splitlines() if not l.startswith("FIGURE\t")]
        body = "```\n" + "\n".join(lines).strip("\n") + "\n```\n"
    return f"<!-- bench:{name} -->\n{body}<!-- /bench:{name} -->"
new = re.sub(r"<!-- bench:([\w-]+) -->.*?<!-- /bench:\1 -->", fill, text, flags=re.S)
if new != text:
    doc.write_text(new)
PY
