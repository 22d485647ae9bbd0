"""Checkpoint formats for quantized Linear layers, registered by name: ``gptq``, ``awq``, ``compressed-tensors``,
``bitsandbytes``, ``compressed-tensors-fp8``, ``compressed-tensors-int8``, ``fp8``, ``torchao``.

One module per format holds everything mtk knows about it: what it can hold (bits, group sizes its runtime
loads, shape constraints), its packed tensors (shapes, pack, unpack), the ``quantization_config`` it writes,
how its runtime loads it, the tolerance of that runtime against the files' own weights, a human label, and how
to recognise it in a ``config.json``. The engine and the verifier only call these entries.

The rows are imported by the CLI to build its choices and help, so this package and the format modules import
neither torch nor transformers at module level: the functions import what they need.

Other packages add formats through the ``mtk.quantizers.formats`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.errors import UnsupportedError
from mtk.registry import Registry

if TYPE_CHECKING:
    import torch

    from mtk.compare import Tolerance
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.linear import QuantizedLinear

# name -> (dtype, shape) of each tensor stored for one Linear, in write order
PackedShapes = dict[str, tuple["torch.dtype", tuple[int, ...]]]
# (name, dtype, shape) of one tensor in a checkpoint's write plan
StoredTensor = tuple[str, "torch.dtype", tuple[int, ...]]


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint format. ``quantization_config`` dicts (``qc``) are the ones in the checkpoint's config.json.

    ``group_sizes`` maps a bit width to the group sizes its runtime loads at that width (-1: one scale per output
    channel); a width not listed takes any group size mtk writes (-1 or a multiple of 16). ``packed_keys`` the tensor
    suffixes a quantized Linear ``base`` may store; ``markers`` those of which one is always present and identifies a
    packed Linear (default: the first packed key; bitsandbytes keeps ``weight`` as a key, so it names others).
    ``refuse`` returns why a config cannot be written in this format (beyond bits and group size), or None.
    ``check_shape`` raises ``UsageError`` for a Linear ``(out, in)`` the layout cannot hold.
    """

    name: str
    summary: str
    runtime: str  # what loads it, for messages
    bits: tuple[int, ...]
    group_sizes: dict[int, tuple[int, ...]]
    packed_keys: tuple[str, ...]
    writes_quantize_config: bool  # GPTQModel's quantize_config.json beside config.json
    refuse: Callable[[QuantizeConfig], str | None]
    check_shape: Callable[[str, int, int, QuantizeConfig], None]
    packed_shapes: Callable[[int, int, QuantizeConfig], PackedShapes]
    pack: Callable[[QuantizedLinear, QuantizeConfig], dict[str, torch.Tensor]]
    unpack: Callable[[dict[str, torch.Tensor], dict[str, Any]], torch.Tensor]
    quantization_config: Callable[[QuantizeConfig], dict[str, Any]]
    detect: Callable[[dict[str, Any]], bool]
    runtime_available: Callable[[], bool]
    runtime_module: str  # the package transformers imports to load it (bench imports it before timing the load)
    load: Callable[[Path], Any]
    # A function (of the checkpoint's quantization_config), not a value: Tolerance lives with torch-importing
    # verification code.
    tolerance: Callable[[dict[str, Any]], Tolerance]
    label: Callable[[dict[str, Any]], str]
    # How it holds mixture-of-experts checkpoints; None: its runtime does not load per-expert weights back.
    moe: MoeSupport | None = None
    # W8A8 formats: the runtime's quantize-dequantize of each quantized Linear's input, given the checkpoint's
    # quantization_config (the verifier applies it to its float model of the files' weights); None: weight-only.
    activations: Callable[[dict[str, Any]], Callable[[torch.Tensor], torch.Tensor]] | None = None
    # The ``__metadata__`` of every safetensors shard beside ``format: pt``, given all the tensors the checkpoint
    # stores in write order (every shard gets all of it); None: none (torchao's loader needs its subclass table).
    safetensors_metadata: Callable[[list[StoredTensor], QuantizeConfig], dict[str, str]] | None = None
    markers: tuple[str, ...] = ()
    # The quantization_config given the model's Linears outside the decoder layers (full module names, the head
    # among them), which mtk leaves float; None: the runtime quantizes only what the files hold packed.
    keep_float: Callable[[dict[str, Any], list[str]], dict[str, Any]] | None = None

    def is_packed(self, base: str, names: set[str] | dict[str, Any]) -> bool:
        """Whether the stored tensor ``names`` hold Linear ``base`` packed in this format."""
        return any(f"{base}.{k}" in names for k in self.markers or self.packed_keys[:1])


