"""Mistral 3 (Mistral Small 3.1/3.2, Ministral 3): Mistral3ForConditionalGeneration checkpoints, whose text tower
llama.cpp's converter writes as the ``mistral3`` architecture (a llama layout: NORM RoPE, Q/K rows permuted);
the Pixtral vision tower is left out.

Mistral Small's text tower is a plain Mistral (``model_type`` mistral, an explicit head_dim of 128 where
5120 / 32 heads would give 160). Ministral 3's (``ministral3``) adds YaRN and Llama 4's attention temperature:
queries are multiplied by ``1 + beta * log(1 + floor(pos / original_max_position_embeddings))``, which llama.cpp's
mistral3 loader reads as ``attention.temperature_scale`` (beta) with the floor at the YaRN original context.
gguf-import writes a Ministral3ForCausalLM, with beta 0 (no temperature) when the GGUF has none.
"""

from __future__ import annotations

from typing import Any

import torch

from mtk.converters import rope
from mtk.converters.family import (
    LLAMA_PLAN,
    LLAMA_TENSORS,
    Family,
    Metadata,
    TinyModel,
    Tower,
    register,
)
from mtk.errors import InvalidFileError

BETA = "llama_4_scaling_beta"


def _export(config: Any) -> dict[str, Any]:
    beta = rope.config_parameters(config).get(BETA)
    return {"attention.temperature_scale": float(beta)} if beta else {}


def _no_tensor(name: str) -> torch.Tensor:
    raise InvalidFileError(f"mistral3 GGUF: RoPE tensor {name} is not supported")


def _import(meta: Metadata, arch: str) -> dict[str, Any]:
    """rope_parameters with the temperature Ministral3ForCausalLM always applies (beta 0: none)."""
    params = rope.hf_parameters(rope.RopeLayout(), meta, arch, (), _no_tensor)
    params[BETA] = float(meta.get(f"{arch}.attention.temperature_scale", 0.0))
    params.setdefault("original_max_position_embeddings", int(meta[f"{arch}.context_length"]))
    return {"rope_parameters": params}


# A one-layer Pixtral: 28-pixel images of 2 x 2 patches.
_TINY_PIXTRAL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 16,
    "image_size": 28,
    "patch_size": 14,
}

MISTRAL3 = register(
    Family(
        "mistral3",
        "Ministral3ForCausalLM",
        "ministral3",
        LLAMA_TENSORS,
        permute_qk=True,
        extra_config=_import,
        export_config=_export,
        layer_plan=LLAMA_PLAN,
        towers=(Tower("Mistral3ForConditionalGeneration", "mistral3"),),
        tiny=(
            # Mistral Small 3.1 24B: a plain Mistral text tower (model_type mistral) with RoPE base 1e9, an explicit
            # head_dim (128 where 5120 / 32 heads gives 160; here 32 where 64 / 4 gives 16), an untied head, and
            # the Tekken byte-level BPE vocabulary.
            TinyModel(
                "mistral3",
                "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
                "mistral3",
                "bpe",
                {
                    "model_type": "mistral",
                    "head_dim": 32,
                    "rope_theta": 1e9,
                    "sliding_window": None,
                    "tie_word_embeddings": False,
                },
                outer={"vision_config": _TINY_PIXTRAL, "spatial_merge_size": 1, "tie_word_embeddings": False},
            ),
            # Ministral 3 8B: YaRN x16 from an original context (16384; here 16, inside the prompts) with Llama 4's
            # attention temperature (beta 0.1) past it, an explicit head_dim (here 32, twice width / heads), an
            # untied head, Tekken.
            TinyModel(
                "ministral3",
                "mistralai/Ministral-3-8B-Instruct-2512",
                "mistral3",
                "bpe",
                {
                    "model_type": "ministral3",
                    "head_dim": 32,
                    "tie_word_embeddings": False,
                    "rope_parameters": {
                        "rope_type": "yarn",
                        "rope_theta": 1_000_000.0,
                        "factor": 16.0,
                        "original_max_position_embeddings": 16,
                        "beta_fast": 32.0,
                        "beta_slow": 1.0,
                        "mscale": 1.0,
                        "mscale_all_dim": 1.0,
                        BETA: 0.1,
                    },
                },
                outer={"vision_config": _TINY_PIXTRAL, "spatial_merge_size": 1, "tie_word_embeddings": False},
            ),
        ),
    )
)
