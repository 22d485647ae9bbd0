"""The torchao format: ``IntxWeightOnlyConfig`` weights in torchao's ``IntxUnpackedToInt8Tensor`` layout, as
transformers' ``save_pretrained`` writes them for a model quantized with ``TorchAoConfig`` (torchao 0.18).

Per Linear ``base`` (the tensor subclass flattened by torchao's safetensors support):

- ``{base}._weight_qdata`` int8 ``(out, in)``: the signed values ``code - 2**(bits-1)``, one per byte (-8..7 at
  4 bits): mtk's unsigned codes shifted to the signed range of torch's ``int{bits}``.
- ``{base}._weight_scale`` float32 ``(out, in / group)``.
- ``{base}._weight_zero_point`` int8 ``(out, in / group)``: the zero point shifted the same way (0 for symmetric
  grids). Weight = ``(qdata - zero_point) * scale``, the groups consecutive runs of columns (no ``g_idx``).

The safetensors ``__metadata__`` says how to put the subclass back together: per quantized weight ``{base}.weight``
a JSON object naming ``IntxUnpackedToInt8Tensor`` with its ``target_dtype``, ``block_size`` ``[1, group]`` and
``dtype``, every other tensor ``{"_type": "Tensor"}``, and ``tensor_names`` listing them all. transformers merges the
shards' metadata and checks every listed name, so each shard carries the whole table.

The subclass dequantizes to its recorded ``dtype``, not to the dtype the model is loaded in (measured, transformers
5.25: a float16 ``dtype`` in a model loaded as float32 fails in the first Linear, "expected m1 and m2 to have the same
dtype"), so it is the float dtype mtk writes in config.json (``engine.STORED_FLOAT``): ``from_pretrained`` with no
``dtype`` (or ``dtype=torch.float16``) loads it; for float32, ``.to(torch.float32)`` the loaded model (torchao's own
checkpoints are tied to their save dtype the same way).

One int8 per value: a 4-bit checkpoint is larger than a packed one (SmolLM2-135M RTN 4-bit g64: 167 MB against
112 MB for compressed-tensors). torchao's packed layouts (``Int4WeightOnlyConfig``'s ``Int4Tensor``, the ``OPAQUE_*``
Intx packing formats) belong to its CUDA or C++ kernels: not written here.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.errors import EnvironmentProblem
from mtk.quantizers.formats import FORMATS, CheckpointFormat, PackedShapes, StoredTensor, float_tolerance, group_label

if TYPE_CHECKING:
    import torch

    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.linear import QuantizedLinear

SUBCLASS = "IntxUnpackedToInt8Tensor"
QDATA, SCALE, ZERO = "_weight_qdata", "_weight_scale", "_weight_zero_point"
# The dtype the subclass dequantizes to: config.json's ``dtype`` (mtk.quantizers.engine.STORED_FLOAT).
DEQUANT_DTYPE = "float16"


def refuse(cfg: QuantizeConfig) -> str | None:
    if cfg.desc_act and not cfg.static_groups:
        return "the torchao format has no g_idx: use --desc-act with --static-groups, or drop --desc-act"
    return None


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    """One int8 per value holds any width (the engine checks that the group size divides it)."""


def _groups(cols: int, cfg: QuantizeConfig) -> int:
    return 1 if cfg.group_size == -1 else cols // cfg.group_size


def packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
    import torch

    n = _groups(cols, cfg)
    return {QDATA: (torch.int8, (out, cols)), SCALE: (torch.float32, (out, n)), ZERO: (torch.int8, (out, n))}


def pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    import torch

    out, cols = q.codes.shape
    n = q.scale.shape[1]
    if not torch.equal(q.g_idx.long().cpu(), torch.arange(cols) // (cols // n)):
        raise ValueError("the torchao format has no g_idx: columns must stay in their natural groups (no --desc-act)")
    half = 1 << (cfg.bits - 1)
    return {
        QDATA: (q.codes - half).to(torch.int8).contiguous(),
        SCALE: q.scale.float().contiguous(),
        ZERO: (q.zero - half).to(torch.int8).contiguous(),
    }


def unpack(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
    """float32 ``(out, in)``: ``(qdata - zero_point) * scale``, group ``j`` being columns ``j*g .. (j+1)*g - 1``."""
    qdata, scale, zero = tensors[QDATA], tensors[SCALE].float(), tensors[ZERO]
    g = qdata.shape[1] // scale.shape[1]
    return (qdata.float() - zero.float().repeat_interleave(g, dim=1)) * scale.repeat_interleave(g, dim=1)


def _typed(type_name: str, data: Any, version: int | None = None) -> dict[str, Any]:
    """One object as torchao's ``config_to_dict`` serialises it (``_type``, ``_version``, ``_data``)."""
    return {"_type": type_name, **({"_version": version} if version is not None else {}), "_data": data}


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """``TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int{bits}, granularity=PerGroup(g) or PerAxis(0),
    mapping_type=SYMMETRIC or ASYMMETRIC)).to_dict()`` (transformers 5.25, torchao 0.18). transformers rebuilds the
    tensors from the safetensors metadata; the config says how the weights were quantized."""
    if cfg.group_size == -1:
        granularity = _typed("PerAxis", {"axis": 0}, 1)
    else:
        granularity = _typed("PerGroup", {"group_size": cfg.group_size}, 1)
    weight_only = {
        "granularity": granularity,
        "intx_choose_qparams_algorithm": _typed("IntxChooseQParamsAlgorithm", "AFFINE"),
        "intx_packing_format": _typed("IntxPackingFormat", "UNPACKED_TO_INT8"),
        "mapping_type": _typed("MappingType", "SYMMETRIC" if cfg.sym else "ASYMMETRIC"),
        "scale_dtype": None,
        "weight_dtype": _typed("torch.dtype", f"int{cfg.bits}"),
    }
    return {
        "include_input_output_embeddings": False,
        "modules_to_not_convert": None,
        "quant_method": "torchao",
        "quant_type": {"default": _typed("IntxWeightOnlyConfig", weight_only, 2)},
        "untie_embedding_weights": False,
    }


