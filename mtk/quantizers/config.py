"""The quantization settings: one frozen dataclass, validated once, shared by every method and the CLI."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Method(str, Enum):
    gptq = "gptq"
    awq = "awq"
    rtn = "rtn"


class Format(str, Enum):
    """Checkpoint layouts mtk writes. ``gptq``: AutoGPTQ/GPTQModel v1; ``awq``: AutoAWQ GEMM;
    ``compressed-tensors``: llm-compressor's pack-quantized (vLLM's native format)."""

    gptq = "gptq"
    awq = "awq"
    compressed_tensors = "compressed-tensors"


BITS = {Method.gptq: (2, 3, 4, 8), Method.rtn: (2, 3, 4, 8), Method.awq: (4,)}


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize the Linear layers of the decoder blocks (embeddings, norms and the head stay as they are).

    ``group_size`` -1 means one scale per output channel over the whole input. ``sym`` stores the zero point
    at the middle of the range (GPTQ's default); AWQ's default is asymmetric. ``damp_percent`` is GPTQ's
    Hessian dampening as a fraction of the mean diagonal; ``desc_act`` quantizes columns in order of
    decreasing Hessian diagonal (act-order) and ``static_groups`` fixes the groups' scales before that
    reordering (so ``g_idx`` stays sorted and fast kernels apply). ``act_group_aware`` (GPTQ's default unless
    ``desc_act`` or ``static_groups``, as in GPTQModel) orders columns inside each group and the groups by their
    Hessian diagonal while the groups stay contiguous, so ``g_idx`` stays natural (see mtk.quantizers.gptq).
    """

    method: Method = Method.gptq
    bits: int = 4
    group_size: int = 128
    sym: bool | None = None
    desc_act: bool = False
    static_groups: bool = False
    act_group_aware: bool | None = None
    damp_percent: float = 0.01
    true_sequential: bool = True
    format: Format | None = None
    samples: int = 128
    seq_len: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method(self.method))
        if self.format is None:
            object.__setattr__(self, "format", Format.awq if self.method == Method.awq else Format.gptq)
        object.__setattr__(self, "format", Format(self.format))
        if self.sym is None:
            object.__setattr__(self, "sym", self.method != Method.awq)
        if self.bits not in BITS[self.method]:
            allowed = ", ".join(map(str, BITS[self.method]))
            raise ValueError(f"{self.method.value} supports bits {allowed}, not {self.bits}")
        if self.group_size != -1 and (self.group_size < 16 or self.group_size % 16):
            raise ValueError(f"group size must be -1 or a positive multiple of 16, got {self.group_size}")
        if self.format == Format.awq:
            if self.bits != 4:
                raise ValueError("the AWQ GEMM format holds 4-bit weights only")
            if self.desc_act:
                raise ValueError("the AWQ GEMM format has no act-order (g_idx); drop --desc-act")
        if self.format == Format.compressed_tensors:
            # vLLM's kernels for this format (CompressedTensorsWNA16) take 4 and 8 bits only.
            if self.bits not in (4, 8):
                raise ValueError(f"the compressed-tensors format holds 4 or 8 bits (W4A16, W8A16), not {self.bits}")
            if self.desc_act and not self.static_groups:
                raise ValueError(
                    "the compressed-tensors format has no g_idx (act-order 'group' was removed in compressed-tensors "
                    "0.20): use --desc-act with --static-groups, or drop --desc-act"
                )
            if self.method == Method.awq and self.sym:
                raise ValueError("AWQ's grid has a zero point: drop --sym for the compressed-tensors format")
        if self.method == Method.awq and self.desc_act:
            raise ValueError("--desc-act is a GPTQ option")
        if self.act_group_aware and (self.method != Method.gptq or self.desc_act or self.static_groups):
            raise ValueError("--act-group-aware is a GPTQ option that excludes --desc-act and --static-groups")
        if self.act_group_aware is None:
            default = self.method == Method.gptq and not self.desc_act and not self.static_groups
            object.__setattr__(self, "act_group_aware", default)
        if not 0 < self.damp_percent < 1:
            raise ValueError(f"damp_percent must be in (0, 1), got {self.damp_percent}")
        if self.samples < 1 or self.seq_len < 2:
            raise ValueError("samples must be >= 1 and seq_len >= 2")

    @property
    def needs_calibration(self) -> bool:
        return self.method != Method.rtn

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["method"], d["format"] = self.method.value, self.format.value  # type: ignore[union-attr]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantizeConfig:
        return cls(**d)
