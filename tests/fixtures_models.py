"""Tiny random checkpoints, one per family mtk supports, built offline in the test session.

Each has width 64, 2 layers, 4 query / 2 KV heads and the tokenizer kind its family ships with; random
weights are drawn with a fixed seed and a wider spread than the library default, so that logits differ
enough between tokens for top-1 comparisons to mean something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fixtures_tokenizers import build_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.1,
    "rms_norm_eps": 1e-6,
}
# family -> (transformers model_type, tokenizer kind, config overrides)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("llama", "bpe", {"rope_theta": 10000.0}),
    "mistral": ("mistral", "spm", {"sliding_window": None}),
    "qwen2": ("qwen2", "bpe", {}),
    "qwen2moe": (
        "qwen2_moe",
        "bpe",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64,
        },
    ),
    "qwen3": ("qwen3", "bpe", {"head_dim": 16}),
    "phi3": ("phi3", "spm", {}),
    "gemma2": ("gemma2", "gemma", {"head_dim": 16, "query_pre_attn_scalar": 16}),
    "gemma3": ("gemma3_text", "gemma", {"head_dim": 16, "query_pre_attn_scalar": 16}),
}
FAMILY_NAMES = tuple(FAMILIES)


def build_tiny_model(family: str, out_dir: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random ``family`` checkpoint (safetensors, float32) with its tokenizer to ``out_dir``."""
    model_type, tok_kind, extra = FAMILIES[family]
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tok_kind, out_dir)  # type: ignore[arg-type]
    tok = AutoTokenizer.from_pretrained(out_dir)
    if family == "phi3":
        # llama.cpp recognises Phi-3 by name and expects its chat specials in the vocabulary.
        specials = ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
        tok.add_special_tokens({"additional_special_tokens": specials})
        tok.save_pretrained(out_dir)
    ids = {
        k: tok.convert_tokens_to_ids(getattr(tok, k.replace("_id", "")))
        for k in ("bos_token_id", "eos_token_id")
        if getattr(tok, k.replace("_id", ""), None) is not None
    }
    config = AutoConfig.for_model(
        model_type, **{**COMMON, **extra, **overrides}, vocab_size=len(tok), pad_token_id=None, **ids
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                # Norm weights start at 1 (or 0 for Gemma's 1 + w); perturb them so that errors show.
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir)
    return out_dir
