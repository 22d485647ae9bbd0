"""Llama (and Mistral, which llama.cpp converts to the llama architecture): NORM RoPE, Q/K rows permuted;
Llama 3.1+ RoPE through rope_freqs.weight."""

from __future__ import annotations

from mtk.converters.family import LLAMA_PLAN, LLAMA_TENSORS, Family, TinyModel, register
from mtk.converters.rope import RopeLayout

LLAMA = register(
    Family(
        gguf_arch="llama",
        hf_architecture="LlamaForCausalLM",
        model_type="llama",
        tensors=LLAMA_TENSORS,
        permute_qk=True,
        also_exports=("MistralForCausalLM",),
        also_model_types=("mistral",),
        rope=RopeLayout(freq_factors=True),  # llama.cpp's llama loader reads rope_freqs.weight (Llama 3.1+)
        layer_plan=LLAMA_PLAN,
        tiny=(
            # GQA, RoPE base 10000 and an untied head; the byte-level BPE tokenizer is SmolLM2's (a llama too).
            TinyModel("llama", "TinyLlama/TinyLlama_v1.1", "llama", "bpe", {"rope_theta": 10000.0}),
            # v0.3 has no sliding window (v0.1's 4096 is one llama.cpp ignores); SentencePiece tokenizer.
            TinyModel("mistral", "mistralai/Mistral-7B-v0.3", "mistral", "spm", {"sliding_window": None}),
        ),
    )
)
