"""``mtk quantize``: GPTQ, AWQ or RTN over an HF checkpoint, layer by layer, written as GPTQ v1, AWQ GEMM or
compressed-tensors pack-quantized.

Load, transform, save: the output's tensor plan (names, dtypes, shapes) is fixed up front from the
checkpoint and the config; calibration activations are captured once at the first decoder layer; then each
layer is loaded, quantized, run forward to make the next layer's inputs, written, and unloaded. Everything
outside the decoder layers (embeddings, final norm, head) is copied unchanged. The folder is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtk.converters.family import LayerPlan, layer_plan
from mtk.errors import UnsupportedError, UsageError
from mtk.formats.atomic import atomic_dir
from mtk.formats.checkpoint import TOKENIZER_FILES, HFCheckpoint
from mtk.formats.safetensors_io import SafetensorsWriter
from mtk.quantizers import QUANTIZERS, compressed
from mtk.quantizers.awq import awq_layer
from mtk.quantizers.config import Format, QuantizeConfig
from mtk.quantizers.gptq import QuantizedLinear, gptq_quantize, hessian_update
from mtk.quantizers.grid import rtn
from mtk.quantizers.layerwise import LayerwiseModel, _Stop, layer_output, to_device
from mtk.quantizers.pack import pack_awq, pack_gptq
from mtk.runtime import resolve_device

Progress = Callable[[int, int, str], None]
VERSION = "0.1.0"


# Tensors that stay unquantized (embeddings, norms, head, biases) are stored as float16, as in AutoGPTQ and
# AutoAWQ checkpoints: a float32 tied embedding would otherwise be two thirds of a small model's file.
STORED_FLOAT = torch.float16


def _stored(dtype: torch.dtype) -> torch.dtype:
    return STORED_FLOAT if dtype.is_floating_point else dtype


def _linear_names(plan: LayerPlan) -> list[str]:
    return [name for subset in plan.sequential for name in subset]


def _packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    if cfg.format == Format.compressed_tensors:
        return compressed.packed_shapes(out, cols, cfg)
    n = 1 if cfg.group_size == -1 else cols // cfg.group_size
    if cfg.format == Format.gptq:
        return {
            "qweight": (torch.int32, (cols * cfg.bits // 32, out)),
            "qzeros": (torch.int32, (n, out * cfg.bits // 32)),
            "scales": (torch.float16, (n, out)),
            "g_idx": (torch.int32, (cols,)),
        }
    return {
        "qweight": (torch.int32, (cols, out // 8)),
        "qzeros": (torch.int32, (n, out // 8)),
        "scales": (torch.float16, (n, out)),
    }


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    """Refuse a Linear the output format cannot hold, naming the width and the constraint."""
    if cfg.group_size != -1 and cols % cfg.group_size:
        raise UsageError(
            f"{name}: input width {cols} is not a multiple of group size {cfg.group_size} "
            f"(choose a group size that divides it, e.g. 64 or 32, or -1 for per-channel)"
        )
    if cfg.format == Format.gptq and (cols % 32 or (out * cfg.bits) % 32):
        raise UsageError(f"{name}: GPTQ packing needs an input width divisible by 32 and out*bits by 32")
    if cfg.format == Format.awq and out % 8:
        raise UsageError(f"{name}: AWQ GEMM needs an output width divisible by 8, got {out}")
    if cfg.format == Format.compressed_tensors:
        # vLLM allocates whole int32 words: in / (32 / bits) for the weight, out / (32 / bits) for zero points.
        per_word = 32 // cfg.bits
        if cols % per_word or (not cfg.sym and out % per_word):
            raise UsageError(
                f"{name}: compressed-tensors packing needs an input width (and, with zero points, an output width) "
                f"divisible by {per_word} at {cfg.bits} bits, got {out}x{cols}"
            )


def output_plan(
    ckpt: HFCheckpoint, lw_prefix: str, n_layers: int, plan: LayerPlan, cfg: QuantizeConfig
) -> tuple[list[tuple[str, torch.dtype, tuple[int, ...]]], list[str]]:
    """The output tensors in write order (everything else, then layer by layer) and the non-layer names."""
    quantized = {f"{lw_prefix}layers.{i}.{n}.weight" for i in range(n_layers) for n in _linear_names(plan)}
    missing = sorted(q for q in quantized if q not in ckpt)
    if missing:
        raise UnsupportedError(f"{ckpt.path}: expected Linear weights not found (e.g. {missing[0]})")
    layer_of = {}
    for name in ckpt.names():
        if name.startswith(f"{lw_prefix}layers."):
            layer_of[name] = int(name[len(lw_prefix) + 7 :].split(".", 1)[0])
    others = [n for n in ckpt.names() if n not in layer_of]
    entries = [(n, _stored(ckpt.dtype(n)), ckpt.shape(n)) for n in others]
    for i in range(n_layers):
        for name in sorted(n for n, k in layer_of.items() if k == i):
            if name in quantized:
                out, cols = ckpt.shape(name)
                check_shape(name, out, cols, cfg)
                base = name.removesuffix(".weight")
                entries += [(f"{base}.{k}", d, s) for k, (d, s) in _packed_shapes(out, cols, cfg).items()]
            else:
                entries.append((name, _stored(ckpt.dtype(name)), ckpt.shape(name)))
    return entries, others


def _pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    if cfg.format == Format.gptq:
        return pack_gptq(q.codes, q.scale, q.zero, q.g_idx, cfg.bits)
    if cfg.format == Format.compressed_tensors:
        return compressed.pack_compressed(q.codes, q.scale, q.zero, q.g_idx, cfg.bits, bool(cfg.sym))
    return pack_awq(q.codes, q.scale, q.zero)


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``quantization_config`` transformers and GPTQModel (or compressed-tensors) read (GPTQModel 7.6's keys)."""
    if cfg.format == Format.compressed_tensors:
        return compressed.quantization_config(cfg)
    meta = {
        "quantizer": [f"mtk:{VERSION}"],
        "damp_percent": cfg.damp_percent,
        "static_groups": cfg.static_groups,
        "act_group_aware": cfg.act_group_aware,
        "true_sequential": cfg.true_sequential,
        "mtk_method": cfg.method.value,
    }
    common = {
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "desc_act": cfg.desc_act,
        "lm_head": False,
        "pack_dtype": "int32",
        "sym": cfg.sym,
        "meta": meta,
    }
    if cfg.format == Format.gptq:
        return {**common, "quant_method": "gptq", "method": "gptq", "format": "gptq", "checkpoint_format": "gptq"}
    return {
        **common,
        "quant_method": "awq",
        "method": "awq",
        "format": "gemm",
        "checkpoint_format": "gemm",
        "version": "gemm",
        "zero_point": not cfg.sym,
    }


