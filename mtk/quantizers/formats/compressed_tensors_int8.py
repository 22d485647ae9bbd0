"""The compressed-tensors ``int-quantized`` format: INT8 W8A8, int8 weights with one scale per output channel and
int8 activations quantized per token at run time (llm-compressor's ``W8A8`` preset, vLLM's INT8 W8A8 path).

Per Linear: ``weight`` int8 ``(out, in)``, the signed values ``code - 128`` of a symmetric 8-bit grid (mtk's
unsigned codes with the zero point at 128: compressed-tensors' ``round(w / scale)`` clamped to -128..127, the scale
``max|w| / 127.5``); ``weight_scale`` float32 ``(out, 1)``. No zero point, no ``weight_shape``.

Any method whose grid is symmetric 8-bit per channel writes it (RTN, GPTQ, SmoothQuant). Its runtime here is
transformers with compressed-tensors, which dequantizes the weights (``value * scale``) and quantizes each Linear's
input to int8 per token in the forward (the scheme's dynamic input activations), as vLLM does with int8 kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtk.quantizers.formats import FORMATS, CheckpointFormat, PackedShapes, float_tolerance
from mtk.quantizers.formats import compressed_tensors as ct

if TYPE_CHECKING:
    import torch

    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.linear import QuantizedLinear

FORMAT = "int-quantized"


def refuse(cfg: QuantizeConfig) -> str | None:
    if not cfg.sym:
        return "INT8 W8A8 weights are symmetric (no zero point): use --sym"
    if cfg.desc_act and not cfg.static_groups:
        return "the compressed-tensors format has no g_idx: use --desc-act with --static-groups, or drop --desc-act"
    return None


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    """Unpacked int8 values hold any width."""


def packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
    import torch

    # weight_scale first: it marks a quantized Linear (every float Linear has a "weight" too).
    return {"weight_scale": (torch.float32, (out, 1)), "weight": (torch.int8, (out, cols))}


def pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    import torch

    if not bool((q.zero == 128).all()):
        raise ValueError("INT8 W8A8 packing needs a symmetric grid (zero point 128)")
    return {"weight_scale": q.scale.float().contiguous(), "weight": (q.codes - 128).to(torch.int8)}


def unpack(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
    return tensors["weight"].float() * tensors["weight_scale"].float()


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """compressed-tensors 0.20's ``W8A8`` (``INT8_W8A8``) preset as it serialises its ``QuantizationArgs``."""
    weights = {
        "num_bits": 8,
        "type": "int",
        "symmetric": True,
        "group_size": None,
        "strategy": "channel",
        "dynamic": False,
    }
    inputs = {**weights, "strategy": "token", "dynamic": True}
    if cfg.desc_act:  # only with static groups (refuse)
        weights["actorder"] = "weight"
    return ct.scheme_config(FORMAT, weights, inputs)


def activations(qc: dict[str, Any]) -> Any:
    from mtk.quantizers.activations import int8_dynamic, unchanged

    return int8_dynamic() if ct.scheme_inputs(qc) else unchanged


def label(qc: dict[str, Any]) -> str:
    """``compressed-tensors int8 w8a8``."""
    return "compressed-tensors int8 w8a8"


COMPRESSED_TENSORS_INT8 = FORMATS.add(
    "compressed-tensors-int8",
    CheckpointFormat(
        name="compressed-tensors-int8",
        summary="compressed-tensors int-quantized INT8 W8A8",
        bits=(8,),
        runtime="transformers with compressed-tensors (vLLM's INT8 W8A8)",
        group_sizes={8: (-1,)},  # per output channel: vLLM's W8A8 int kernels take channel (or tensor) scales
        packed_keys=("weight_scale", "weight"),
        writes_quantize_config=False,
        refuse=refuse,
        check_shape=check_shape,
        packed_shapes=packed_shapes,
        pack=pack,
        unpack=unpack,
        quantization_config=quantization_config,
        detect=lambda qc: ct.is_format(qc, FORMAT),
        runtime_available=ct.available,
        runtime_module="compressed_tensors",
        load=ct.load,
        # The verifier's float model quantizes the Linear inputs as the runtime does (``activations``): what remains is
        # float32 rounding where the two order their operations differently.
        tolerance=float_tolerance,
        label=label,
        activations=activations,
        keep_float=ct.keep_float,
    ),
)
