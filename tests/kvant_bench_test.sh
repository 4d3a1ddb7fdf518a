#!/usr/bin/env bash
# kvant-bench's context size (-c): the runs take it (JSON n_ctx, the table's test
# column), the default is the least the tests need, and one too small is refused with
# the sizes named.
#   kvant_bench_test.sh BIN_DIR
set -euo pipefail
bin=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
"$bin/kvant-convert" --synthetic tiny --dtype q4 -o "$tmp/tiny.kvant" -q
bench() { "$bin/kvant-bench" -m "$tmp/tiny.kvant" -p 0 -n 4 -d 8 -r 1 -t 1 -q "$@"; }
bench --json > "$tmp/default.json"
bench --json -c 200 > "$tmp/ctx.json"
python3 - "$tmp/default.json" "$tmp/ctx.json" <<'PY' || fail "JSON"
import json, sys
default, ctx = (json.loads(open(p).read()) for p in sys.argv[1:3])
assert default["n_ctx"] == 8 + 4 + 1, default
assert ctx["n_ctx"] == 200 and ctx["tokens_per_second"] > 0, ctx
PY
bench -c 200 | grep -qE '^\| synthetic-tiny .*\| tg4 \(context 200\) \| 8 \|' || fail "the table does not name the context"
if bench -c 12 2> "$tmp/err"; then fail "a context too small was accepted"; fi
grep -q -- "--ctx 12 is too small: depth 8 and a test of 4 tokens need 13" "$tmp/err" || fail "small context: $(cat "$tmp/err")"
echo "kvant-bench: ok"