def _forward_all(layer: nn.Module, inputs: list[torch.Tensor], kwargs: dict[str, Any], device: torch.device) -> None:
    """Run every sample through ``layer`` for its hooks; a hook may stop a pass early with ``_Stop``."""
    with torch.no_grad():
        for x in inputs:
            with contextlib.suppress(_Stop):
                layer_output(layer, x.to(device), kwargs)


def _hessians(
    layer: nn.Module,
    subsets: list[tuple[str, ...]],
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    device: torch.device,
    stop: bool,
) -> dict[str, torch.Tensor]:
    """``2/n X^T X`` of the input of each subset's first Linear (the subset shares that input)."""
    hs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for subset in subsets:
        first = layer.get_submodule(subset[0])
        hs[subset[0]] = torch.zeros(first.in_features, first.in_features, device=device)
        counts[subset[0]] = 0

        def hook(_m: nn.Module, args: tuple[Any, ...], key: str = subset[0]) -> None:
            counts[key] += hessian_update(hs[key], args[0])
            if stop:
                raise _Stop

        handles.append(first.register_forward_pre_hook(hook))
    try:
        _forward_all(layer, inputs, kwargs, device)
    finally:
        for h in handles:
            h.remove()
    return {k: h * (2 / max(counts[k], 1)) for k, h in hs.items()}


