"""The GPTQ v1 checkpoint format (AutoGPTQ/GPTQModel ``checkpoint_format: gptq``); layout in mtk.quantizers.pack.

Its runtime is transformers with GPTQModel's kernels (see ``_gptqmodel``): bits 2, 3, 4, 8; at 4 bits the
int4 matmul takes groups of 32 to 256 columns only, so those are the group sizes offered at every width.
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
    return None  # g_idx holds any column order, and qzeros any zero point


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    # pack_bits packs 32 values at a time along each packed dimension: the input width (qweight) and the
    # outputs (qzeros). A 16-row k_proj (one KV head of 16) passed out*bits and then failed inside the packer.
    if cols % 32 or out % 32:
        raise UsageError(
            f"{name}: GPTQ packing needs an input width and an output count divisible by 32, got ({out}, {cols})"
        )
    _gptqmodel.check_width(name, cols, cfg)


def packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
    import torch

    n = 1 if cfg.group_size == -1 else cols // cfg.group_size
    return {
        "qweight": (torch.int32, (cols * cfg.bits // 32, out)),
        "qzeros": (torch.int32, (n, out * cfg.bits // 32)),
        "scales": (torch.float16, (n, out)),
        "g_idx": (torch.int32, (cols,)),
    }


def pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    from mtk.quantizers import pack as layout

    return layout.pack_gptq(q.codes, q.scale, q.zero, q.g_idx, cfg.bits)


def unpack(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
    from mtk.quantizers import pack as layout

    return layout.unpack_gptq(tensors, qc["bits"])


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``quantization_config`` transformers and GPTQModel read (GPTQModel 7.6's keys)."""
    common = _gptqmodel.common_config(cfg)
    return {**common, "quant_method": "gptq", "method": "gptq", "format": "gptq", "checkpoint_format": "gptq"}


GPTQ = FORMATS.add(
    "gptq",
    CheckpointFormat(
        name="gptq",
        summary="AutoGPTQ/GPTQModel v1",
        bits=(2, 3, 4, 8),
        runtime=_gptqmodel.RUNTIME,
        group_sizes=_gptqmodel.GROUP_SIZES,
        packed_keys=("qweight", "qzeros", "scales", "g_idx"),
        writes_quantize_config=True,
        refuse=refuse,
        check_shape=check_shape,
        packed_shapes=packed_shapes,
        pack=pack,
        unpack=unpack,
        quantization_config=quantization_config,
        detect=lambda qc: qc.get("quant_method") == "gptq",
        runtime_available=_gptqmodel.available,
        runtime_module="gptqmodel",
        load=_gptqmodel.load,
        tolerance=_gptqmodel.tolerance,
        label=_gptqmodel.label,
    ),
)
