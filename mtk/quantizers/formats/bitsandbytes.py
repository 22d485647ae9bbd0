"""The bitsandbytes checkpoint format: what transformers' bitsandbytes integration (transformers 5.25,
bitsandbytes 0.50) writes with ``save_pretrained`` for a model loaded with a ``BitsAndBytesConfig``; the weight
types are in mtk.quantizers.bnb and only ``--method bnb`` computes them.

Per quantized Linear ``base`` (measured on a tiny llama saved by transformers on the CPU):

- 4-bit (NF4/FP4): ``base.weight`` uint8 ``(out * in / 2, 1)`` (two codes a byte, the first high),
  ``base.weight.absmax`` float32 ``(n_blocks,)`` (uint8 with double quantization, then also
  ``base.weight.nested_absmax`` float32 ``(ceil(n_blocks / 256),)`` and ``base.weight.nested_quant_map`` float32
  ``(256,)``), ``base.weight.quant_map`` float32 ``(16,)`` and ``base.weight.quant_state.bitsandbytes__nf4``
  (``__fp4``): uint8, the UTF-8 bytes of ``json.dumps`` of the state's other fields.
- 8-bit (LLM.int8()): ``base.weight`` int8 ``(out, in)``, ``base.SCB`` float32 ``(out,)`` (row absmax) and
  ``base.weight_format`` uint8 ``()`` (0: row-major, the only layout bitsandbytes 0.50 loads).

The tensor plan is fixed before any weight is quantized, and the double-quantization offset (a float in the
state's JSON) has no fixed length: with double quantization the JSON is padded with trailing spaces to the
longest a float can print as (json.loads, which bitsandbytes reads it with, skips them). Without it the bytes are
transformers'.

Measured on SmolLM2-135M (a float16 copy, so that both quantize the same values): mtk's NF4 and int8 folders hold
the same 902 and 692 tensors as transformers' ``save_pretrained`` after ``from_pretrained(...,
BitsAndBytesConfig(...))`` on the CPU, bit for bit, and the same ``quantization_config``. With double quantization
3,702 of 1,641,600 absmax codes differ by one level: bitsandbytes' CPU build quantizes them with a C kernel whose
rounding near a midpoint is not its reference kernel's (mtk computes the reference's exact nearest level).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.errors import EnvironmentProblem
from mtk.quantizers.formats import FORMATS, CheckpointFormat, PackedShapes, float_tolerance, group_label

if TYPE_CHECKING:
    import torch

    from mtk.compare import Tolerance
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.linear import QuantizedLinear

# bitsandbytes' valid 4-bit block sizes (quantize_4bit), as group sizes; 8 bits: one absmax per row.
GROUP_SIZES = {4: (32, 64, 128, 256, 512, 1024, 2048, 4096), 8: (-1,)}
# The dtype the state records for the dequantized weight: the stored floats' (mtk writes float16 like
# transformers does for a model loaded in float16).
STATE_DTYPE = "float16"
# The longest json.dumps of a float32 value as a Python float (sign, 17 digits, point, exponent).
OFFSET_WIDTH = 24
NESTED_MAP_SIZE = 256
WEIGHT_FORMAT_ROW = 0


def _state_key(quant_type: str) -> str:
    return f"weight.quant_state.bitsandbytes__{quant_type}"


def refuse(cfg: QuantizeConfig) -> str | None:
    if cfg.method != "bnb":
        return "the bitsandbytes format holds bitsandbytes' own NF4/FP4/int8 codes: use --method bnb"
    if not cfg.sym:
        return "bitsandbytes' types scale by the absmax and have no zero point: drop --no-sym"
    if cfg.bits == 8 and (cfg.bnb_quant_type != "nf4" or cfg.bnb_double_quant):
        return "--bnb-quant-type and --bnb-double-quant choose 4-bit types; LLM.int8() (--bits 8) has neither"
    return None


def check_shape(name: str, out: int, cols: int, cfg: QuantizeConfig) -> None:
    return None  # the group size divides the input width (the engine checks it); any row count packs


def _state(out: int, cols: int, cfg: QuantizeConfig, offset: float | None) -> bytes:
    """The state's JSON as bitsandbytes' ``QuantState.as_dict(packed=True)`` writes it (its key order)."""
    state: dict[str, Any] = {
        "quant_type": cfg.bnb_quant_type,
        "blocksize": cfg.group_size,
        "dtype": STATE_DTYPE,
        "shape": [out, cols],
    }
    if not cfg.bnb_double_quant:
        return json.dumps(state).encode()
    from mtk.quantizers.bnb import NESTED_BLOCKSIZE

    state.update({"nested_blocksize": NESTED_BLOCKSIZE, "nested_dtype": "float32", "nested_offset": offset})
    # The offset is the last field: pad to the longest it can print as.
    width = len(json.dumps({**state, "nested_offset": 0.0}).encode()) - len("0.0") + OFFSET_WIDTH
    text = json.dumps(state).encode() if offset is not None else b""
    return text.ljust(width)


def packed_shapes(out: int, cols: int, cfg: QuantizeConfig) -> PackedShapes:
    import torch

    if cfg.bits == 8:
        return {"weight": (torch.int8, (out, cols)), "SCB": (torch.float32, (out,)), "weight_format": (torch.uint8, ())}
    from mtk.quantizers.bnb import NESTED_BLOCKSIZE

    blocks = out * cols // cfg.group_size
    shapes: PackedShapes = {"weight": (torch.uint8, (out * cols // 2, 1))}
    if cfg.bnb_double_quant:
        shapes["weight.absmax"] = (torch.uint8, (blocks,))
        shapes["weight.nested_absmax"] = (torch.float32, (-(-blocks // NESTED_BLOCKSIZE),))
        shapes["weight.nested_quant_map"] = (torch.float32, (NESTED_MAP_SIZE,))
    else:
        shapes["weight.absmax"] = (torch.float32, (blocks,))
    shapes["weight.quant_map"] = (torch.float32, (16,))
    shapes[_state_key(str(cfg.bnb_quant_type))] = (torch.uint8, (len(_state(out, cols, cfg, None)),))
    return shapes


def pack(q: QuantizedLinear, cfg: QuantizeConfig) -> dict[str, torch.Tensor]:
    """The stored tensors of a ``bnb.CodebookLinear`` (in ``packed_shapes``' order)."""
    import torch

    from mtk.quantizers.bnb import INT8_LEVELS, CodebookLinear, dynamic_map

    if not isinstance(q, CodebookLinear) or q.codebook is None:
        raise TypeError("the bitsandbytes format packs bnb.CodebookLinear layers (--method bnb)")
    out, cols = q.codes.shape
    if cfg.bits == 8:
        return {
            "weight": (q.codes - INT8_LEVELS).to(torch.int8),
            "SCB": q.scale[:, 0].float().contiguous(),
            "weight_format": torch.tensor(WEIGHT_FORMAT_ROW, dtype=torch.uint8),
        }
    codes = q.codes.reshape(-1).to(torch.uint8)
    tensors = {"weight": ((codes[0::2] << 4) | codes[1::2]).unsqueeze(1)}
    offset = None
    if q.nested is not None:
        tensors["weight.absmax"] = q.nested.codes
        tensors["weight.nested_absmax"] = q.nested.absmax
        tensors["weight.nested_quant_map"] = dynamic_map().to(q.codes.device)
        offset = float(q.nested.offset)
    else:
        tensors["weight.absmax"] = q.scale.reshape(-1).float()
    tensors["weight.quant_map"] = q.codebook.float()
    state = _state(out, cols, cfg, offset)
    tensors[_state_key(q.quant_type)] = torch.frombuffer(bytearray(state), dtype=torch.uint8)
    return tensors


def read_state(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The JSON fields of a 4-bit Linear's ``quant_state`` tensor."""
    (key,) = [k for k in tensors if k.startswith("weight.quant_state.")]
    return json.loads(bytes(tensors[key].numpy()).decode("utf-8"))


def unpack(tensors: dict[str, torch.Tensor], qc: dict[str, Any]) -> torch.Tensor:
    """The weight ``(out, in)`` the stored tensors define, as the runtime dequantizes it: int8 codes times
    ``SCB / 127`` (float32); 4-bit levels times the (nested-dequantized) block absmax, rounded to the state's dtype."""
    import torch

    if "SCB" in tensors:
        return tensors["weight"].float() * (tensors["SCB"].float()[:, None] / 127)
    state = read_state(tensors)
    packed = tensors["weight"].reshape(-1)
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()
    absmax = tensors["weight.absmax"]
    if "weight.nested_absmax" in tensors:
        nested = tensors["weight.nested_absmax"].repeat_interleave(state["nested_blocksize"])[: absmax.numel()]
        absmax = tensors["weight.nested_quant_map"][absmax.long()] * nested + float(state["nested_offset"])
    blocks = tensors["weight.quant_map"][codes].reshape(-1, state["blocksize"]) * absmax.float()[:, None]
    return blocks.reshape(state["shape"]).to(getattr(torch, state["dtype"]))


def quantization_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """``BitsAndBytesConfig.to_dict()`` as transformers 5.25 writes it into config.json (its defaults for the rest:
    float32 compute, uint8 storage, no skipped modules beyond the head it keeps float itself)."""
    four = cfg.bits == 4
    return {
        "_load_in_4bit": four,
        "_load_in_8bit": not four,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": cfg.bnb_quant_type if four else "fp4",  # transformers' default when unused
        "bnb_4bit_use_double_quant": bool(cfg.bnb_double_quant),
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": None,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": four,
        "load_in_8bit": not four,
        "quant_method": "bitsandbytes",
    }


def keep_float(qc: dict[str, Any], linears: list[str]) -> dict[str, Any]:
    """transformers' bitsandbytes integration converts every Linear but ``llm_int8_skip_modules`` (default: the
    output embedding, i.e. the head). Null as transformers writes it when the head is the only float Linear;
    otherwise all of them (Gemma 4's per-layer input projection stays float beside the head)."""
    if set(linears) <= {"lm_head"}:
        return qc
    return {**qc, "llm_int8_skip_modules": sorted(linears)}


def available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def load(path: Path) -> Any:
    """The checkpoint through ``AutoModelForCausalLM.from_pretrained`` on the CPU with bitsandbytes, computing in
    float32 as the verifier's float model does (two things ``dtype=torch.float32`` alone does not give):

    - transformers 5.25 keeps a pre-quantized bitsandbytes folder's float tensors (embeddings, norms, head) in
      their stored float16 whatever ``dtype`` says (measured), so they are cast to float32 here;
    - on a CPU with AVX512-BF16, bitsandbytes 0.50 repacks each 4-bit weight at its first forward and multiplies in
      bfloat16 (activations and absmax rounded to bfloat16). That is turned off per layer
      (``Linear4bit.support_avx512bf16_for_cpu``, an attribute of the loaded modules, not of the library), so that
      bitsandbytes dequantizes the files (in the state's float16) and multiplies in float32.

    Measured on SmolLM2 NF4 against the files' weights: mean KL 7.8e-3 as transformers loads it, 9e-4 with the
    float32 matmuls, 6e-6 with the float tensors in float32 too. ``mtk bench`` loads the folder as a user does.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not available():
        raise EnvironmentProblem("loading bitsandbytes checkpoints needs bitsandbytes (pip install mtk[quantize])")
    import bitsandbytes as bnb

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*kernels")
        model = AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
        elif not isinstance(module, bnb.nn.Linear8bitLt):
            for param in module.parameters(recurse=False):
                param.data = param.data.float()
    return model


def tolerance(qc: dict[str, Any]) -> Tolerance:
    from mtk.compare import Tolerance

    if qc.get("load_in_8bit"):
        # LLM.int8() quantizes the activations too (row-wise int8, outlier columns above 6.0 apart), which the
        # files' weights in a float model do not: measured mean KL 0.05, top-1 0.89 on SmolLM2 (KL 2e-4 on the tiny
        # llama). A wrong layout or SCB gives KL > 1.
        return Tolerance(kl_mean=0.1, top1=0.8)
    # The weights are dequantized in float16 (the state's dtype) in both: measured mean KL 6e-6 on SmolLM2 NF4.
    return float_tolerance(qc)


def label(qc: dict[str, Any]) -> str:
    """``bitsandbytes 4-bit nf4 g64`` (`` dq`` with double quantization) or ``bitsandbytes 8-bit int8``."""
    if qc.get("load_in_8bit"):
        return group_label("bitsandbytes", 8, None) + " int8"
    dq = " dq" if qc.get("bnb_4bit_use_double_quant") else ""
    return f"bitsandbytes 4-bit {qc.get('bnb_4bit_quant_type', 'fp4')}{dq}"


BITSANDBYTES = FORMATS.add(
    "bitsandbytes",
    CheckpointFormat(
        name="bitsandbytes",
        summary="bitsandbytes NF4/FP4 and LLM.int8()",
        bits=(4, 8),
        runtime="transformers with bitsandbytes",
        group_sizes=GROUP_SIZES,
        packed_keys=(
            "weight",
            "weight.absmax",
            "weight.quant_map",
            "weight.nested_absmax",
            "weight.nested_quant_map",
            _state_key("nf4"),
            _state_key("fp4"),
            "SCB",
            "weight_format",
        ),
        markers=("weight.absmax", "SCB"),
        writes_quantize_config=False,
        refuse=refuse,
        check_shape=check_shape,
        packed_shapes=packed_shapes,
        pack=pack,
        unpack=unpack,
        quantization_config=quantization_config,
        detect=lambda qc: qc.get("quant_method") == "bitsandbytes",
        runtime_available=available,
        runtime_module="bitsandbytes",
        load=load,
        tolerance=tolerance,
        label=label,
        keep_float=keep_float,
    ),
)
