"""The AutoAWQ GEMM checkpoint format (``version: gemm``), 4 bits only; layout in mtk.quantizers.pack.

Its runtime is transformers with GPTQModel's kernels (see ``_gptqmodel``): the int4 matmul takes groups of 32 to
256 columns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtk.errors import UsageError
from mtk.quantizers.formats import FORMATS, CheckpointFormat, PackedShapes, _gptqmodel

if TYPE_CHECKING:
    import torch

    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.linear import QuantizedLinear


def refuse(cfg: QuantizeConfig) -> str | None:
    if cfg.desc_act:
        return "the AWQ GEMM format has no act-order (g_idx); drop --desc-act"
    return None


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    if out % 8:
        raise UsageError(f"{name}: AWQ GEMM needs an output width divisible by 8, got {out}")
    _gptqmodel.check_width(name, cols, cfg)


def packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
    import torch

    n = 1 if cfg.group_size == -1 else cols // cfg.group_size
    return {
        "qweight": (torch.int32, (cols, out // 8)),
        "qzeros": (torch.int32, (n, out // 8)),
        "scales": (torch.float16, (n, out)),
    }


def pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    from mtk.quantizers import pack as layout

    return layout.pack_awq(q.codes, q.scale, q.zero)


def unpack(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
    from mtk.quantizers import pack as layout

    return layout.unpack_awq(tensors)


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``quantization_config`` transformers and GPTQModel read (GPTQModel 7.6's keys for AWQ GEMM)."""
    return {
        **_gptqmodel.common_config(cfg),
        "quant_method": "awq",
        "method": "awq",
        "format": "gemm",
        "checkpoint_format": "gemm",
        "version": "gemm",
        "zero_point": not cfg.sym,
    }


AWQ = FORMATS.add(
    "awq",
    CheckpointFormat(
        name="awq",
        summary="AutoAWQ GEMM",
        bits=(4,),
        runtime=_gptqmodel.RUNTIME,
        group_sizes=_gptqmodel.GROUP_SIZES,
        packed_keys=("qweight", "qzeros", "scales"),
        writes_quantize_config=True,
        refuse=refuse,
        check_shape=check_shape,
        packed_shapes=packed_shapes,
        pack=pack,
        unpack=unpack,
        quantization_config=quantization_config,
        detect=lambda qc: qc.get("quant_method") == "awq",
        runtime_available=_gptqmodel.available,
        runtime_module="gptqmodel",
        load=_gptqmodel.load,
        tolerance=_gptqmodel.tolerance,
        label=_gptqmodel.label,
    ),
)
