"""GPTQ variants on one decoder layer of SmolLM2, scored by the Hessian-weighted error on held-out texts (issue #17).

The float model runs the calibration windows (16 x 256 tokens of the given calibration file, mtk's loader) and
``--windows`` x 512-token windows of each held-out text through the first ``--layer`` + 1 decoder layers; hooks
record ``X^T X`` of the input of each Linear of that layer (float weights everywhere, so the later subsets see
float inputs: a proxy for the true-sequential pipeline, the same for every variant). Each variant quantizes the
layer's Linears against its calibration Hessian; the score of a text is ``sum tr(dW H dW^T) / sum tr(W H W^T)``
over the Linears, with ``dW`` the quantized minus the float weight and ``H`` the text's Hessian (lower is better).

Variants (one change each from mtk's GPTQ): ``mtk`` (as is), ``rtn``, ``bf16-w`` (weights rounded to bfloat16
before GPTQ, as GPTQModel on CPU loads them), ``bf16-x`` (the Hessian from bfloat16 activations: the calibration
forward in bfloat16), ``bf16`` (both: GPTQModel's CPU default), ``damp=...`` and ``natural`` (no group-aware
order). ``--gptqmodel DIR`` also scores the layer of a GPTQModel (v1 GPTQ, sym 4-bit) checkpoint.

Usage::

    .venv/bin/python scripts/gptq_layer0.py --hf /tmp/b/hf --calibration cal.txt --eval-text /tmp/ho/licenses.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open

from mtk.converters.calibration import load_calibration
from mtk.quantizers.gptq import gptq_quantize, round_to_nearest

SUBSETS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


def hessians(model, layer: int, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    """``2/n X^T X`` (float32) of the input of each subset's Linears of decoder ``layer`` over ``windows``."""
    block = model.model.layers[layer]
    hs, counts, handles = {}, {}, []
    for subset in SUBSETS:
        lin = block.get_submodule(subset[0])
        hs[subset[0]] = torch.zeros(lin.in_features, lin.in_features)
        counts[subset[0]] = 0

        def hook(_m, args, key=subset[0]):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            hs[key].addmm_(x.t(), x)
            counts[key] += x.shape[0]

        handles.append(lin.register_forward_pre_hook(hook))
    model.model.layers = model.model.layers[: layer + 1]  # the later layers are not needed
    with torch.inference_mode():
        for row in windows:
            model(row[None])
    for h in handles:
        h.remove()
    return {k: h * (2 / counts[k]) for k, h in hs.items()}


def unpack_gptq(folder: Path, prefix: str) -> torch.Tensor:
    """Dequantized ``(out, in)`` weight of a v1 GPTQ 4-bit Linear (``qweight`` ``(in/8, out)`` int32)."""
    files = sorted(folder.glob("*.safetensors"))
    t = {}
    for f in files:
        with safe_open(str(f), "pt") as sf:
            for k in ("qweight", "qzeros", "scales", "g_idx"):
                if f"{prefix}.{k}" in sf.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    t[k] = sf.get_tensor(f"{prefix}.{k}")
    shifts = torch.arange(8, dtype=torch.int32) * 4
    q = ((t["qweight"][:, None, :] >> shifts[None, :, None]) & 15).reshape(-1, t["qweight"].shape[1])
    z = ((t["qzeros"][:, :, None] >> shifts[None, None, :]) & 15).reshape(t["qzeros"].shape[0], -1) + 1
    g = t["g_idx"].long()
    return (t["scales"].float()[g] * (q - z[g]).float()).t()


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", type=Path, required=True)
    parser.add_argument("--calibration", type=Path, required=True)
    parser.add_argument("--eval-text", type=Path, action="append", default=[])
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--variants", default="mtk,rtn,bf16-w,bf16-x,bf16,natural,damp=0.1")
    parser.add_argument("--gptqmodel", type=Path, help="also score this GPTQModel checkpoint's layer")
    args = parser.parse_args()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(args.hf))

    def model(dtype):
        return AutoModelForCausalLM.from_pretrained(str(args.hf), dtype=dtype)

    cal = load_calibration(args.calibration, tok, 16, 256)
    h_cal = {torch.float32: hessians(model(torch.float32), args.layer, cal)}
    if any(v.startswith("bf16") for v in args.variants.split(",")):
        h_cal[torch.bfloat16] = hessians(model(torch.bfloat16), args.layer, cal)
    h_eval = {}
    for text in [args.calibration, *args.eval_text]:
        ids = tok(text.read_text(encoding="utf-8")[:400_000], add_special_tokens=False)["input_ids"]
        windows = torch.tensor(ids[: 512 * args.windows]).reshape(args.windows, 512)
        h_eval[text.stem] = hessians(model(torch.float32), args.layer, windows)
    block = model(torch.float32).model.layers[args.layer]
    weights = {n: block.get_submodule(n).weight.data.float() for s in SUBSETS for n in s}

    def run(variant: str) -> dict[str, torch.Tensor]:
        out = {}
        for subset in SUBSETS:
            for name in subset:
                w = weights[name]
                if variant == "rtn":
                    out[name] = round_to_nearest(w, 4, 64, True).dequantize()
                    continue
                h = h_cal[torch.bfloat16 if variant in ("bf16-x", "bf16") else torch.float32][subset[0]]
                w_in = w.bfloat16().float() if variant in ("bf16-w", "bf16") else w
                opts = {"damp_percent": float(variant[5:]) if variant.startswith("damp=") else 0.01}
                q = gptq_quantize(
                    w_in, h, bits=4, group_size=64, sym=True, act_group_aware=variant != "natural", **opts
                )
                out[name] = q.dequantize()
        return out

    def score(deq: dict[str, torch.Tensor]) -> dict[str, float]:
        res = {}
        for text, hs in h_eval.items():
            num = den = 0.0
            for subset in SUBSETS:
                h = hs[subset[0]]
                for name in subset:
                    d = deq[name] - weights[name]
                    num += float(torch.einsum("oi,ij,oj->", d, h, d))
                    den += float(torch.einsum("oi,ij,oj->", weights[name], h, weights[name]))
            res[text] = num / den
        return res

    results = {v: score(run(v)) for v in args.variants.split(",")}
    if args.gptqmodel:
        deq = {n: unpack_gptq(args.gptqmodel, f"model.layers.{args.layer}.{n}") for n in weights}
        results["gptqmodel"] = score(deq)
    names = list(h_eval)
    print(f"{'variant':12s} " + " ".join(f"{n[:12]:>12s}" for n in names))
    for v, r in results.items():
        print(f"{v:12s} " + " ".join(f"{r[n] * 1e3:12.4f}" for n in names))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
