"""The GGUF tensor types mtk knows, one row each: sizes, names, file types, and where its kernels live.

Every list of types derives from :data:`ROWS`: what ``quantize`` and ``dequantize`` accept, which types take
an importance matrix, the C encoders, the names ``gguf-export`` accepts and prints in its help, and the types
the tests loop over. Adding a type is: write its encoder and decoder, add its row here.

A row names its kernels (module and function) instead of importing them, so that reading the table, as the
CLI does to build its help, imports neither torch nor gguf; :meth:`Kernel.load` imports them on first use.
Sizes are stated here as data (as gguf-py's ``constants.py`` states them); a test checks them against
gguf-py's ``GGML_QUANT_SIZES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from importlib import import_module
from typing import TYPE_CHECKING, Any

from mtk.errors import UnsupportedError
from mtk.registry import Registry

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType


@dataclass(frozen=True)
class Kernel:
    """A kernel function, by module and name (``Kernel("mtk.kernels.dequant", "_q4_0")``)."""

    module: str
    name: str

    def load(self) -> Callable[..., Any]:
        """The function itself; importing its module the first time (Python caches the import)."""
        return getattr(import_module(self.module), self.name)


class Importance(Enum):
    """How a type's encoders use an importance matrix (llama.cpp's imatrix: per-column weights)."""

    IGNORED = "ignored"  # llama.cpp's encoder for the type takes none, so mtk drops it too
    BUILT_IN = "built_in"  # ``encode``/``reference`` take ``(x, importance or None)`` themselves
    SEPARATE = "separate"  # without it the block encoders; with it ``importance_encode``/``_reference``


@dataclass(frozen=True)
class GGUFType:
    """One GGUF tensor type.

    ``name`` is ggml's (``GGMLQuantizationType``'s member); ``block_size`` values take ``type_size`` bytes.
    ``decode``: uint8 ``(n, type_size)`` -> float32 ``(n, block_size)`` (:mod:`mtk.kernels.dequant`).
    ``encode`` (fast) and ``reference`` (its slow twin): with ``Importance.BUILT_IN``, float32 super-blocks
    ``(..., block_size)`` and importance or None -> uint8 ``(..., type_size)`` (:mod:`mtk.kernels.kquants`;
    the reference is a per-block numpy function of :mod:`mtk.kernels.kquants_ref`); otherwise float32
    blocks ``(n, block_size)`` written into uint8 ``out`` ``(n, type_size)`` (:mod:`mtk.kernels.quantize`).
    ``importance_encode``/``importance_reference``: float32 rows ``(r, cols)``, importance ``(cols,)`` and the
    type -> uint8 ``(r, row_bytes)`` (:mod:`mtk.kernels.legacy_importance`). ``native``: the symbol of the C
    encoder (:mod:`mtk.kernels.native`), which replaces the importance encoders for ``Importance.SEPARATE``.
    ``file_types``: llama-quantize's names of the file types ("mixes") whose default tensor type this is;
    ``file_type``: the one the bare type name stands for (``--type q4_k`` is ``q4_k_m``), where there are several.
    """

    name: str
    block_size: int
    type_size: int
    decode: Kernel | None = None
    encode: Kernel | None = None
    reference: Kernel | None = None
    importance: Importance = Importance.IGNORED
    importance_encode: Kernel | None = None
    importance_reference: Kernel | None = None
    native: str | None = None
    file_types: tuple[str, ...] = ()
    file_type: str | None = None

    def __post_init__(self) -> None:
        if (self.encode is None) != (self.reference is None):
            raise ValueError(f"{self.name}: a fast encoder needs its reference twin, and the reverse")
        separate = self.importance is Importance.SEPARATE
        if separate != (self.importance_encode is not None) or separate != (self.importance_reference is not None):
            raise ValueError(f"{self.name}: Importance.SEPARATE goes with importance_encode and _reference")
        if self.importance is not Importance.IGNORED and self.encode is None:
            raise ValueError(f"{self.name}: importance support without an encoder")
        if self.file_types and not self.writes:
            raise ValueError(f"{self.name}: file types of a type mtk cannot write")
        if len(self.file_types) > 1 and self.file_type not in self.file_types:
            raise ValueError(f"{self.name}: say which of {self.file_types} the bare name stands for")
        if len(self.file_types) <= 1 and self.file_type is not None:
            raise ValueError(f"{self.name}: file_type is for types with several file types")

    @property
    def qtype(self) -> GGMLQuantizationType:
        from gguf import GGMLQuantizationType  # here, so that reading the table does not import gguf

        return GGMLQuantizationType[self.name]

    @property
    def key(self) -> str:
        """The lower-case name ``gguf-export`` takes (``--output-type q4_k``), as llama-quantize's."""
        return self.name.lower()

    @property
    def writes(self) -> bool:
        return self.encode is not None

    @property
    def reads(self) -> bool:
        return self.decode is not None

    @property
    def is_float(self) -> bool:
        """A plain float (one value per block): llama.cpp's mix exceptions do not apply to its files."""
        return self.block_size == 1

    @property
    def uses_importance(self) -> bool:
        return self.importance is not Importance.IGNORED

    def encoder(self, *, reference: bool = False) -> Callable[..., Any]:
        """The fast encoder, or its reference twin."""
        return _load(self.reference if reference else self.encode, f"{self.name} has no encoder")

    def importance_encoder(self, *, reference: bool = False) -> Callable[..., Any]:
        """The importance encoder of an ``Importance.SEPARATE`` type, or its reference twin."""
        kernel = self.importance_reference if reference else self.importance_encode
        return _load(kernel, f"{self.name} has no separate importance encoder")

    def decoder(self) -> Callable[..., Any]:
        return _load(self.decode, f"{self.name} has no decoder")

    @property
    def bare_file_type(self) -> str | None:
        """The file type that this type's bare name (and ``TypeRules(qtype)``) stands for."""
        return self.file_type or (self.file_types[0] if self.file_types else None)


