"""Benchmark ``mtk quantize``'s W8A8 methods (FP8, INT8 RTN/GPTQ, SmoothQuant) against llm-compressor, side by side.

Both tools quantize the same imported SmolLM2-135M checkpoint; the calibrated methods get the same token windows
(mtk's loader on the first half of the KJV text; llm-compressor is handed those very ids). Every quantization is
its own child process (wall time includes interpreter start and imports; peak RSS is its own); mtk runs with
``--no-verify`` so that both sides do the same work. All checkpoints are then scored by one ``mtk bench`` run on
windows of the second half of the KJV text: perplexity, and KL / top-1 against the float model, each loaded
through transformers + compressed-tensors (which quantizes the Linear inputs per token as vLLM does).

llm-compressor 0.14 pins transformers <= 5.17 and compressed-tensors 0.19, so it runs from its own environment::

    python3 -m venv /tmp/llmc-venv && /tmp/llmc-venv/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
    .venv/bin/python scripts/bench_w8a8.py --hf smollm2-hf --peer-python /tmp/llmc-venv/bin/python --workdir /tmp/w8

Without ``--peer-python`` only mtk's rows are made.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_common import bible_halves, score, timed

# name -> (mtk quantize options, whether it calibrates)
MTK_RUNS = {
    "fp8-channel": (["--method", "fp8"], False),
    "fp8-block64": (["--method", "fp8", "--group-size", "64"], False),
    "fp8-block64-fine": (["--method", "fp8", "--format", "fp8", "--group-size", "64"], False),
    "int8-rtn": (
        ["--method", "rtn", "--bits", "8", "--group-size", "-1", "--format", "compressed-tensors-int8"],
        False,
    ),
    "int8-gptq": (
        ["--method", "gptq", "--bits", "8", "--group-size", "-1", "--format", "compressed-tensors-int8"],
        True,
    ),
    "int8-smoothquant": (["--method", "smoothquant"], True),
}
# The same schemes in llm-compressor (fp8-block64-fine is transformers' format, which llm-compressor does not write).
PEER_RUNS = ("fp8-channel", "fp8-block64", "int8-rtn", "int8-gptq", "int8-smoothquant")

PEER_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

name, src, out, ids_file = sys.argv[1:5]
ids = json.loads(open(ids_file).read())
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(src)
block = QuantizationScheme(
    targets=["Linear"],
    weights=QuantizationArgs(num_bits=8, type="float", strategy="block", block_structure=[64, 64], symmetric=True,
                             dynamic=False),
    input_activations=QuantizationArgs(num_bits=8, type="float", strategy="group", group_size=64, symmetric=True,
                                       dynamic=True),
)
recipes = {
    "fp8-channel": [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])],
    "fp8-block64": [QuantizationModifier(config_groups={"group_0": block}, ignore=["lm_head"])],
    "int8-rtn": [QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])],
    "int8-gptq": [GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"], dampening_frac=0.01)],
    "int8-smoothquant": [SmoothQuantModifier(smoothing_strength=0.5),
                         QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])],
}
data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})
oneshot(model=model, dataset=data, recipe=recipes[name], num_calibration_samples=len(ids),
        max_seq_length=len(ids[0]))
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
print(json.dumps({"tool_s": time.perf_counter() - start}))
"""


