"""Which GGUF type each tensor gets on export: llama.cpp's per-tensor rules, as data.

The rules, from llama.cpp's ``convert_hf_to_gguf.py`` and ``llama-quantize`` for the types mtk encodes:

- 1-D tensors, norms and MoE routers stay F32 (the kernels read them as F32; they are tiny).
- The output projection (or the token embedding of a model with tied embeddings, which serves as it) is
  the most sensitive matrix: llama.cpp gives it Q6_K for 4- and 5-bit types; until mtk encodes K-quants it
  gets Q8_0 there. ``--output-type`` overrides it, ``--pure`` turns the rule off.
- ``--embedding-type`` sets the token embedding's type.
- A matrix whose rows are not a multiple of the type's block falls back to F16, as in convert_hf_to_gguf.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

Q = GGMLQuantizationType
# Names accepted by --type / --output-type / --embedding-type.
TYPE_NAMES: dict[str, GGMLQuantizationType] = {
    "f32": Q.F32,
    "f16": Q.F16,
    "bf16": Q.BF16,
    "q8_0": Q.Q8_0,
    "q4_0": Q.Q4_0,
    "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0,
    "q5_1": Q.Q5_1,
}
FILE_TYPES: dict[GGMLQuantizationType, LlamaFileType] = {
    Q.F32: LlamaFileType.ALL_F32,
    Q.F16: LlamaFileType.MOSTLY_F16,
    Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    Q.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    Q.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    Q.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    Q.Q5_1: LlamaFileType.MOSTLY_Q5_1,
}
F32_SUFFIXES = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
LOW_BIT = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
OUTPUT_TYPE_FOR_LOW_BIT = Q.Q8_0
FALLBACK = Q.F16


@dataclass(frozen=True)
class TypeRules:
    """The export's type choices; ``output``/``embedding`` of None follow the rules above."""

    target: GGMLQuantizationType
    output: GGMLQuantizationType | None = None
    embedding: GGMLQuantizationType | None = None
    pure: bool = False

    def __post_init__(self) -> None:
        for t in (self.target, self.output, self.embedding):
            if t is not None and t not in FILE_TYPES:
                raise ValueError(f"mtk does not encode GGUF type {t.name}")

    @property
    def file_type(self) -> LlamaFileType:
        return FILE_TYPES[self.target]

    def tensor_type(self, name: str, shape: tuple[int, ...], *, tied: bool) -> GGMLQuantizationType:
        if len(shape) <= 1 or name.endswith(F32_SUFFIXES):
            return Q.F32
        wanted = self.target
        is_output = name == "output.weight" or (tied and name == "token_embd.weight")
        if name == "token_embd.weight" and self.embedding is not None:
            wanted = self.embedding
        elif is_output and self.output is not None:
            wanted = self.output
        elif is_output and not self.pure and self.target in LOW_BIT:
            wanted = OUTPUT_TYPE_FOR_LOW_BIT
        block = GGML_QUANT_SIZES[wanted][0]
        return wanted if shape[-1] % block == 0 else FALLBACK