@dataclass(frozen=True)
class MoeSupport:
    """A format's mixture-of-experts checkpoints: ``config`` is the ``quantization_config`` given the modules that
    stay float (router, shared-expert gate; names relative to a decoder layer); ``refuse`` says why a config's
    experts would not load back in the runtime (beyond the format's own ``refuse``), or None."""

    config: Callable[[dict[str, Any], tuple[str, ...]], dict[str, Any]]
    refuse: Callable[[QuantizeConfig], str | None]


FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", entry_point_group="mtk.quantizers.formats")


def float_tolerance(qc: dict[str, Any]) -> Tolerance:
    """The tolerance of a runtime that computes with float Linears holding the files' own weights (decompressed or
    dequantized in float32; W8A8 runtimes with the verifier rounding their inputs alike): what remains is float
    rounding where the two order their operations differently, and an asymmetric checkpoint's float16 dequantization
    (compressed-tensors: measured KL 3e-6)."""
    from mtk.compare import Tolerance

    return Tolerance(kl_mean=1e-4, top1=0.95)


def format_of(qc: dict[str, Any]) -> CheckpointFormat:
    """The registered format a checkpoint's ``quantization_config`` is written in."""
    for name in FORMATS.names():
        fmt = FORMATS.get(name)
        if fmt.detect(qc):
            return fmt
    raise UnsupportedError(
        f"quantization_config with quant_method {qc.get('quant_method')!r} is in no checkpoint format mtk knows "
        f"({', '.join(FORMATS.names())})"
    )


def label_of(qc: dict[str, Any]) -> str:
    """A human label for any ``quantization_config``: its format's, or (a format mtk does not write, e.g.
    HQQ's or torchao's) the method with whatever bits and group size keys it has."""
    for name in FORMATS.names():
        fmt = FORMATS.get(name)
        if fmt.detect(qc):
            return fmt.label(qc)
    weights = next(iter(qc.get("config_groups", {}).values()), {}).get("weights") or {}
    bits = qc.get("bits") or qc.get("w_bit") or weights.get("num_bits")
    group = qc.get("group_size") or qc.get("q_group_size") or weights.get("group_size")
    return group_label(qc.get("quant_method", "quantized"), bits, group)


def group_label(quant_method: str, bits: Any, group: Any) -> str:
    """``gptq 4-bit g128``: the quantization of a folder, as bench tables name it."""
    return f"{quant_method}" + (f" {bits}-bit" if bits else "") + (f" g{group}" if group else "")


# The built-in formats register themselves on import (after FORMATS exists).
from mtk.quantizers.formats import awq as _awq  # noqa: E402, F401
from mtk.quantizers.formats import bitsandbytes as _bitsandbytes  # noqa: E402, F401
from mtk.quantizers.formats import compressed_tensors as _compressed_tensors  # noqa: E402, F401
from mtk.quantizers.formats import compressed_tensors_fp8 as _compressed_tensors_fp8  # noqa: E402, F401
from mtk.quantizers.formats import compressed_tensors_int8 as _compressed_tensors_int8  # noqa: E402, F401
from mtk.quantizers.formats import finegrained_fp8 as _finegrained_fp8  # noqa: E402, F401
from mtk.quantizers.formats import gptq as _gptq  # noqa: E402, F401
from mtk.quantizers.formats import torchao as _torchao  # noqa: E402, F401
