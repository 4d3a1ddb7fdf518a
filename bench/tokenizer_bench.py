#!/usr/bin/env python3
"""Encoding throughput of the Hugging Face `tokenizers` library on one thread, measured
the way kvant-tokenizer-bench measures kvant's (same text, same modes, same checksum).

    bench/tokenizer_bench.py MODEL_DIR/tokenizer.json text.txt [--mode whole|lines] [--repeat 5]

whole: tokenizer.encode(text); lines: tokenizer.encode_batch(lines), each line with its
newline (a Rust loop, so Python's per-call cost does not count against tokenizers).
"""
import argparse
import os
import time

# One thread: set before tokenizers starts its thread pool.
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"

from tokenizers import Tokenizer, __version__  # noqa: E402


def checksum(ids, h):
    for i in ids:
        v = i & 0xFFFFFFFF
        for _ in range(4):
            h ^= v & 0xFF
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
            v >>= 8
    return h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer_json")
    ap.add_argument("text")
    ap.add_argument("--mode", choices=["whole", "lines"], default="whole")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8", newline="").read()
    size = len(text.encode("utf-8"))
    inputs = [text] if a.mode == "whole" else text.splitlines(keepends=True)
    if a.mode == "lines":  # split on "\n" only, as kvant-tokenizer-bench does
        inputs = [line + "\n" for line in text.split("\n")]
        if text.endswith("\n"):
            inputs.pop()
        else:
            inputs[-1] = inputs[-1][:-1]
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(a.tokenizer_json)
    load = time.perf_counter() - t0
    cold, best = 0.0, float("inf")
    for run in range(a.repeat + 1):
        t0 = time.perf_counter()
        encodings = [tok.encode(text)] if a.mode == "whole" else tok.encode_batch(inputs)
        s = time.perf_counter() - t0
        if run == 0:
            cold = s
        else:
            best = min(best, s)
    # The checksum is computed outside the timed region.
    h, n = 0xCBF29CE484222325, 0
    for e in encodings:
        h = checksum(e.ids, h)
        n += len(e.ids)
    mb = size / 1e6
    print(f"tokenizers  mode={a.mode:<5} bytes={size} inputs={len(inputs)} tokens={n} checksum={h:016x} "
          f"load={load:.3f}s cold={cold:.3f}s ({mb / cold:.2f} MB/s) best={best:.3f}s ({mb / best:.2f} MB/s, "
          f"{n / best / 1e6:.2f} M tokens/s)  [tokenizers {__version__}]")


if __name__ == "__main__":
    main()
