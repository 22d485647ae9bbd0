"""Llama (and Mistral, which llama.cpp converts to the llama architecture): NORM RoPE, Q/K rows permuted."""

from __future__ import annotations

from mtk.converters.family import LLAMA_TENSORS, Family, register

LLAMA = register(
    Family(
        gguf_arch="llama",
        hf_architecture="LlamaForCausalLM",
        model_type="llama",
        tensors=LLAMA_TENSORS,
        permute_qk=True,
        also_exports=("MistralForCausalLM",),
    )
)
