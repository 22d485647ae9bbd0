"""The compressed-tensors ``pack-quantized`` format (vLLM's native W4A16/W8A16, as llm-compressor writes it);
layout in mtk.quantizers.compressed.

Its runtime is transformers with compressed-tensors (0.20), which unpacks the weights itself, with its own
reader, and runs them as float Linears: any group size that divides the input width loads; vLLM's kernels for
the format (CompressedTensorsWNA16) take 4 and 8 bits only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.errors import EnvironmentProblem, UsageError
from mtk.quantizers.formats import FORMATS, CheckpointFormat, MoeSupport, PackedShapes, float_tolerance, group_label

if TYPE_CHECKING:
    import torch

    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.linear import QuantizedLinear

# The compressed-tensors release whose layout and config keys this module writes (and its tests read back).
FORMAT_VERSION = "0.20.0"


def refuse(cfg: QuantizeConfig) -> str | None:
    if cfg.desc_act and not cfg.static_groups:
        return (
            "the compressed-tensors format has no g_idx (act-order 'group' was removed in compressed-tensors "
            "0.20): use --desc-act with --static-groups, or drop --desc-act"
        )
    if cfg.method == "awq" and cfg.sym:
        return "AWQ's grid has a zero point: drop --sym for the compressed-tensors format"
    return None


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    # vLLM allocates whole int32 words: in / (32 / bits) for the weight, out / (32 / bits) for zero points.
    per_word = 32 // cfg.bits
    if cols % per_word or (not cfg.sym and out % per_word):
        raise UsageError(
            f"{name}: compressed-tensors packing needs an input width (and, with zero points, an output width) "
            f"divisible by {per_word} at {cfg.bits} bits, got {out}x{cols}"
        )


def packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
    import torch

    from mtk.quantizers.compressed import SCALE_DTYPE, word_count

    n = 1 if cfg.group_size == -1 else cols // cfg.group_size
    shapes = {
        "weight_packed": (torch.int32, (out, word_count(cols, cfg.bits))),
        "weight_scale": (SCALE_DTYPE, (out, n)),
        "weight_shape": (torch.int64, (2,)),
    }
    if not cfg.sym:
        shapes["weight_zero_point"] = (torch.int32, (word_count(out, cfg.bits), n))
    return shapes


def pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    from mtk.quantizers import compressed

    return compressed.pack_compressed(q.codes, q.scale, q.zero, q.g_idx, cfg.bits, bool(cfg.sym))


def unpack(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
    from mtk.quantizers import compressed

    return compressed.unpack_compressed(tensors, scheme_weights(qc)["num_bits"])


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``quantization_config`` llm-compressor writes for one int weight-only scheme on every Linear.

    Keys and defaults as ``ModelCompressor.update_config`` serialises a ``QuantizationConfig`` (compressed-tensors
    0.20): the head stays float (``ignore``); everything mtk does not quantize in the decoder is an Embedding or a
    norm, which the ``Linear`` target does not match.
    """
    weights: dict[str, Any] = {
        "num_bits": cfg.bits,
        "type": "int",
        "symmetric": bool(cfg.sym),
        # Per channel: no group size (as compressed-tensors' own channel presets; vLLM reads None as -1).
        "group_size": None if cfg.group_size == -1 else cfg.group_size,
        "strategy": "channel" if cfg.group_size == -1 else "group",
        "dynamic": False,
    }
    if cfg.desc_act:  # only with static groups (refuse): compressed-tensors' calibration-only "weight" order
        weights["actorder"] = "weight"
    return scheme_config("pack-quantized", weights, None)


def scheme_config(fmt: str, weights: dict[str, Any], inputs: dict[str, Any] | None) -> dict[str, Any]:
    """The ``quantization_config`` of one scheme (weight and input activation arguments) on every Linear, stored in
    compressed-tensors format ``fmt`` (``pack-quantized``, ``float-quantized`` ...)."""
    return {
        "version": FORMAT_VERSION,
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": inputs,
                "output_activations": None,
                "format": fmt,
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
        "transform_config": {},
    }


def moe_config(qc: dict[str, Any], keep_float: tuple[str, ...]) -> dict[str, Any]:
    """A MoE checkpoint's config: the modules that stay float join ``ignore`` (as ``re:`` patterns, as llm-compressor
    writes them for Qwen MoE models), since a Linear among them (``shared_expert_gate``) matches the ``Linear`` target.

    transformers 5 loads the per-expert packed weights (``mlp.experts.{x}.gate_proj.weight_packed`` ...) into its
    fused 3-D experts by dequantizing them first (``CompressedTensorsDequantize`` before its ``MergeModulelist``).
    """
    patterns = [f"re:.*{re.escape(name)}$" for name in keep_float]
    return {**qc, "ignore": [*qc["ignore"], *patterns]}


