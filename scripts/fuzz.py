"""Fuzz mtk's readers for a long run: seeded mutants of GGUF, safetensors, config/tokenizer JSON, imatrix and
calibration files (tests/fuzz_mutants.py), each through the library API in this process; prints tried / clean
/ crashes per reader and mutation kind, and every crash with the seed that replays it.

``ok`` is a mutant that still reads, ``clean`` one refused with one MtkError line of exit code 2 or more,
``crash`` anything else (a Python exception, an internal error, a message that is not one line).

Usage::

    nice .venv/bin/python scripts/fuzz.py --seeds 700                    # >= 10,000 mutants per GGUF reader
    nice .venv/bin/python scripts/fuzz.py --seeds 50 --readers gguf-f32 safetensors
    nice .venv/bin/python scripts/fuzz.py --seeds 1 --first-seed 123 --readers gguf-spm   # replay one seed

The tiny fixtures (a llama checkpoint with a byte-level BPE tokenizer and a mistral one with a SentencePiece
tokenizer, the GGUFs exported from them, an imatrix) are built in ``--work`` on the first run and reused.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures_models import build_tiny_model  # noqa: E402
from fuzz_mutants import build_fixtures, iter_cases, run_case  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=700, help="mutants per reader and kind")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--readers", nargs="*", help="reader prefixes (gguf-f32, gguf-q4_k_m, gguf-spm, ...)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mtk-fuzz"))
    parser.add_argument("--max-rss-mb", type=int, default=4096, help="stop with an error past this peak RSS")
    parser.add_argument("--max-seconds", type=float, help="stop after this long and print what was tried")
    args = parser.parse_args()

    hf, spm = args.work / "llama", args.work / "mistral"
    for name, path in (("llama", hf), ("mistral", spm)):
        if not (path / "config.json").exists():
            build_tiny_model(name, path)
    fx = build_fixtures(hf, spm, args.work)
    tried: Counter[tuple[str, str]] = Counter()
    results: Counter[tuple[str, str, str]] = Counter()
    crashes: list[str] = []
    start = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    readers = tuple(args.readers) if args.readers else None
    for case in iter_cases(fx, seeds, readers):
        if args.max_seconds and time.perf_counter() - start > args.max_seconds:
            print(f"stopped after {args.max_seconds:.0f} s (--max-seconds)")
            break
        outcome = run_case(case.call)
        tried[case.reader, case.kind] += 1
        results[case.reader, case.kind, outcome.status] += 1
        if outcome.status == "crash":
            crashes.append(f"{case.reader} {case.kind} seed {case.seed}: {outcome.detail}")
            print("CRASH", crashes[-1], flush=True)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if rss_mb > args.max_rss_mb:
            print(f"peak RSS {rss_mb} MB after {case.reader} {case.kind} seed {case.seed}", file=sys.stderr)
            return 1

    print(f"\n{'reader':40} {'kind':18} {'tried':>7} {'ok':>7} {'clean':>7} {'crashes':>7}")
    for reader, kind in sorted(tried):
        row = [results[reader, kind, s] for s in ("ok", "clean", "crash")]
        print(f"{reader:40} {kind:18} {tried[reader, kind]:7} {row[0]:7} {row[1]:7} {row[2]:7}")
    by_reader: Counter[str] = Counter()
    for (reader, _), n in tried.items():
        by_reader[reader] += n
    print()
    for reader, n in sorted(by_reader.items()):
        bad = sum(v for (r, _, s), v in results.items() if r == reader and s == "crash")
        print(f"{reader:40} tried {n:7}  crashes {bad}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    seconds = time.perf_counter() - start
    print(f"\n{sum(tried.values())} mutants, {len(crashes)} crashes, {seconds:.0f} s, peak RSS {rss_mb} MB")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