def _load(kernel: Kernel | None, missing: str) -> Callable[..., Any]:
    if kernel is None:
        raise UnsupportedError(missing)
    return kernel.load()


def _dq(name: str) -> Kernel:
    return Kernel("mtk.kernels.dequant", name)


def _q(name: str) -> Kernel:
    return Kernel("mtk.kernels.quantize", name)


def _kq(name: str) -> Kernel:
    return Kernel("mtk.kernels.kquants", name)


def _kq_ref(name: str) -> Kernel:
    return Kernel("mtk.kernels.kquants_ref", name)


def _float(name: str, type_size: int, reference: str) -> GGUFType:
    kernel = name.lower()
    return GGUFType(
        name,
        1,
        type_size,
        decode=_dq(f"_{kernel}_blocks"),
        encode=_q(f"_{kernel}"),
        reference=_q(reference),
        file_types=(kernel,),
    )


def _legacy(name: str, type_size: int) -> GGUFType:
    """Q4_0 ... Q5_1: gguf-py's encoders without importance, llama.cpp's ``_impl`` ones (and C) with it."""
    kernel = name.lower()
    return GGUFType(
        name,
        32,
        type_size,
        decode=_dq(f"_{kernel}"),
        encode=_q(f"_{kernel}"),
        reference=_q(f"_{kernel}_ref"),
        importance=Importance.SEPARATE,
        importance_encode=Kernel("mtk.kernels.legacy_importance", "encode_rows"),
        importance_reference=Kernel("mtk.kernels.legacy_importance_ref", "encode_rows"),
        native=f"mtk_encode_{kernel}_importance",
        file_types=(kernel,),
    )


def _kquant(name: str, block_size: int, type_size: int, *file_types: str, file_type: str | None = None) -> GGUFType:
    """K-quants and IQ4: llama.cpp's searches, with or without importance, in torch and in C."""
    kernel = name.lower()
    return GGUFType(
        name,
        block_size,
        type_size,
        decode=_dq(f"_{kernel}"),
        encode=_kq(f"_{kernel}"),
        reference=_kq_ref(kernel),
        importance=Importance.BUILT_IN,
        native=f"mtk_encode_{kernel}",
        file_types=file_types or (kernel,),
        file_type=file_type,
    )


