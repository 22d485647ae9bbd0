"""The quantization settings: one frozen dataclass, validated once against the method and format registries.

``QuantizeConfig`` is what the CLI and the API take: the settings every method shares (bits, group size, grid,
format, calibration size) and, flat, the options of the methods (GPTQ's ``desc_act`` ...). Each method reads its
own options as its own frozen config (``QuantizeConfig.options``, e.g. ``methods.gptq.GPTQConfig``); an option set
for a method that does not read it is refused, as is anything the chosen format or its runtime cannot hold.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from mtk.errors import UnsupportedError
from mtk.quantizers.formats import FORMATS, CheckpointFormat
from mtk.quantizers.methods import QUANTIZERS, QuantMethod

# mixture-of-experts calibration tokens (mtk.quantizers.moe): the ones routed to each expert, or all of its layer's
MOE_CALIBRATIONS = ("routed", "all")


def allowed(values: tuple[int, ...]) -> str:
    """``32, 64 or -1``: a list of allowed values in a message."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize the Linear layers of the decoder blocks (embeddings, norms and the head stay as they are).

    ``method`` and ``format`` are registered names (``QUANTIZERS``, ``FORMATS``); ``format``, ``sym`` and ``bits``
    default to the method's. ``group_size`` -1 means one scale per output channel over the whole input; None: the
    method's default at that width (128; bnb: its 4-bit block of 64, and one absmax per row at 8 bits; fp8 and
    smoothquant: per channel). ``sym`` stores the zero point at the middle of the range (GPTQ's default); AWQ's
    default is asymmetric. ``damp_percent``, ``desc_act``, ``static_groups``, ``act_group_aware``,
    ``true_sequential`` and ``calibration_dtype`` are GPTQ's options (see ``methods.gptq.GPTQConfig``).
    ``moe_calibration`` chooses the tokens each expert of a mixture-of-experts layer is calibrated on: ``routed``
    (those its router sends it) or ``all`` (every token of its layer).
    ``bnb_quant_type`` and ``bnb_double_quant`` are the bnb method's (see ``methods.bnb.BnBConfig``),
    ``smoothing_strength`` SmoothQuant's (``methods.smoothquant.SmoothQuantConfig``), ``signround_iters``,
    ``signround_lr`` and ``signround_batch`` SignRound's (``methods.signround.SignRoundConfig``).
    """

    method: str = "gptq"
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    desc_act: bool = False
    static_groups: bool = False
    act_group_aware: bool | None = None
    damp_percent: float = 0.01
    true_sequential: bool = True
    calibration_dtype: str = "float32"
    format: str | None = None
    samples: int = 128
    seq_len: int = 512
    moe_calibration: str = "routed"
    smoothing_strength: float = 0.5
    signround_iters: int = 200
    signround_lr: float = 0.0
    signround_batch: int = 8
    bnb_quant_type: str = "nf4"
    bnb_double_quant: bool = False

    def __post_init__(self) -> None:
        method = _lookup(QUANTIZERS, self.method)
        object.__setattr__(self, "method", method.name)
        fmt = _lookup(FORMATS, self.format or method.default_format)
        object.__setattr__(self, "format", fmt.name)
        if self.sym is None:
            object.__setattr__(self, "sym", method.default_sym)
        if self.bits is None:
            object.__setattr__(self, "bits", method.default_bits)
        if self.bits not in method.bits:
            raise ValueError(f"{method.name} supports bits {', '.join(map(str, method.bits))}, not {self.bits}")
        if self.group_size is None:
            object.__setattr__(self, "group_size", method.default_group_size(self.bits))
        if self.group_size != -1 and (self.group_size < 16 or self.group_size % 16):
            raise ValueError(f"group size must be -1 or a positive multiple of 16, got {self.group_size}")
        self._check_format(method, fmt)
        self._resolve_options(method)
        if self.samples < 1 or self.seq_len < 2:
            raise ValueError("samples must be >= 1 and seq_len >= 2")
        if self.moe_calibration not in MOE_CALIBRATIONS:
            raise ValueError(f"--moe-calibration is {' or '.join(MOE_CALIBRATIONS)}, not {self.moe_calibration!r}")
        if self.moe_calibration != "routed" and not method.needs_calibration:
            raise ValueError(f"--moe-calibration chooses calibration tokens, and {method.name} calibrates nothing")

    def _check_format(self, method: QuantMethod, fmt: CheckpointFormat) -> None:
        if method.formats is not None and fmt.name not in method.formats:
            raise ValueError(f"{method.name} writes the formats {', '.join(method.formats)}, not {fmt.name}")
        if self.bits not in fmt.bits:
            raise ValueError(f"the {fmt.summary} format holds {allowed(fmt.bits)} bits, not {self.bits}")
        sizes = fmt.group_sizes.get(self.bits)
        if sizes is not None and self.group_size not in sizes:
            raise ValueError(
                f"the {fmt.name} format's runtime ({fmt.runtime}) loads group sizes {allowed(sizes)} at "
                f"{self.bits} bits, not {self.group_size}"
            )
        why = fmt.refuse(self)
        if why:
            raise ValueError(why)

    def _resolve_options(self, method: QuantMethod) -> None:
        """Build the method's own config from the flat options (it validates them) and refuse unread ones."""
        own = _option_names(method)
        for name in sorted(_method_option_names() - own):
            value, default = getattr(self, name), _default(name)
            # A tri-state option (act_group_aware: None means "the method's default") may also be turned off.
            if value not in ((None, False) if default is None else (default,)):
                owners = [m for m in QUANTIZERS.names() if name in _option_names(QUANTIZERS.get(m))]
                raise ValueError(f"--{name.replace('_', '-')} is an option of {', '.join(owners)}, not {method.name}")
            if value is None:  # recorded as off: the checkpoint's config says what was done
                object.__setattr__(self, name, False)
        options = method.options(**{name: getattr(self, name) for name in own})
        for name in own:  # the method's resolved defaults (GPTQ's act_group_aware) are what the checkpoint records
            object.__setattr__(self, name, getattr(options, name))

    @property
    def method_row(self) -> QuantMethod:
        return QUANTIZERS.get(self.method)

    @property
    def format_row(self) -> CheckpointFormat:
        return FORMATS.get(str(self.format))

    @property
    def options(self) -> Any:
        """The method's own frozen config (``GPTQConfig``, ``AWQConfig``, ``RTNConfig`` ...)."""
        method = self.method_row
        return method.options(**{name: getattr(self, name) for name in _option_names(method)})

    @property
    def needs_calibration(self) -> bool:
        return self.method_row.needs_calibration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantizeConfig:
        return cls(**d)


def _lookup(registry: Any, name: str) -> Any:
    try:
        return registry.get(name)
    except UnsupportedError as exc:
        raise ValueError(str(exc)) from None


def _option_names(method: QuantMethod) -> set[str]:
    """The flat fields ``method`` reads as its own options (a plug-in's other option fields keep their defaults)."""
    return {f.name for f in fields(method.options)} & {f.name for f in fields(QuantizeConfig)}


def _method_option_names() -> set[str]:
    """The flat fields some registered method reads as its own option."""
    return {name for m in QUANTIZERS.names() for name in _option_names(QUANTIZERS.get(m))}


def _default(name: str) -> Any:
    field = next(f for f in fields(QuantizeConfig) if f.name == name)
    return None if field.default is MISSING else field.default
