"""gguf-export --calibration (GPTQ on the GGUF grids) against the plain importance-weighted export, on SmolLM2.

Both exports use the same activations: the Hessians' diagonal (over the token count) is the imatrix, so the
"imatrix" run is what ``mtk imatrix`` + ``gguf-export --imatrix`` writes on the same chunks. Perplexity in
llama.cpp on windows from the start of the KJV text; calibration from its second half (disjoint). Also the
per-tensor choice counts and the median relative output error of both candidates.

Usage: python scripts/compare_gguf_gptq.py [--work /tmp/kq] [--mixes q4_k_m,q4_0] [--windows 8] [--samples 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from compare_kquant_quality import bible_text, llama_ppl, prepare

from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.bench.perplexity import token_windows
from mtk.converters.gguf_types import TypeRules, parse_file_type
from mtk.converters.hf_to_gguf import gguf_export
from mtk.quantizers.gguf_calibration import CalibratedEncoder, hessians_from_checkpoint


def run(mix: str, hf: Path, calib: Path, work: Path, windows: list[list[int]], samples: int) -> dict[str, Any]:
    start = time.perf_counter()
    hessians = hessians_from_checkpoint(hf, calib, samples=samples, seq_len=512, device="cpu")
    collect_s = time.perf_counter() - start
    rules = TypeRules(parse_file_type(mix), imatrix=True)
    plain, ours = work / f"plain.{mix}.gguf", work / f"gptq.{mix}.gguf"
    start = time.perf_counter()
    gguf_export(hf, plain, rules=rules, imatrix=hessians.imatrix(), overwrite=True)
    plain_s = time.perf_counter() - start
    encoder = CalibratedEncoder(hessians)
    start = time.perf_counter()
    gguf_export(hf, ours, rules=rules, imatrix=hessians.imatrix(), matrix_encoder=encoder, overwrite=True)
    gptq_s = time.perf_counter() - start
    summary = encoder.summary()
    errors = [t["relative_output_error"] for t in summary["tensors"].values()]
    return {
        "mix": mix,
        "ppl_imatrix": round(llama_ppl(plain, windows), 4),
        "ppl_gptq": round(llama_ppl(ours, windows), 4),
        "kept": summary["kept"],
        "median_rel_error_imatrix": statistics.median(e["importance"] for e in errors),
        "median_rel_error_gptq": statistics.median(e["gptq"] for e in errors if "gptq" in e),
        "collect_s": round(collect_s, 1),
        "export_s_imatrix": round(plain_s, 1),
        "export_s_gptq": round(gptq_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mtk-gguf-gptq"))
    parser.add_argument("--mixes", default="q4_k_m,q4_0")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16, help="calibration chunks of 512 tokens")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    hf, f16, calib, _ = prepare(args.work, args.samples)
    text = bible_text()
    tok = LlamaCpp(f16, vocab_only=True)
    windows = token_windows(tok.tokenize(text[: len(text) // 4]), 512, args.windows)
    tok.close()
    print(f"F16 perplexity: {llama_ppl(f16, windows):.4f}", flush=True)
    for mix in args.mixes.split(","):
        print(json.dumps(run(mix, hf, calib, args.work, windows, args.samples)), flush=True)


if __name__ == "__main__":
    main()
