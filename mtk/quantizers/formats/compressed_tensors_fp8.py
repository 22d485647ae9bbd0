"""The compressed-tensors ``float-quantized`` format with FP8 weights and dynamic FP8 activations: what
llm-compressor's ``FP8_DYNAMIC`` (per-channel weight scales, per-token activations) and ``FP8_BLOCK`` (``b x b``
weight blocks, activations per group of ``b``) presets write, vLLM's FP8 W8A8 path. Grid in mtk.quantizers.fp8.

Per Linear: ``weight`` ``float8_e4m3fn`` ``(out, in)``; ``weight_scale`` float32 ``(out, 1)`` (channel) or
``(out / b, in / b)`` (block). No zero point (symmetric), no ``weight_shape``.

Its runtime here is transformers with compressed-tensors (0.20), which dequantizes the FP8 weights
(``x_q.to(scale.dtype) * scale``) and quantizes the Linear inputs to FP8 on the fly as the scheme's dynamic input
activations say; the verifier applies the same activation rounding to its float model of the files' weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtk.quantizers.formats import FORMATS, CheckpointFormat, float_tolerance
from mtk.quantizers.formats import compressed_tensors as ct
from mtk.quantizers.formats._fp8 import Fp8Tensors, refuse

if TYPE_CHECKING:
    from mtk.quantizers.config import QuantizeConfig

FORMAT = "float-quantized"


TENSORS = Fp8Tensors("weight_scale")


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """``FP8_DYNAMIC`` (group size -1) or ``FP8_BLOCK`` with ``b x b`` blocks, as compressed-tensors 0.20
    serialises those presets' ``QuantizationArgs``."""
    block = cfg.group_size
    weights: dict[str, Any] = {
        "num_bits": 8,
        "type": "float",
        "symmetric": True,
        "group_size": None,
        "strategy": "channel" if block == -1 else "block",
        "dynamic": False,
    }
    inputs: dict[str, Any] = {
        "num_bits": 8,
        "type": "float",
        "symmetric": True,
        "group_size": None if block == -1 else block,
        "strategy": "token" if block == -1 else "group",
        "dynamic": True,
    }
    if block != -1:
        weights["block_structure"] = [block, block]
    return ct.scheme_config(FORMAT, weights, inputs)


def activations(qc: dict[str, Any]) -> Any:
    """Per token (channel weights) or per group of the block size (block weights), as the scheme says."""
    from mtk.quantizers.activations import fp8_dynamic, unchanged

    inputs = ct.scheme_inputs(qc)
    return fp8_dynamic(inputs.get("group_size")) if inputs else unchanged


def label(qc: dict[str, Any]) -> str:
    """``compressed-tensors e4m3 channel`` or ``compressed-tensors e4m3 block128``."""
    block = ct.scheme_weights(qc).get("block_structure")
    return "compressed-tensors e4m3 " + (f"block{block[0]}" if block else "channel")


COMPRESSED_TENSORS_FP8 = FORMATS.add(
    "compressed-tensors-fp8",
    CheckpointFormat(
        name="compressed-tensors-fp8",
        summary="compressed-tensors float-quantized FP8 W8A8",
        bits=(8,),
        runtime="transformers with compressed-tensors (vLLM's FP8 W8A8)",
        group_sizes={},  # -1 per channel, b: b x b blocks
        packed_keys=("weight_scale", "weight"),
        writes_quantize_config=False,
        refuse=refuse,
        check_shape=TENSORS.check_shape,
        packed_shapes=TENSORS.packed_shapes,
        pack=TENSORS.pack,
        unpack=TENSORS.unpack,
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
