"""transformers' fine-grained FP8 format (``quant_method: fp8``, ``FineGrainedFP8Config``): DeepSeek-V3's block FP8
checkpoints, with dynamic per-group activations. Grid in mtk.quantizers.fp8.

Per Linear: ``weight`` ``float8_e4m3fn`` ``(out, in)``; ``weight_scale_inv`` float32 ``(out / b, in / b)``, the scale
each ``b x b`` block's values are multiplied by (DeepSeek's name: the inverse of the quantizer's ``448 / amax``).
Blocks only: the format has no per-channel scales (``weight_block_size`` null means one scale per tensor).

Its runtime is transformers: on a GPU (compute capability 8.9+) it keeps the FP8 weights and runs its block-FP8
kernels; without one it dequantizes the weights at load time (``Fp8Dequantize``: ``weight * weight_scale_inv`` per
block, which needs both dimensions to be multiples of ``b``) and runs float Linears, which is how mtk verifies it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.quantizers.formats import FORMATS, CheckpointFormat, float_tolerance
from mtk.quantizers.formats._fp8 import Fp8Tensors
from mtk.quantizers.formats._fp8 import refuse as fp8_refuse

if TYPE_CHECKING:
    from mtk.quantizers.config import QuantizeConfig


TENSORS = Fp8Tensors("weight_scale_inv")


def refuse(cfg: QuantizeConfig) -> str | None:
    if cfg.group_size == -1 and cfg.method == "fp8":
        return (
            "the fp8 format (transformers' FineGrainedFP8) has block scales only: give --group-size B for B x B "
            "blocks (128 as DeepSeek-V3), or use --format compressed-tensors-fp8 for per-channel scales"
        )
    return fp8_refuse(cfg)


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """DeepSeek-V3's keys (``fmt`` e4m3 included), with the head named as the module left float."""
    return {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": [cfg.group_size, cfg.group_size],
        "modules_to_not_convert": ["lm_head"],
    }


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("accelerate") is not None  # transformers' FP8 quantizer requires it


def load(path: Path) -> Any:
    """The checkpoint through ``AutoModelForCausalLM.from_pretrained`` on the CPU (dequantized at load time)."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    qc = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
    config = FineGrainedFP8Config(weight_block_size=tuple(qc["weight_block_size"]), dequantize=True)
    return AutoModelForCausalLM.from_pretrained(
        str(path), device_map="cpu", dtype=torch.float32, quantization_config=config
    )


def label(qc: dict[str, Any]) -> str:
    """``fp8 e4m3 block128``."""
    block = qc.get("weight_block_size")
    return "fp8 e4m3 " + (f"block{block[0]}" if block else "tensor")


FINEGRAINED_FP8 = FORMATS.add(
    "fp8",
    CheckpointFormat(
        name="fp8",
        summary="transformers fine-grained FP8 (DeepSeek-V3 blocks)",
        bits=(8,),
        runtime="transformers (FineGrainedFP8)",
        group_sizes={},
        packed_keys=("weight_scale_inv", "weight"),
        writes_quantize_config=False,
        refuse=refuse,
        check_shape=TENSORS.check_shape,
        packed_shapes=TENSORS.packed_shapes,
        pack=TENSORS.pack,
        unpack=TENSORS.unpack,
        quantization_config=quantization_config,
        detect=lambda qc: qc.get("quant_method") == "fp8",
        runtime_available=available,
        runtime_module="transformers",
        load=load,
        # Dequantized at load time to exactly weight * scale in float32: the files' own weights.
        tolerance=float_tolerance,
        label=label,
    ),
)
