"""Granite 3.x (dense): the llama layout with four scalar multipliers, NORM RoPE (Q/K rows permuted).

transformers scales the embeddings by ``embedding_multiplier``, each block's output by ``residual_multiplier``
before it joins the residual stream, the attention scores by ``attention_multiplier`` (in place of
``1/sqrt(head_dim)``) and divides the logits by ``logits_scaling``; llama.cpp's granite loader reads the same
four as ``embedding_scale``, ``residual_scale``, ``attention.scale`` and ``logit_scale`` (the last one required).
The multipliers sit outside the Linear layers, so the llama layer plan (and AWQ's folding) holds unchanged.
"""

from __future__ import annotations

from typing import Any

from mtk.converters.family import COMMON_HPARAMS, LLAMA_PLAN, LLAMA_TENSORS, Family, TinyModel, register

# GGUF key (after "{arch}.") -> GraniteConfig field.
MULTIPLIERS = {
    "embedding_scale": "embedding_multiplier",
    "residual_scale": "residual_multiplier",
    "attention.scale": "attention_multiplier",
    "logit_scale": "logits_scaling",
}


def _float_multipliers(config: Any) -> dict[str, Any]:
    # A config may hold 12 for 12.0; llama.cpp reads these keys as float32 only.
    return {key: float(getattr(config, name)) for key, name in MULTIPLIERS.items()}


GRANITE = register(
    Family(
        "granite",
        "GraniteForCausalLM",
        "granite",
        LLAMA_TENSORS,
        hparams={**COMMON_HPARAMS, **MULTIPLIERS},
        permute_qk=True,
        export_config=_float_multipliers,
        layer_plan=LLAMA_PLAN,
        tiny=(
            # The real multipliers (the attention one is 1/64, not 1/sqrt(head_dim)), GQA, RoPE base 1e7, tied.
            TinyModel(
                "granite",
                "ibm-granite/granite-3.3-2b-instruct",
                "granite",
                "bpe",
                {
                    "embedding_multiplier": 12.0,
                    "residual_multiplier": 0.22,
                    "attention_multiplier": 0.015625,
                    "logits_scaling": 8.0,
                    "rope_theta": 10_000_000.0,
                    "tie_word_embeddings": True,
                },
            ),
        ),
    )
)
