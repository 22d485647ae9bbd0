"""What the FP8 formats share: ``weight`` float8_e4m3fn ``(out, in)`` beside a float32 scale tensor, per channel
``(out, 1)`` or per ``b x b`` block ``(out / b, in / b)``, under a name of the format's own (grid in
mtk.quantizers.fp8). Light at import, like the format modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.formats import PackedShapes
    from mtk.quantizers.linear import QuantizedLinear


def refuse(cfg: QuantizeConfig) -> str | None:
    """Why ``cfg`` is no FP8 grid, or None."""
    if cfg.method != "fp8":
        return f"the {cfg.format} format holds FP8 weights: use --method fp8, not {cfg.method}"
    if not cfg.sym:
        return "FP8 weights are symmetric (no zero point): drop --no-sym"
    return None


@dataclass(frozen=True)
class Fp8Tensors:
    """A format's FP8 tensors; ``scale`` is its scale tensor's name (written first: it marks a quantized Linear,
    since every float Linear has a ``weight`` too)."""

    scale: str

    def check_shape(self, name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
        from mtk.quantizers.fp8 import check_blocks

        check_blocks(name, out, cols, cfg.group_size)

    def packed_shapes(self, out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
        import torch

        from mtk.quantizers.fp8 import FP8_DTYPE, scale_shape

        return {self.scale: (torch.float32, scale_shape(out, cols, cfg.group_size)), "weight": (FP8_DTYPE, (out, cols))}

    def pack(self, q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
        from mtk.quantizers.fp8 import FP8_DTYPE, stored_scale

        return {self.scale: stored_scale(q, cfg.group_size), "weight": q.codes.to(FP8_DTYPE)}

    def unpack(self, tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
        from mtk.quantizers.fp8 import dequantize

        return dequantize(tensors["weight"], tensors[self.scale])
