"""Benchmark ``mtk quantize``'s weight-only methods (RTN, HQQ, GPTQ, AWQ, SignRound) at 4 and 3 bits on SmolLM2,
with the ``hqq`` library's own HQQ and ``auto-round``'s SignRound beside mtk's.

Every quantization is its own child process (mtk with ``--no-verify``; wall time includes interpreter start and
imports, peak RSS is its own), group size 64, the calibrated methods on the same windows of the first half of the KJV
text (auto-round is handed mtk's token ids). Peers: ``hqq`` 0.2.8 (``HQQLinear`` with ``BaseQuantizeConfig(nbits,
group_size=64)``, its defaults: 20 half-quadratic steps, zero points rounded), which has no checkpoint format
transformers loads on a CPU, so its dequantized weights are written into a float copy of the model; ``auto-round``
(symmetric, ``--signround-iters`` steps, batches of 8, written as GPTQ). mtk's HQQ keeps integer zero points too (the
GPTQ/AWQ/compressed-tensors formats store them so). All checkpoints are then scored by one ``mtk bench`` run on
windows of the second half of the KJV text (perplexity; KL and top-1 against the float model).

    pip install --no-deps --target /tmp/hqqlib hqq==0.2.8.post1 termcolor einops
    .venv/bin/python scripts/bench_methods.py --hf smollm2-hf --hqq-path /tmp/hqqlib \\
        --autoround-python /tmp/llmc-venv/bin/python --workdir /tmp/methods
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_common import bible_halves, score, timed

METHODS = ("rtn", "hqq", "gptq", "awq", "signround")
CALIBRATED = ("gptq", "awq", "signround")

# The peer for SignRound: auto-round's AutoRound, written in GPTQ's format (it runs from llm-compressor's
# environment, which pins auto-round 0.15.1; 0.16 needs transformers it does not support here).
AUTOROUND_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from auto_round import AutoRound

src, out, ids_file, bits, iters = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ids = json.loads(open(ids_file).read())
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(src)
ar = AutoRound(model, tokenizer=tok, bits=bits, group_size=64, sym=True, iters=iters, nsamples=len(ids),
               seqlen=len(ids[0]), batch_size=8, dataset=[torch.tensor([r]) for r in ids], device_map="cpu")
ar.quantize_and_save(out, format="auto_gptq")
print(json.dumps({"tool_s": time.perf_counter() - start}))
"""


def hqq_child(src: Path, out: Path, bits: int) -> None:
    """Runs in the child (with the hqq library on sys.path): every decoder Linear through HQQLinear, dequantized."""
    import time

    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    cfg = BaseQuantizeConfig(nbits=bits, group_size=64)
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                copy = torch.nn.Linear(module.in_features, module.out_features, bias=False)
                copy.weight.data = module.weight.data.clone()
                q = HQQLinear(copy, cfg, compute_dtype=torch.float32, device="cpu", initialize=True)
                module.weight.data = q.dequantize().reshape(module.weight.shape).float()
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    print(json.dumps({"tool_s": time.perf_counter() - start}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, required=True, help="the float HF checkpoint (SmolLM2 imported by mtk)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_methods"))
    ap.add_argument("--hqq-path", type=Path, help="a folder holding the hqq package (pip install --target)")
    ap.add_argument("--autoround-python", type=Path, help="python of an environment with auto-round")
    ap.add_argument("--signround-iters", type=int, default=200, help="SignRound steps per layer, both tools")
    ap.add_argument("--methods", default=",".join(METHODS), help="mtk methods to run (comma-separated)")
    ap.add_argument("--bits", default="4,3", help="widths to run (comma-separated)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child-hqq", nargs=3, metavar=("SRC", "OUT", "BITS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_hqq:
        src, out, bits = args.child_hqq
        return hqq_child(Path(src), Path(out), int(bits))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cal_text, eval_text = bible_halves()
    (work / "cal.txt").write_text(cal_text, encoding="utf-8")
    (work / "eval.txt").write_text(eval_text, encoding="utf-8")
    cal = ["--calibration", str(work / "cal.txt"), "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    widths = [int(b) for b in args.bits.split(",")]
    rows = []
    for bits in widths:
        for method in args.methods.split(","):
            if method == "awq" and bits != 4:
                continue  # mtk's AWQ is 4-bit
            name, out = f"{method}-{bits}bit", work / f"mtk-{method}-{bits}bit"
            argv = [sys.executable, "-m", "mtk", "quantize", str(args.hf), "-o", str(out), "--overwrite", "--no-verify",
                    "--method", method, "--bits", str(bits), "--group-size", "64"]  # fmt: skip
            argv += cal if method in CALIBRATED else []
            argv += ["--signround-iters", str(args.signround_iters)] if method == "signround" else []
            rows.append({"name": name, "tool": "mtk", "path": out, **timed(argv, out)})
            print(f"mtk {name}: {rows[-1]['wall_s']} s", file=sys.stderr)
    if args.autoround_python:
        from transformers import AutoTokenizer

        from mtk.converters.calibration import load_calibration

        ids = load_calibration(
            work / "cal.txt", AutoTokenizer.from_pretrained(str(args.hf)), args.samples, args.seq_len
        )
        (work / "ids.json").write_text(json.dumps(ids.tolist()))
        (work / "autoround.py").write_text(AUTOROUND_SCRIPT)
        for bits in widths:
            out = work / f"autoround-{bits}bit"
            argv = [str(args.autoround_python), str(work / "autoround.py"), str(args.hf), str(out),
                    str(work / "ids.json"), str(bits), str(args.signround_iters)]  # fmt: skip
            rows.append({"name": f"signround-{bits}bit", "tool": "auto-round", **timed(argv, out)})
            rows[-1]["path"] = next(out.iterdir()) if out.is_dir() and not (out / "config.json").exists() else out
            print(f"auto-round {bits}-bit: {rows[-1]['wall_s']} s", file=sys.stderr)
    if args.hqq_path:
        for bits in widths:
            out = work / f"hqq-lib-{bits}bit"
            argv = [sys.executable, __file__, "--hf", str(args.hf), "--child-hqq", str(args.hf), str(out), str(bits)]
            env = {"PYTHONPATH": str(args.hqq_path)}
            rows.append({"name": f"hqq-{bits}bit", "tool": "hqq 0.2.8", "path": out, **timed(argv, out, env)})
            print(f"hqq {bits}-bit: {rows[-1]['wall_s']} s", file=sys.stderr)
    score(args.hf, rows, work, args.windows)
    if args.json:
        args.json.write_text(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=2))


if __name__ == "__main__":
    main()
