#!/usr/bin/env python3
"""Writes the tokenizer benchmark text (about 4 MB) from files every Debian machine
with vim and Python has: English technical prose (vim's documentation), source code
(Python's standard library) and text in ~30 languages (vim's tutor translations).

    bench/make_tokenizer_text.py OUT.txt
"""
import glob
import hashlib
import os
import sys
import sysconfig


def gather(paths, limit):
    out, size = [], 0
    for p in sorted(paths):
        try:
            t = open(p, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        out.append(t)
        size += len(t.encode("utf-8"))
        if size >= limit:
            break
    return "".join(out)


def main():
    vim = sorted(glob.glob("/usr/share/vim/vim9*/"))
    if not vim:
        raise SystemExit("needs vim's runtime files (/usr/share/vim/vim9x)")
    prose = gather(glob.glob(vim[-1] + "doc/*.txt"), 2_000_000)
    code = gather(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")), 1_000_000)
    languages = gather(glob.glob(vim[-1] + "tutor/tutor.*.utf-8"), 1_500_000)
    text = prose + code + languages
    with open(sys.argv[1], "w", encoding="utf-8", newline="") as f:
        f.write(text)
    data = text.encode("utf-8")
    print(f"{sys.argv[1]}: {len(data)} bytes (prose {len(prose.encode())}, code {len(code.encode())}, "
          f"languages {len(languages.encode())}), sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