def safetensors_metadata(tensors: list[StoredTensor], cfg: QuantizeConfig) -> dict[str, str]:
    """torchao's subclass table for the stored ``tensors``: each quantized Linear's three tensors are one
    ``{base}.weight`` subclass entry (its block ``[1, group]`` from the shapes: per channel, the whole width), every
    other tensor a plain one."""
    shapes = {name: shape for name, _, shape in tensors}
    entries: dict[str, str] = {}
    for name, _, shape in tensors:
        if name.endswith(f".{QDATA}"):
            base = name.removesuffix(f".{QDATA}")
            block = [1, shape[1] // shapes[f"{base}.{SCALE}"][1]]
            entries[f"{base}.weight"] = _subclass(cfg.bits, block)
        elif not name.endswith((f".{SCALE}", f".{ZERO}")):
            entries[name] = json.dumps({"_type": "Tensor"})
    return {**entries, "tensor_names": json.dumps(list(entries))}


def _subclass(bits: int, block: list[int]) -> str:
    data = {
        "target_dtype": _typed("torch.dtype", f"int{bits}"),
        "block_size": block,
        "dtype": _typed("torch.dtype", DEQUANT_DTYPE),
        "activation_quantization": None,
    }
    return json.dumps({"_type": SUBCLASS, "_data": data, "_tensor_data_names": ["qdata", "scale", "zero_point"]})


def _weight_bits(qc: dict[str, Any]) -> int | None:
    name = qc.get("quant_type", {}).get("default", {}).get("_data", {}).get("weight_dtype", {}).get("_data", "")
    return int(name[3:]) if isinstance(name, str) and name.startswith("int") and name[3:].isdigit() else None


def label(qc: dict[str, Any]) -> str:
    """``torchao 4-bit g32`` (per-channel weights: no group)."""
    data = qc.get("quant_type", {}).get("default", {}).get("_data", {})
    group = (data.get("granularity") or {}).get("_data", {}).get("group_size")
    return group_label("torchao", _weight_bits(qc), group)


def available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def load(path: Path) -> Any:
    """The checkpoint through ``AutoModelForCausalLM.from_pretrained`` on the CPU with torchao, computing in float32.

    It is loaded in the dtype its tensors dequantize to (``DEQUANT_DTYPE``; any other fails in the first Linear) and
    then moved to float32 (``IntxUnpackedToInt8Tensor.to`` casts the scales and the dequantized dtype; mtk's scales
    are float32 already), so the verifier compares torchao's dequantization of the files with mtk's in the same
    precision: a float16 forward alone differs from a float32 one by more than any layout error on a real model
    (measured on SmolLM2-135M RTN 4-bit g64: mean KL 2.2e-3 against the files' weights in float32).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not available():
        raise EnvironmentProblem("loading torchao checkpoints needs torchao (pip install torchao)")
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="torchao")
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=getattr(torch, DEQUANT_DTYPE))
    return model.to(torch.float32)


TORCHAO = FORMATS.add(
    "torchao",
    CheckpointFormat(
        name="torchao",
        summary="torchao IntxWeightOnly (int8-unpacked)",
        bits=(2, 3, 4, 8),
        runtime="transformers with torchao",
        group_sizes={},  # dequantized per group in torch: every group size mtk writes loads
        packed_keys=(QDATA, SCALE, ZERO),
        writes_quantize_config=False,
        refuse=refuse,
        check_shape=check_shape,
        packed_shapes=packed_shapes,
        pack=pack,
        unpack=unpack,
        quantization_config=quantization_config,
        detect=lambda qc: qc.get("quant_method") == "torchao",
        runtime_available=available,
        runtime_module="torchao",
        load=load,
        # torchao dequantizes each Linear in torch ((qdata - zero_point) * scale, as mtk's unpack) and runs a float
        # Linear: what remains is float32 rounding where the two order their operations differently.
        tolerance=float_tolerance,
        label=label,
        safetensors_metadata=safetensors_metadata,
    ),
)
