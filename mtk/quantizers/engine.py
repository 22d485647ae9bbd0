"""``mtk quantize``: a registered method (``QUANTIZERS``: GPTQ, AWQ, RTN ...) over an HF checkpoint, layer by layer,
written in a registered checkpoint format (``FORMATS``: GPTQ v1, AWQ GEMM, compressed-tensors pack-quantized ...).

Load, transform, save: the output's tensor plan (names, dtypes, shapes) is fixed up front from the
checkpoint and the config; calibration activations are captured once at the first decoder layer; then each
layer is loaded, quantized, run forward to make the next layer's inputs, written, and unloaded. Everything
outside the decoder layers (embeddings, final norm, head) is copied unchanged. The folder is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtk.converters.family import LayerPlan, layer_plan, layer_plans, open_checkpoint
from mtk.errors import UnsupportedError, UsageError
from mtk.formats.atomic import atomic_dir
from mtk.formats.checkpoint import TOKENIZER_FILES, HFCheckpoint
from mtk.formats.safetensors_io import SafetensorsWriter
from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.layerwise import LayerwiseModel, to_device
from mtk.quantizers.methods import LayerResult
from mtk.quantizers.moe import expert_count
from mtk.quantizers.plan import linear_names, stored_name
from mtk.runtime import resolve_device

Progress = Callable[[int, int, str], None]


# Tensors that stay unquantized (embeddings, norms, head, biases) are stored as float16, as in AutoGPTQ and
# AutoAWQ checkpoints: a float32 tied embedding would otherwise be two thirds of a small model's file.
STORED_FLOAT = torch.float16


def _stored(dtype: torch.dtype) -> torch.dtype:
    return STORED_FLOAT if dtype.is_floating_point else dtype


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    """Refuse a Linear the groups or the output format cannot hold, naming the width and the constraint."""
    if cfg.group_size != -1 and cols % cfg.group_size:
        raise UsageError(
            f"{name}: input width {cols} is not a multiple of group size {cfg.group_size} "
            f"(choose a group size that divides it, e.g. 64 or 32, or -1 for per-channel)"
        )
    cfg.format_row.check_shape(name, out, cols, cfg)


def output_plan(
    ckpt: HFCheckpoint, lw_prefix: str, n_layers: int, plans: list[LayerPlan], cfg: QuantizeConfig, n_experts: int = 0
) -> tuple[list[tuple[str, torch.dtype, tuple[int, ...]]], list[str]]:
    """The output tensors in write order (everything else, then layer by layer) and the non-layer names;
    ``plans``: each layer's."""
    planned = {
        (stored_name(plans[i], f"{lw_prefix}layers.{i}.{n}.weight"), n, i)
        for i in range(n_layers)
        for n in linear_names(plans[i], n_experts)
    }
    missing = sorted(q for q, n, i in planned if q not in ckpt and n not in plans[i].optional)
    quantized = {q for q, _, _ in planned if q in ckpt}
    if missing:
        raise UnsupportedError(f"{ckpt.path}: expected Linear weights not found (e.g. {missing[0]})")
    fmt = cfg.format_row
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
                entries += [(f"{base}.{k}", d, s) for k, (d, s) in fmt.packed_shapes(out, cols, cfg).items()]
            else:
                entries.append((name, _stored(ckpt.dtype(name)), ckpt.shape(name)))
    return entries, others


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``quantization_config`` the chosen format's runtime reads from config.json."""
    return cfg.format_row.quantization_config(cfg)


# The format a mixture-of-experts model is written in unless --format says otherwise: the one whose runtime loads
# per-expert weights back into transformers 5's fused experts (see moe_refusal).
MOE_FORMAT = "compressed-tensors"


