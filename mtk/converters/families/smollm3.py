"""SmolLM3: the llama layout with NoPE layers, NORM RoPE (Q/K rows permuted), tied embeddings.

transformers' ``no_rope_layers`` holds one flag per layer (1: RoPE, 0: none). llama.cpp's smollm3 loader reads
no key for it: every fourth layer (``(i + 1) % 4 == 0``) runs without RoPE, which is SmolLM3-3B's pattern
(``no_rope_layer_interval`` 4). A config with another pattern, or with sliding-window layers (llama.cpp's
smollm3 has none), is refused by gguf-export; the import writes llama.cpp's pattern back.
"""

from __future__ import annotations

from typing import Any

from mtk.converters.family import LLAMA_PLAN, LLAMA_TENSORS, Family, Metadata, TinyModel, register
from mtk.errors import UnsupportedError

NO_ROPE_STEP = 4  # llama.cpp's n_no_rope_layer_step for smollm3


def llama_cpp_rope_layers(n_layers: int) -> list[int]:
    """transformers' ``no_rope_layers`` for what llama.cpp runs: 0 for every fourth layer."""
    return [int((i + 1) % NO_ROPE_STEP != 0) for i in range(n_layers)]


def _smollm3_export(config: Any) -> dict[str, Any]:
    wanted = llama_cpp_rope_layers(config.num_hidden_layers)
    if list(config.no_rope_layers) != wanted:
        raise UnsupportedError(
            f"SmolLM3 no_rope_layers {list(config.no_rope_layers)} differ from llama.cpp's fixed pattern {wanted} "
            f"(no RoPE in every {NO_ROPE_STEP}th layer)"
        )
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        raise UnsupportedError("SmolLM3 with sliding-window layers: llama.cpp's smollm3 has no sliding window")
    return {}


def _smollm3_config(meta: Metadata, arch: str) -> dict[str, Any]:
    return {
        "no_rope_layers": llama_cpp_rope_layers(meta[f"{arch}.block_count"]),
        "no_rope_layer_interval": NO_ROPE_STEP,
    }


SMOLLM3 = register(
    Family(
        "smollm3",
        "SmolLM3ForCausalLM",
        "smollm3",
        LLAMA_TENSORS,
        permute_qk=True,
        extra_config=_smollm3_config,
        export_config=_smollm3_export,
        layer_plan=LLAMA_PLAN,
        tiny=(
            # Four layers, so that the last runs without RoPE; 4 query heads per KV head (width 128, so that the
            # K/V projections keep 32 rows, the least GPTQ packs), RoPE base 5e6 (the real config's; transformers'
            # default is 2e6), tied embeddings, the explicit per-layer list.
            TinyModel(
                "smollm3",
                "HuggingFaceTB/SmolLM3-3B",
                "smollm3",
                "bpe",
                {
                    "num_hidden_layers": 4,
                    "hidden_size": 128,
                    "initializer_range": 0.07,  # the 64-wide models' logit spread at this width
                    "num_attention_heads": 8,
                    "num_key_value_heads": 2,
                    "no_rope_layers": [1, 1, 1, 0],
                    "rope_theta": 5_000_000.0,
                    "tie_word_embeddings": True,
                    "use_sliding_window": False,
                    "sliding_window": None,
                },
            ),
        ),
    )
)