def same_weights(a: Path, b: Path) -> tuple[int, int]:
    """How many of ``a``'s quantized weight tensors (and their scales) ``b`` holds bit for bit."""
    import torch

    from mtk.formats.checkpoint import HFCheckpoint

    ca, cb = HFCheckpoint(a), HFCheckpoint(b)
    names = [n for n in ca.names() if n.endswith(("weight_scale", ".weight")) and ".layers." in n]
    same = sum(
        n in cb and ca.shape(n) == cb.shape(n) and torch.equal(ca.get(n).view(torch.uint8), cb.get(n).view(torch.uint8))
        for n in names
    )
    return same, len(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, required=True, help="the float HF checkpoint (SmolLM2 imported by mtk)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_w8a8"))
    ap.add_argument("--peer-python", type=Path, help="python of an environment with llmcompressor 0.14")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cal_text, eval_text = bible_halves()
    (work / "cal.txt").write_text(cal_text, encoding="utf-8")
    (work / "eval.txt").write_text(eval_text, encoding="utf-8")
    from transformers import AutoTokenizer

    from mtk.converters.calibration import load_calibration

    ids = load_calibration(work / "cal.txt", AutoTokenizer.from_pretrained(str(args.hf)), args.samples, args.seq_len)
    (work / "ids.json").write_text(json.dumps(ids.tolist()))
    rows = []
    for name, (options, calibrated) in MTK_RUNS.items():
        out = work / f"mtk-{name}"
        cal = ["--calibration", str(work / "cal.txt"), "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
        argv = [sys.executable, "-m", "mtk", "quantize", str(args.hf), "-o", str(out), "--overwrite", "--no-verify"]
        rows.append({"name": name, "tool": "mtk", "path": out, **timed(argv + options + (cal if calibrated else []),
                                                                          work / f"mtk-{name}")})  # fmt: skip
        print(f"mtk {name}: {rows[-1]['wall_s']} s", file=sys.stderr)
    if args.peer_python:
        (work / "peer.py").write_text(PEER_SCRIPT)
        for name in PEER_RUNS:
            out = work / f"llmc-{name}"
            argv = [str(args.peer_python), str(work / "peer.py"), name, str(args.hf), str(out), str(work / "ids.json")]
            rows.append({"name": name, "tool": "llm-compressor", "path": out, **timed(argv, work / f"llmc-{name}")})
            print(f"llm-compressor {name}: {rows[-1]['wall_s']} s", file=sys.stderr)
    score(args.hf, rows, work, args.windows)
    for name in PEER_RUNS:
        out = work / f"llmc-{name}"
        argv = [str(args.peer_python), str(work / "peer.py"), name, str(args.hf), str(out), str(work / "ids.json")]
        rows.append({"name": name, "tool": "llm-compressor", "path": out, **timed(argv, work / f"llmc-{name}")})
        print(f"llm-compressor {name}: {rows[-1]['wall_s']} s", file=sys.stderr)
    bench = work / "bench.json"
    paths = [str(args.hf), *[str(r["path"]) for r in rows]]
    argv = [sys.executable, "-m", "mtk", "bench", *paths, "--text", str(work / "eval.txt"), "--windows",
            str(args.windows), "--gen-tokens", "0", "--json", str(bench)]  # fmt: skip
    timed(argv, work / "bench")
    scores = {Path(a["path"]).resolve(): a for a in json.loads(bench.read_text())["artifacts"]}
    ref = scores[args.hf.resolve()]
    print(f"float32 perplexity {ref['ppl']:.4f} ({args.windows} windows of 512 tokens, second half of the KJV)")
    print(f"{'scheme':18} {'tool':15} {'ppl':>9} {'vs float':>9} {'KL':>9} {'top-1':>6} {'wall s':>7} {'peak MiB':>8}")
    for r in rows:
        s = scores[r["path"].resolve()]
        r.update(ppl=s["ppl"], kl=s["kl_mean"], top1=s["top1"])
        print(
            f"{r['scheme']:18} {r['tool']:15} {s['ppl']:9.4f} {s['ppl'] / ref['ppl'] - 1:+9.2%} {s['kl_mean']:9.5f} "
            f"{s['top1']:6.3f} {r['wall_s']:7.1f} {r['peak_rss_mib']:8d}"
        )
    for name in PEER_RUNS if args.peer_python else ():
        mine, peer = (next(r for r in rows if r["name"] == name and r["tool"] == t) for t in ("mtk", "llm-compressor"))
        same, total = same_weights(mine["path"], peer["path"])
        print(
            f"  {name}: mtk/peer ppl {mine['ppl'] / peer['ppl']:.4f}, "
            f"peer/mtk wall {peer['wall_s'] / mine['wall_s']:.2f}x, weights and scales bit-identical {same}/{total}"
        )
    if args.json:
        args.json.write_text(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=2))


if __name__ == "__main__":
    main()
