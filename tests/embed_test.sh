#!/usr/bin/env bash
# The installed package works for a program of one's own: cmake --install into a
# temporary prefix, then examples/embed (a separate CMake project, find_package(kvant))
# and examples/simple/simple.c (plain cc with pkg-config) build against it and run.
#   embed_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
SRC=$1 BUILD=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$BUILD" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/lib/libkvant.a" -a -f "$work/prefix/include/kvant.h" -a -f "$work/prefix/bin/kvant-chat"
"$BUILD/bin/kvant-convert" "$SRC/tests/data/fixtures/llama" --dtype q8 -o "$work/model.kvant" --quiet

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$SRC/examples/embed" -B "$work/embed" "${generator[@]}" -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/cmake.log" 2>&1 ||
  { cat "$work/cmake.log"; exit 1; }
cmake --build "$work/embed" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
out=$("$work/embed/embed" "$work/model.kvant")
echo "$out"
grep -q '^answer 1: ' <<<"$out"
grep -qE '^turn 2 prefilled [0-9]+ new tokens' <<<"$out"
echo "ok: examples/embed built with find_package(kvant) and ran"

export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -O2 -o "$work/simple" "$SRC/examples/simple/simple.c" $(pkg-config --cflags --libs kvant)
"$work/simple" "$work/model.kvant" "Hello" >"$work/simple.out"
test -s "$work/simple.out"
echo "ok: examples/simple built with pkg-config and ran"