def moe_refusal(model_type: str, cfg: QuantizeConfig) -> str | None:
    """Why ``cfg`` cannot write a mixture-of-experts model that loads back, or None."""
    moe = cfg.format_row.moe
    if moe is None:
        method = cfg.method_row
        if method.formats is not None and MOE_FORMAT not in method.formats:
            return (
                f"{model_type} is a mixture-of-experts model and --method {method.name} writes no format whose "
                f"runtime loads per-expert weights back ({', '.join(method.formats)}): use --method gptq or rtn"
            )
        return (
            f"{model_type} is a mixture-of-experts model and the {cfg.format} format cannot hold its experts: "
            f"{cfg.format_row.runtime} does not load per-expert checkpoints back into transformers 5's fused "
            f"experts; use --format {MOE_FORMAT} (the default for MoE models)"
        )
    why = moe.refuse(cfg)
    return f"{model_type} is a mixture-of-experts model and {why}" if why else None


def fit_format(cfg: QuantizeConfig, model_dir: Path | str, *, explicit: bool) -> QuantizeConfig:
    """``cfg`` for the model in ``model_dir``: a MoE model gets ``MOE_FORMAT`` unless a format was ``explicit``
    (one that cannot hold experts is refused, UnsupportedError). Without a readable config.json, ``cfg`` as is
    (``quantize`` reports the folder)."""
    try:
        model_type = str(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))["model_type"])
        plan = layer_plan(model_type)
    except (OSError, ValueError, KeyError, TypeError, UnsupportedError):
        return cfg
    if plan.experts is None:
        return cfg
    method_formats = cfg.method_row.formats
    if cfg.format_row.moe is None and not explicit and (method_formats is None or MOE_FORMAT in method_formats):
        try:
            cfg = dataclasses.replace(cfg, format=MOE_FORMAT)
        except ValueError as exc:
            raise UsageError(f"{model_type} is written as {MOE_FORMAT} (a mixture-of-experts model): {exc}") from None
    why = moe_refusal(model_type, cfg)
    if why:
        raise UnsupportedError(why)
    return cfg


