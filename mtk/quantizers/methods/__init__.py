"""Quantization methods, one module each: its own frozen config and a registered ``QuantMethod`` row.

A row says what the method needs and allows (calibration, bits, formats, the default format and grid) and holds
its layer quantizer. Like the format rows, these modules import neither torch nor transformers at module level
(the CLI builds its choices from them); the layer quantizers import their math when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mtk.registry import Registry

if TYPE_CHECKING:
    import torch

    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.layerwise import LayerwiseModel
    from mtk.quantizers.linear import QuantizedLinear


@dataclass(frozen=True)
class LayerResult:
    """One quantized layer: its Linears, and its changed float tensors (None: the checkpoint's, unchanged)."""

    linears: dict[str, QuantizedLinear]
    tensors: dict[str, torch.Tensor] | None = None
    # MoE layers: the calibration tokens routed to each expert (None: no calibration or no experts).
    routed: list[int] | None = None


# (model, layer index, plan, config, layer inputs (replaced in place by its outputs), layer kwargs) -> result
LayerQuantizer = Callable[
    ["LayerwiseModel", int, "LayerPlan", "QuantizeConfig", "list[torch.Tensor]", "dict[str, Any]"], LayerResult
]


class MethodConfig:
    """Serialisation shared by the methods' frozen configs (dataclasses of JSON values)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**d)


@dataclass(frozen=True)
class QuantMethod:
    """One method. ``options`` is its config class, whose fields are the ``QuantizeConfig`` options it reads;
    ``formats`` None means every registered format; ``default_bits`` the width when none is given, and
    ``default_group_sizes`` the group size per bit width when none is given (a width not listed:
    ``DEFAULT_GROUP_SIZE``)."""

    name: str
    summary: str
    needs_calibration: bool
    bits: tuple[int, ...]
    default_format: str
    default_sym: bool
    options: type[MethodConfig]
    quantize_layer: LayerQuantizer
    formats: tuple[str, ...] | None = None
    default_bits: int = 4
    default_group_sizes: dict[int, int] = field(default_factory=dict)

    def default_group_size(self, bits: int) -> int:
        return self.default_group_sizes.get(bits, DEFAULT_GROUP_SIZE)


DEFAULT_GROUP_SIZE = 128

QUANTIZERS: Registry[QuantMethod] = Registry("quantization method", entry_point_group="mtk.quantizers")

# The built-in methods register themselves on import (after QUANTIZERS exists).
from mtk.quantizers.methods import awq as _awq  # noqa: E402, F401
from mtk.quantizers.methods import bnb as _bnb  # noqa: E402, F401
from mtk.quantizers.methods import fp8 as _fp8  # noqa: E402, F401
from mtk.quantizers.methods import gptq as _gptq  # noqa: E402, F401
from mtk.quantizers.methods import hqq as _hqq  # noqa: E402, F401
from mtk.quantizers.methods import rtn as _rtn  # noqa: E402, F401
from mtk.quantizers.methods import signround as _signround  # noqa: E402, F401
from mtk.quantizers.methods import smoothquant as _smoothquant  # noqa: E402, F401
