#!/usr/bin/env bash
# tools/gpu-ab on the CPU: two variants of this build, the second with an environment
# setting (KVANT_CPU=scalar), on a tiny model that gpu-ab makes itself; checks the runs'
# JSON (the setting reached only its variant) and the table.
#   gpu_ab_test.sh SOURCE_DIR BIN_DIR
set -euo pipefail
src=$1 bin=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
"$src/tools/gpu-ab" -o "$tmp/out" -r 2 plain="$bin" scalar="$bin",KVANT_CPU=scalar \
  -- -m "$tmp/models/tiny-q4.kvant" -p 0 -n 4 -r 1 -t 1 > "$tmp/stdout"
cat "$tmp/stdout"
[ -f "$tmp/models/tiny-q4.kvant" ] || fail "the model was not made"
python3 - "$tmp/out/ab.jsonl" <<'PY' || fail "ab.jsonl"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 4, rows
assert [(r["round"], r["variant"]) for r in rows] == [(1, "plain"), (1, "scalar"), (2, "scalar"), (2, "plain")], rows
assert all(r["test"] == "tg4" and r["tokens_per_second"] > 0 for r in rows), rows
assert all(r["simd"] == "scalar" for r in rows if r["variant"] == "scalar"), rows
PY
grep -qE '^\| plain \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| - \|$' "$tmp/out/ab.md" || fail "no row for plain"
grep -qE '^\| scalar \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [+-][0-9.]+% \|$' "$tmp/out/ab.md" || fail "no row for scalar"
cmp -s <(sed -n '/^Device/,$p' "$tmp/stdout") "$tmp/out/ab.md" || fail "the printed table differs from ab.md"
# A value with commas (a part without '=' continues the value before it).
python3 - "$src/tools/gpu-ab" <<'PY' || fail "values with commas"
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("gpu_ab", sys.argv[1])
m = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_ab", loader))
loader.exec_module(m)
_, _, variants, _ = m.parse_args(["x=d,A=1,B=p,q,r", "y=e", "--", "-m", "m"])
assert [(n, str(d), env) for n, d, env in variants] == [("x", "d", {"A": "1", "B": "p,q,r"}), ("y", "e", {})], variants
PY
if "$src/tools/gpu-ab" x="$bin",p -- -m m 2> "$tmp/err"; then fail "a setting without '=' was accepted"; fi
grep -q "environment settings are VAR=VALUE, not 'p'" "$tmp/err" || fail "setting without '=': $(cat "$tmp/err")"
# Bad arguments are refused, naming what is wrong.
if "$src/tools/gpu-ab" x="$tmp/missing" -- -m m 2> "$tmp/err"; then fail "a missing build was accepted"; fi
grep -q "is neither a directory" "$tmp/err" || fail "missing build: $(cat "$tmp/err")"
if "$src/tools/gpu-ab" plain="$bin" 2> "$tmp/err"; then fail "no '--' was accepted"; fi
grep -q "no '--'" "$tmp/err" || fail "no '--': $(cat "$tmp/err")"
echo "gpu-ab: ok"