def moe_refuse(cfg: QuantizeConfig) -> str | None:
    if not cfg.sym:
        # Measured: the experts' load fails with "Asymmetric quant requires zero-point values" (its expert
        # dequantization builds modules with weight_packed, weight_scale and weight_shape only).
        return (
            "transformers 5.24 cannot load asymmetric per-expert compressed-tensors weights (its expert "
            "dequantization drops weight_zero_point)"
            + (": AWQ's grid has a zero point, use --method gptq or rtn" if cfg.method == "awq" else ": use --sym")
        )
    return None


def is_format(qc: dict[str, Any], fmt: str) -> bool:
    """Whether ``qc`` is a compressed-tensors config stored in compressed-tensors format ``fmt``."""
    return qc.get("quant_method") == "compressed-tensors" and qc.get("format") == fmt


def keep_float(qc: dict[str, Any], linears: list[str]) -> dict[str, Any]:
    """compressed-tensors quantizes every module its ``Linear`` target matches: the float ones join ``ignore``."""
    return {**qc, "ignore": sorted({*qc["ignore"], *linears})}


def scheme_weights(qc: dict[str, Any]) -> dict[str, Any]:
    """The weight arguments of the first config group (mtk writes one)."""
    return next(iter(qc.get("config_groups", {}).values()), {}).get("weights") or {}


def scheme_inputs(qc: dict[str, Any]) -> dict[str, Any]:
    """The input activation arguments of the first config group ({} for weight-only schemes)."""
    return next(iter(qc.get("config_groups", {}).values()), {}).get("input_activations") or {}


def available() -> bool:
    return importlib.util.find_spec("compressed_tensors") is not None


def load(path: Path) -> Any:
    """The checkpoint through ``AutoModelForCausalLM.from_pretrained`` on the CPU with compressed-tensors."""
    import json

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not available():
        raise EnvironmentProblem(
            "loading compressed-tensors checkpoints needs compressed-tensors (pip install mtk[quantize])"
        )
    qc = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {}
    if not scheme_weights(qc)["symmetric"]:
        # transformers 5.24 + compressed-tensors 0.20 cannot keep packed zero points compressed: compressing the
        # empty model leaves them unpacked (out, n) int8, so the packed (out * bits / 32, n) int32 tensors that
        # llm-compressor and vLLM use fail with a size mismatch. Dequantizing at load time reads them right.
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    # compressed-tensors 0.20 draws two tqdm bars ("Applying quantization config", "Dispatching model") with an
    # explicit disable=False, which overrides tqdm's own TQDM_DISABLE switch: where that switch is on (mtk's quiet
    # mode sets it), their stderr is dropped for the load. The second comes from the weights' decompression, which
    # a forward pre-hook runs on the first call: one token is run here, so the load is complete when this returns.
    hush = contextlib.redirect_stderr(io.StringIO()) if os.environ.get("TQDM_DISABLE") else contextlib.nullcontext()
    with warnings.catch_warnings(), hush:
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=torch.float32, **kwargs)
        with torch.no_grad():
            model(torch.zeros((1, 1), dtype=torch.long))
    return model


def label(qc: dict[str, Any]) -> str:
    """``compressed-tensors 4-bit g128``: bits and group size from the config group's weight arguments."""
    weights = scheme_weights(qc)
    return group_label(qc.get("quant_method", "quantized"), weights.get("num_bits"), weights.get("group_size"))


COMPRESSED_TENSORS = FORMATS.add(
    "compressed-tensors",
    CheckpointFormat(
        name="compressed-tensors",
        summary="compressed-tensors pack-quantized",
        bits=(4, 8),
        runtime="transformers with compressed-tensors",
        group_sizes={},  # decompressed to float Linears: every group size mtk writes loads
        packed_keys=("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"),
        writes_quantize_config=False,  # compressed-tensors reads config.json only
        refuse=refuse,
        check_shape=check_shape,
        packed_shapes=packed_shapes,
        pack=pack,
        unpack=unpack,
        quantization_config=quantization_config,
        detect=lambda qc: is_format(qc, "pack-quantized"),
        runtime_available=available,
        runtime_module="compressed_tensors",
        load=load,
        # compressed-tensors unpacks to float Linears: symmetric checkpoints (kept packed until the first forward, then
        # dequantized with the float32 scales of the model) match the files' weights exactly (measured KL 0, max |diff|
        # 0 on SmolLM2); asymmetric ones are dequantized at load time in the checkpoint's float16, measured KL 3e-6.
        tolerance=float_tolerance,
        label=label,
        moe=MoeSupport(config=moe_config, refuse=moe_refuse),
        keep_float=keep_float,
    ),
)
