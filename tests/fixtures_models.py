"""Tiny random checkpoints, one per row of the families' ``tiny`` tables (mtk.converters.family), built
offline in the test session.

Each has width 64, 2 layers, 4 query / 2 KV heads unless its row says otherwise, and the tokenizer kind
its family ships with; random weights are drawn with a fixed seed and a wider spread than the library
default, so that logits differ enough between tokens for top-1 comparisons to mean something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fixtures_tokenizers import build_tokenizer
from transformers import AutoConfig, AutoTokenizer

from mtk.converters.family import TINY_SHAPE, TinyModel, family_for_model_type, tiny_models
from mtk.runtime import auto_model_class

TINY: dict[str, TinyModel] = {t.name: t for t in tiny_models()}
FAMILY_NAMES = tuple(TINY)
# The ones mtk quantize takes (their family has a layer plan).
QUANTIZABLE = tuple(n for n, t in TINY.items() if family_for_model_type(t.model_type).layer_plan is not None)
# The MoE ones (their family maps transformers 5's fused expert layout too).
MOE = tuple(n for n, t in TINY.items() if family_for_model_type(t.model_type).fused_tensors)


def tiny_config(tiny: TinyModel, **fields: Any) -> Any:
    """The transformers config of a tiny row; a multimodal row's shape and ``fields`` form its text_config."""
    text = {**TINY_SHAPE, **tiny.config, **fields}
    if tiny.outer is None:
        return AutoConfig.for_model(tiny.model_type, **text)
    return AutoConfig.for_model(tiny.model_type, **tiny.outer, text_config=text)


def text_state_dict(family: str, model_dir: Path) -> dict[str, torch.Tensor]:
    """The float32 weights of the causal LM a tiny checkpoint holds, by its names (a multimodal one's text tower)."""
    state = auto_model_class(TINY[family].model_type).from_pretrained(model_dir, dtype=torch.float32).state_dict()
    if TINY[family].outer is None:
        return state
    tower = next(
        t for t in family_for_model_type(TINY[family].model_type).towers if t.model_type == TINY[family].model_type
    )
    return {new: t for name, t in state.items() if (new := tower.rename(name)) is not None}


def build_tiny_model(family: str, out_dir: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random ``family`` checkpoint (safetensors, float32) with its tokenizer to ``out_dir``."""
    tiny = TINY[family]
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(tiny.tokenizer, out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    if tiny.special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(tiny.special_tokens)})
        tok.save_pretrained(out_dir)
    ids = {
        k: tok.convert_tokens_to_ids(getattr(tok, k.replace("_id", "")))
        for k in ("bos_token_id", "eos_token_id")
        if getattr(tok, k.replace("_id", ""), None) is not None
    }
    vocab = {k: len(tok) for k in tiny.vocab_fields}
    config = tiny_config(tiny, **{**vocab, **overrides}, vocab_size=len(tok), pad_token_id=None, **ids)
    torch.manual_seed(seed)
    model = auto_model_class(config.model_type).from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                # Norm weights start at 1 (or 0 for Gemma's 1 + w); perturb them so that errors show.
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.add_(torch.randn_like(b) * 0.1)  # DeepSeek's routing bias starts at 0; make it choose
    model.save_pretrained(out_dir)
    return out_dir