def _copy_config(ckpt: HFCheckpoint, dst: Path, cfg: QuantizeConfig, plan: LayerPlan, float_linears: list[str]) -> None:
    """config.json (a text tower's own config for a multimodal source) with the format's quantization_config;
    ``float_linears``: the model's Linears outside the decoder layers, which stay float."""
    src = ckpt.path
    config = dict(ckpt.config)
    qc = quantization_config(cfg)
    moe = cfg.format_row.moe
    if plan.experts is not None and moe is not None:
        qc = moe.config(qc, plan.experts.keep_float)
    if cfg.format_row.keep_float is not None:  # a runtime that quantizes every Linear it is not told to leave
        qc = cfg.format_row.keep_float(qc, float_linears)
    config["quantization_config"] = qc
    config.pop("torch_dtype", None)
    config["dtype"] = str(STORED_FLOAT).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if cfg.format_row.writes_quantize_config:
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
    ckpt, note = open_checkpoint(model_dir)
    model_type = str(ckpt.config.get("model_type"))
    plan = layer_plan(model_type)
    why = moe_refusal(model_type, cfg) if plan.experts is not None else None
    if why:
        raise UnsupportedError(why)
    if cfg.needs_calibration and not plan.layerwise_forward:
        raise UnsupportedError(
            f"--method {cfg.method} does not support {model_type!r} yet: its layers take per-layer "
            "inputs and K/V of earlier layers, which the layer-by-layer calibration does not carry; --method rtn works"
        )
    if cfg.needs_calibration and calibration is None:
        raise UsageError(f"--method {cfg.method} needs --calibration FILE (text, JSONL or Parquet)")
    # A method's options may name the dtype its layers calibrate in (GPTQ's calibration_dtype); float32 otherwise.
    dtype = getattr(torch, getattr(cfg.options, "calibration_dtype", "float32"))
    lw = LayerwiseModel(model_dir, dev, ckpt, plan, dtype)
    n_layers = len(lw.layers)
    n_experts = expert_count(plan, lw.config)
    plans = layer_plans(model_type, getattr(lw.config, "layer_types", None), n_layers)
    entries, others = output_plan(ckpt, lw.prefix, n_layers, plans, cfg, n_experts)
    ids = None
    if cfg.needs_calibration:
        from transformers import AutoTokenizer

        from mtk.converters.calibration import load_calibration

        ids = load_calibration(calibration, AutoTokenizer.from_pretrained(str(model_dir)), cfg.samples, cfg.seq_len)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        hook = cfg.format_row.safetensors_metadata
        metadata = hook(entries, cfg) if hook else None
        with SafetensorsWriter(tmp, entries, metadata=metadata) as writer:
            for name in others:
                writer.write(name, ckpt.get(name).to(_stored(ckpt.dtype(name))))
                ckpt.release(name)
            inputs, kwargs = lw.capture(ids) if ids is not None else ([], {})
            done = []  # per layer: the tokens routed to each expert, the Linears that took a fallback
            for i in range(n_layers):
                layer = _quantize_layer(lw, i, plans[i], cfg, inputs, to_device(kwargs.get(i, {}), dev), writer)
                done.append((layer.routed, {name: q.fallback for name, q in layer.linears.items() if q.fallback}))
                if progress:
                    progress(i + 1, n_layers, f"layer {i}")
        outside = [n for n, m in lw.model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." not in n]
        _copy_config(ckpt, tmp, cfg, plan, outside)
        verification = check(tmp) if check else None
    result = {
        **({"note": note} if note else {}),
        "input": str(model_dir),
        "output": str(out_dir),
        "method": cfg.method,
        "format": cfg.format,
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "sym": cfg.sym,
        "samples": 0 if ids is None else int(ids.shape[0]),
        "seq_len": 0 if ids is None else int(ids.shape[1]),
        "layers": n_layers,
        **({"experts": experts_report(done, n_experts, cfg)} if n_experts else {}),
        # Linears that did not get the method's own result (a MoE expert no token reached ...), and why.
        "fallbacks": [
            {"layer": i, "linear": n, "fallback": why} for i, (_, notes) in enumerate(done) for n, why in notes.items()
        ],
        "device": str(dev),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if verification is not None:
        result["verification"] = verification
    return result


def _quantize_layer(
    lw: LayerwiseModel,
    i: int,
    plan: LayerPlan,
    cfg: QuantizeConfig,
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    writer: SafetensorsWriter,
) -> LayerResult:
    """Quantize layer ``i`` with the registered method, write its tensors, and unload it."""
    prefix = lw.layer_prefix(i)
    done = cfg.method_row.quantize_layer(lw, i, plan, cfg, inputs, kwargs)
    fmt = cfg.format_row
    # Module-tree names as the checkpoint names them (Mixtral's block_sparse_moe is transformers' mlp).
    packed = {
        lw.checkpoint_name(f"{prefix}{name}.{k}"): v
        for name, q in done.linears.items()
        for k, v in fmt.pack(q, cfg).items()
    }
    changed = {lw.checkpoint_name(prefix + k): v for k, v in (done.tensors or {}).items()}
    while writer.pending is not None and writer.pending[0].startswith(prefix):
        name, dtype = writer.pending
        if name in packed:
            writer.write(name, packed[name])
        else:
            value = changed[name] if name in changed else lw.ckpt.get(name)
            writer.write(name, value.to(dtype))
            lw.ckpt.release(name)
    lw.unload_layer(i)
    return done


def experts_report(
    done: list[tuple[list[int] | None, dict[str, str]]], n_experts: int, cfg: QuantizeConfig
) -> dict[str, Any]:
    """The ``experts`` entry of a MoE result: the expert count, the calibration mode and, per layer, the calibration
    tokens routed to each expert (an empty list without calibration)."""
    return {
        "count": n_experts,
        "calibration": cfg.moe_calibration if cfg.needs_calibration else None,
        "routed_tokens": [routed or [] for routed, _ in done],
    }
