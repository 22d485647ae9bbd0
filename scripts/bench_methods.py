"""Benchmark ``mtk quantize``'s weight-only methods (RTN, HQQ, GPTQ, AWQ) at 4 and 3 bits on SmolLM2, with the
``hqq`` library's own HQQ on the same weights beside mtk's.

Every mtk quantization is its own child process (``--no-verify``; wall time includes interpreter start and imports,
peak RSS is its own), group size 64, the calibrated methods on the same windows of the first half of the KJV text.
The peer is ``hqq`` 0.2.8 (``HQQLinear`` with ``BaseQuantizeConfig(nbits, group_size=64)``, its defaults: 20
half-quadratic steps, zero points rounded): it has no checkpoint format transformers loads on a CPU, so its
dequantized weights are written into a float copy of the model, which scores the grid it found. mtk's HQQ keeps
integer zero points too (the GPTQ/AWQ/compressed-tensors formats store them so). All checkpoints are then scored
by one ``mtk bench`` run on windows of the second half of the KJV text (perplexity; KL and top-1 against the float
model).

    pip install --no-deps --target /tmp/hqqlib hqq==0.2.8.post1 termcolor einops
    .venv/bin/python scripts/bench_methods.py --hf smollm2-hf --hqq-path /tmp/hqqlib --workdir /tmp/methods
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_common import bible_halves, score, timed

# name -> (mtk quantize options, whether it calibrates)
RUNS = {
    f"{method}-{bits}bit": (["--method", method, "--bits", str(bits), "--group-size", "64"], method in ("gptq", "awq"))
    for bits in (4, 3)
    for method in ("rtn", "hqq", "gptq", "awq")
    if not (method == "awq" and bits == 3)  # mtk's AWQ is 4-bit
}


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
    rows = []
    for name, (options, calibrated) in RUNS.items():
        out = work / f"mtk-{name}"
        argv = [sys.executable, "-m", "mtk", "quantize", str(args.hf), "-o", str(out), "--overwrite", "--no-verify"]
        rows.append({"name": name, "tool": "mtk", "path": out, **timed(argv + options + (cal if calibrated else []),
                                                                       work / f"mtk-{name}")})  # fmt: skip
        print(f"mtk {name}: {rows[-1]['wall_s']} s", file=sys.stderr)
    if args.hqq_path:
        for bits in (4, 3):
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
