"""bnb: bitsandbytes' own weight types (``quantizers.bnb``): NF4 or FP4 in blocks of 64 with optional double
quantization at 4 bits, LLM.int8()'s row-wise int8 at 8 bits; no calibration, written in the bitsandbytes format.

These are the codes ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`` computes when it loads a
float model; quantizing ahead of time gives a folder that loads without the float weights (and ``mtk bench``,
``--verify`` see what bitsandbytes runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtk.quantizers.methods import QUANTIZERS, LayerResult, MethodConfig, QuantMethod

if TYPE_CHECKING:
    import torch

    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.layerwise import LayerwiseModel

# bitsandbytes' 4-bit types and block (mtk.quantizers.bnb's QUANT_TYPES and BLOCKSIZE; repeated here so that the
# CLI need not import torch).
QUANT_TYPES = ("nf4", "fp4")
BLOCKSIZE = 64


@dataclass(frozen=True)
class BnBConfig(MethodConfig):
    """``bnb_quant_type``: the 4-bit codebook (``nf4``, QLoRA's normal quantiles, or ``fp4``); ``bnb_double_quant``:
    also quantize the block absmax values in 8 bits (QLoRA's double quantization, ~0.4 bit per weight less)."""

    bnb_quant_type: str = "nf4"
    bnb_double_quant: bool = False

    def __post_init__(self) -> None:
        if self.bnb_quant_type not in QUANT_TYPES:
            raise ValueError(f"--bnb-quant-type is {' or '.join(QUANT_TYPES)}, not {self.bnb_quant_type!r}")


def quantize_layer(
    lw: LayerwiseModel, i: int, plan: LayerPlan, cfg: QuantizeConfig, inputs: list[torch.Tensor], kwargs: dict[str, Any]
) -> LayerResult:
    """Weights straight from the checkpoint, in bitsandbytes' types."""
    from mtk.quantizers import bnb
    from mtk.quantizers.methods.rtn import from_checkpoint

    opts = cfg.options

    def fit(w: torch.Tensor) -> bnb.CodebookLinear:
        if cfg.bits == 8:
            return bnb.quantize_int8(w)
        return bnb.quantize_4bit(w, opts.bnb_quant_type, cfg.group_size, opts.bnb_double_quant)

    return from_checkpoint(lw, i, plan, fit)


BNB = QUANTIZERS.add(
    "bnb",
    QuantMethod(
        name="bnb",
        summary="bitsandbytes NF4/FP4 or LLM.int8(), no calibration",
        needs_calibration=False,
        bits=(4, 8),
        default_format="bitsandbytes",
        default_sym=True,
        options=BnBConfig,
        quantize_layer=quantize_layer,
        formats=("bitsandbytes",),
        default_group_sizes={4: BLOCKSIZE, 8: -1},  # transformers' blocks of 64; LLM.int8() is row-wise
    ),
)