def gptq_layer(
    layer: nn.Module,
    plan: LayerPlan,
    cfg: QuantizeConfig,
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    device: torch.device,
) -> dict[str, QuantizedLinear]:
    """GPTQ every Linear of ``layer``; true-sequential: each subset is calibrated after the earlier ones."""
    result: dict[str, QuantizedLinear] = {}
    rounds = [[s] for s in plan.sequential] if cfg.true_sequential else [list(plan.sequential)]
    for subsets in rounds:
        hs = _hessians(layer, subsets, inputs, kwargs, device, stop=cfg.true_sequential)
        for subset in subsets:
            for name in subset:
                lin = layer.get_submodule(name)
                q = gptq_quantize(
                    lin.weight.data,
                    hs[subset[0]],
                    bits=cfg.bits,
                    group_size=cfg.group_size,
                    sym=bool(cfg.sym),
                    damp_percent=cfg.damp_percent,
                    desc_act=cfg.desc_act,
                    act_group_aware=bool(cfg.act_group_aware),
                    static_groups=cfg.static_groups,
                )
                lin.weight.data = q.dequantize().to(lin.weight.dtype)
                result[name] = q
    return result


def _awq_inputs(
    layer: nn.Module, plan: LayerPlan, inputs: list[torch.Tensor], kwargs: dict[str, Any], device: torch.device
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """The input of each subset's first Linear for every sample, and the layer's float outputs."""
    seen: dict[str, list[torch.Tensor]] = {s[0]: [] for s in plan.sequential}
    handles = [
        layer.get_submodule(k).register_forward_pre_hook(lambda _m, args, key=k: seen[key].append(args[0].detach()))
        for k in seen
    ]
    outputs = []
    try:
        with torch.no_grad():
            for x in inputs:
                outputs.append(layer_output(layer, x.to(device), kwargs).to("cpu"))
    finally:
        for h in handles:
            h.remove()
    return seen, outputs


def _next_inputs(
    layer: nn.Module, inputs: list[torch.Tensor], kwargs: dict[str, Any], device: torch.device
) -> list[torch.Tensor]:
    with torch.no_grad():
        return [layer_output(layer, x.to(device), kwargs).to("cpu") for x in inputs]


def _copy_config(src: Path, dst: Path, cfg: QuantizeConfig) -> None:
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    qc = quantization_config(cfg)
    config["quantization_config"] = qc
    config.pop("torch_dtype", None)
    config["dtype"] = str(STORED_FLOAT).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if cfg.format != Format.compressed_tensors:  # GPTQModel's own copy; compressed-tensors reads config.json only
        (dst / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")
    for name in ("generation_config.json", *TOKENIZER_FILES):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def quantize(
    model_dir: Path | str,
    out_dir: Path | str,
    cfg: QuantizeConfig,
    *,
    calibration: Path | str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: Progress | None = None,
    check: Callable[[Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Quantize ``model_dir`` into ``out_dir``; returns the ``--json`` result. See the module notes.

    ``check`` is called with the complete temporary folder before it is published (verification); if it
    raises, nothing is written.
    """
    start = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    dev = resolve_device(device)
    ckpt = HFCheckpoint(model_dir)
    plan = layer_plan(str(ckpt.config.get("model_type")))
    if cfg.needs_calibration and calibration is None:
        raise UsageError(f"--method {cfg.method.value} needs --calibration FILE (text, JSONL or Parquet)")
    lw = LayerwiseModel(model_dir, dev, ckpt)
    n_layers = len(lw.layers)
    entries, others = output_plan(ckpt, lw.prefix, n_layers, plan, cfg)
    ids = None
    if cfg.needs_calibration:
        from transformers import AutoTokenizer

        from mtk.quantizers.calibration import load_calibration

        ids = load_calibration(calibration, AutoTokenizer.from_pretrained(str(model_dir)), cfg.samples, cfg.seq_len)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        with SafetensorsWriter(tmp, entries) as writer:
            for name in others:
                writer.write(name, ckpt.get(name).to(_stored(ckpt.dtype(name))))
                ckpt.release(name)
            inputs, kwargs = lw.capture(ids) if ids is not None else ([], {})
            for i in range(n_layers):
                _quantize_layer(lw, i, plan, cfg, inputs, to_device(kwargs.get(i, {}), dev), writer)
                if progress:
                    progress(i + 1, n_layers, f"layer {i}")
        _copy_config(model_dir, tmp, cfg)
        verification = check(tmp) if check else None
    result = {
        "input": str(model_dir),
        "output": str(out_dir),
        "method": cfg.method.value,
        "format": cfg.format.value,  # type: ignore[union-attr]
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "sym": cfg.sym,
        "samples": 0 if ids is None else int(ids.shape[0]),
        "seq_len": 0 if ids is None else int(ids.shape[1]),
        "layers": n_layers,
        "device": str(dev),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if verification is not None:
        result["verification"] = verification
    return result


@dataclass
class LayerResult:
    """One quantized layer: its Linears, and its changed float tensors (None: the checkpoint's, unchanged)."""

    linears: dict[str, QuantizedLinear]
    tensors: dict[str, torch.Tensor] | None = None


# (model, layer index, plan, config, layer inputs (replaced in place by its outputs), layer kwargs) -> result
LayerQuantizer = Callable[
    [LayerwiseModel, int, LayerPlan, QuantizeConfig, list[torch.Tensor], dict[str, Any]], LayerResult
]


@QUANTIZERS.register("rtn")
def _rtn(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Round to nearest: no calibration, no forward pass; weights straight from the checkpoint."""
    result = {}
    for name in _linear_names(plan):
        w = lw.ckpt.get(f"{lw.layer_prefix(i)}{name}.weight").to(lw.device)
        codes, scale, zero = rtn(w, cfg.bits, cfg.group_size, bool(cfg.sym))
        gs = w.shape[1] if cfg.group_size == -1 else cfg.group_size
        result[name] = QuantizedLinear(codes, scale, zero, (torch.arange(w.shape[1]) // gs).to(torch.int32))
    return LayerResult(result)


@QUANTIZERS.register("gptq")
def _gptq(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """GPTQ; the next layer's inputs come from this layer with its quantized weights (as in the paper)."""
    layer = lw.load_layer(i)
    result = gptq_layer(layer, plan, cfg, inputs, kwargs, lw.device)
    inputs[:] = _next_inputs(layer, inputs, kwargs, lw.device)
    return LayerResult(result, {name: p.detach() for name, p in layer.named_parameters()})


@QUANTIZERS.register("awq")
def _awq(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """AWQ; the next layer's inputs come from this layer in float, before scaling (as AutoAWQ does)."""
    layer = lw.load_layer(i)
    seen, outputs = _awq_inputs(layer, plan, inputs, kwargs, lw.device)
    attn = layer.get_submodule("self_attn")
    result = awq_layer(layer, plan, seen, lambda m: kwargs if m is attn else {}, cfg.bits, cfg.group_size)
    inputs[:] = outputs
    # The norms and previous Linears now hold the folded scales: write these, not the checkpoint's.
    return LayerResult(result, {name: p.detach() for name, p in layer.named_parameters()})


def _quantize_layer(
    lw: LayerwiseModel,
    i: int,
    plan: LayerPlan,
    cfg: QuantizeConfig,
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    writer: SafetensorsWriter,
) -> None:
    """Quantize layer ``i`` with the registered method, write its tensors, and unload it."""
    prefix = lw.layer_prefix(i)
    method: LayerQuantizer = QUANTIZERS.get(cfg.method.value)  # type: ignore[assignment]
    done = method(lw, i, plan, cfg, inputs, kwargs)
    packed = {f"{prefix}{name}.{k}": v for name, q in done.linears.items() for k, v in _pack(q, cfg).items()}
    while writer.pending is not None and writer.pending[0].startswith(prefix):
        name, dtype = writer.pending
        if name in packed:
            writer.write(name, packed[name])
        else:
            rel = name[len(prefix) :]
            value = done.tensors[rel] if done.tensors is not None and rel in done.tensors else lw.ckpt.get(name)
            writer.write(name, value.to(dtype))
            lw.ckpt.release(name)
    lw.unload_layer(i)
