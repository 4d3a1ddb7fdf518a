#!/usr/bin/env bash
# tools/ncu-stalls on a made-up export in the shape of `ncu --page source --csv
# --print-source sass` (two kernels, one profiled twice): shares by reason, the
# instructions that ran, the top list, and clear refusals of files that are not such an export.
#   ncu_stalls_test.sh SOURCE_DIR
set -euo pipefail
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
header='"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_long_sb","stall_no_inst","stall_wait","stall_no_inst (Not Issued)"'
{
  echo '"Kernel Name","void k<1>(int)",'
  echo "$header"
  echo '"0x10","LDG.E R2, [R4.64]","0","128","0","0","0","0"'
  echo '"0x20","FADD R3, R2, R2","6","128","6","0","0","0"'
  echo '"0x30","BRA 0x50","0","0","0","0","0","0"'
  echo '"0x40","EXIT","2","128","0","1","1","1"'
  echo '"Kernel Name","void k<1>(int)",'
  echo "$header"
  echo '"0x10","LDG.E R2, [R4.64]","99","128","0","99","0","99"'
  echo '"Kernel Name","void other(float)",'
  echo "$header"
  echo '"0x10","EXIT","4","32","0","0","4","0"'
} > "$tmp/src.csv"
"$src/tools/ncu-stalls" -n 1 "$tmp/src.csv" > "$tmp/out"
cat "$tmp/out"
grep -qx 'void k<1>(int)' "$tmp/out" || fail "no first kernel"
[ "$(grep -c '^void k<1>(int)$' "$tmp/out")" = 1 ] || fail "a kernel profiled twice was reported twice"
grep -qx '  8 samples; 3 of 4 instructions ran' "$tmp/out" || fail "samples or instructions that ran"
grep -qx '  long_sb 75%, no_inst 12%, wait 12%' "$tmp/out" || fail "shares by reason"
grep -qE '^ +1 +0x20 +6  FADD R3, R2, R2 +long_sb 6$' "$tmp/out" || fail "top instruction"
! grep -q 'EXIT' <(sed -n '/^void k/,/^$/p' "$tmp/out") || fail "-n 1 listed more than one instruction"
grep -qx '  wait 100%' "$tmp/out" || fail "second kernel"
echo '"Address","Source"' > "$tmp/bad.csv"
if "$src/tools/ncu-stalls" "$tmp/bad.csv" 2> "$tmp/err"; then fail "an export without kernels was accepted"; fi
grep -q "no 'Kernel Name' line" "$tmp/err" || fail "no kernels: $(cat "$tmp/err")"
if "$src/tools/ncu-stalls" "$tmp/missing.csv" 2> "$tmp/err"; then fail "a missing file was accepted"; fi
grep -q "cannot read" "$tmp/err" || fail "missing file: $(cat "$tmp/err")"
echo "ncu_stalls_test: ok"
