"""``mtk quantize``: a registered method (``QUANTIZERS``: GPTQ, AWQ, RTN ...) over an HF checkpoint, layer by layer,
written in a registered checkpoint format (``FORMATS``: GPTQ v1, AWQ GEMM, compressed-tensors pack-quantized ...).

Load, transform, save: the output's tensor plan (names, dtypes, shapes) is fixed up front from the
checkpoint and the config; calibration activations are captured once at the first decoder layer; then each
layer is loaded, quantized, run forward to make the next layer's inputs, written, and unloaded. Everything
outside the decoder layers (embeddings, final norm, head) is copied unchanged. The folder is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mtk.converters.family import LayerPlan, layer_plan, layer_plans
from mtk.errors import UnsupportedError, UsageError
from mtk.formats.atomic import atomic_dir
from mtk.formats.checkpoint import TOKENIZER_FILES, HFCheckpoint
from mtk.formats.safetensors_io import SafetensorsWriter
from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.layerwise import LayerwiseModel, to_device
from mtk.quantizers.methods import linear_names
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
    ckpt: HFCheckpoint, lw_prefix: str, n_layers: int, plans: list[LayerPlan], cfg: QuantizeConfig
) -> tuple[list[tuple[str, torch.dtype, tuple[int, ...]]], list[str]]:
    """The output tensors in write order (everything else, then layer by layer) and the non-layer names;
    ``plans``: each layer's."""
    quantized = {f"{lw_prefix}layers.{i}.{n}.weight" for i in range(n_layers) for n in linear_names(plans[i])}
    missing = sorted(q for q in quantized if q not in ckpt)
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


def _copy_config(src: Path, dst: Path, cfg: QuantizeConfig) -> None:
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    qc = quantization_config(cfg)
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
    ckpt = HFCheckpoint(model_dir)
    model_type = str(ckpt.config.get("model_type"))
    layer_plan(model_type)  # refuses a family without one before anything is loaded
    if cfg.needs_calibration and calibration is None:
        raise UsageError(f"--method {cfg.method} needs --calibration FILE (text, JSONL or Parquet)")
    lw = LayerwiseModel(model_dir, dev, ckpt)
    n_layers = len(lw.layers)
    plans = layer_plans(model_type, getattr(lw.config, "layer_types", None), n_layers)
    entries, others = output_plan(ckpt, lw.prefix, n_layers, plans, cfg)
    ids = None
    if cfg.needs_calibration:
        from transformers import AutoTokenizer

        from mtk.converters.calibration import load_calibration

        ids = load_calibration(calibration, AutoTokenizer.from_pretrained(str(model_dir)), cfg.samples, cfg.seq_len)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        with SafetensorsWriter(tmp, entries) as writer:
            for name in others:
                writer.write(name, ckpt.get(name).to(_stored(ckpt.dtype(name))))
                ckpt.release(name)
            inputs, kwargs = lw.capture(ids) if ids is not None else ([], {})
            for i in range(n_layers):
                _quantize_layer(lw, i, plans[i], cfg, inputs, to_device(kwargs.get(i, {}), dev), writer)
                if progress:
                    progress(i + 1, n_layers, f"layer {i}")
        _copy_config(model_dir, tmp, cfg)
        verification = check(tmp) if check else None
    result = {
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
) -> None:
    """Quantize layer ``i`` with the registered method, write its tensors, and unload it."""
    prefix = lw.layer_prefix(i)
    done = cfg.method_row.quantize_layer(lw, i, plan, cfg, inputs, kwargs)
    fmt = cfg.format_row
    packed = {f"{prefix}{name}.{k}": v for name, q in done.linears.items() for k, v in fmt.pack(q, cfg).items()}
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