def _read_only(name: str, type_size: int) -> GGUFType:
    """I-quants on lattice grids: mtk reads them (gguf-import) but has no encoder."""
    return GGUFType(name, 256, type_size, decode=_dq(f"_{name.lower()}"))


# In llama-quantize's order of file types (the order of gguf-export's help and error messages).
ROWS: tuple[GGUFType, ...] = (
    _float("F32", 4, "_f32"),  # a copy has no slow twin: the reference is the encoder itself
    _float("F16", 2, "_f16_ref"),
    _float("BF16", 2, "_bf16_ref"),
    GGUFType("Q8_0", 32, 34, decode=_dq("_q8_0"), encode=_q("_q8_0"), reference=_q("_q8_0_ref"), file_types=("q8_0",)),
    _legacy("Q4_0", 18),
    _legacy("Q4_1", 20),
    _legacy("Q5_0", 22),
    _legacy("Q5_1", 24),
    _kquant("Q2_K", 256, 84),
    _kquant("Q3_K", 256, 110, "q3_k_s", "q3_k_m", "q3_k_l", file_type="q3_k_m"),
    _kquant("Q4_K", 256, 144, "q4_k_s", "q4_k_m", file_type="q4_k_m"),
    _kquant("Q5_K", 256, 176, "q5_k_s", "q5_k_m", file_type="q5_k_m"),
    _kquant("Q6_K", 256, 210),
    _kquant("IQ4_NL", 32, 18),
    _kquant("IQ4_XS", 256, 136),
    # llama-quantize's MXFP4_MOE puts it on the stacked expert tensors only (gguf_types.py has that rule).
    GGUFType(
        "MXFP4",
        32,
        17,
        decode=Kernel("mtk.kernels.mxfp4", "decode"),
        encode=Kernel("mtk.kernels.mxfp4", "encode_into"),
        reference=Kernel("mtk.kernels.mxfp4", "reference_into"),
        file_types=("mxfp4_moe",),
    ),
    _read_only("IQ2_XXS", 66),
    _read_only("IQ2_XS", 74),
    _read_only("IQ2_S", 82),
    _read_only("IQ3_XXS", 98),
    _read_only("IQ3_S", 110),
    _read_only("IQ1_S", 50),
    _read_only("IQ1_M", 56),
)


def _registry(rows: tuple[GGUFType, ...]) -> Registry[GGUFType]:
    """The rows by name; a name given twice is refused."""
    registry: Registry[GGUFType] = Registry("GGUF type")
    for row in rows:
        registry.add(row.name, row)
    return registry


TYPES = _registry(ROWS)


def rows(*, writes: bool | None = None, reads: bool | None = None) -> Iterator[GGUFType]:
    """The rows in table order, those that mtk writes (reads) if ``writes`` (``reads``) is given."""
    for row in ROWS:
        if (writes is None or row.writes == writes) and (reads is None or row.reads == reads):
            yield row


def get(qtype: GGMLQuantizationType | str) -> GGUFType:
    """The row of a type (the enum or its name); ``UnsupportedError`` listing the known ones if none."""
    return TYPES.get(qtype if isinstance(qtype, str) else qtype.name)


def writable(qtype: GGMLQuantizationType) -> GGUFType:
    """The row of a type mtk encodes; ``UnsupportedError`` naming those it does otherwise."""
    row = TYPES.get(qtype.name) if qtype.name in TYPES else None
    if row is None or not row.writes:
        names = ", ".join(r.name for r in rows(writes=True))
        raise UnsupportedError(f"cannot quantize to {qtype.name}; supported: {names}")
    return row


def readable(qtype: GGMLQuantizationType) -> GGUFType:
    """The row of a type mtk decodes; ``UnsupportedError`` naming those it does otherwise."""
    row = TYPES.get(qtype.name) if qtype.name in TYPES else None
    if row is None or not row.reads:
        names = ", ".join(r.name for r in rows(reads=True))
        raise UnsupportedError(f"cannot dequantize {qtype.name} tensors; supported: {names}")
    return row
