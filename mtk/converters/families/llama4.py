"""Llama 4 text (transformers ``Llama4ForCausalLM``, model_type ``llama4_text``; llama.cpp's ``llama4``).

What sets it apart, from transformers' ``modeling_llama4.py`` and llama.cpp's ``src/models/llama4.cpp``:

- MoE layers every ``interleave_moe_layer_step`` layers (layer ``i`` when ``(i + 1) % step == 0``: Scout 1,
  Maverick 2), dense SwiGLU layers between them ``intermediate_size_mlp`` wide. A MoE layer has a sigmoid
  top-k router (``feed_forward.router``, a Linear) whose score multiplies the expert's *input*, and a shared
  expert ``intermediate_size`` wide, as wide as each routed one. GGUF: ``feed_forward_length`` is the dense
  width, ``expert_feed_forward_length`` the experts'.
- Experts are fused 3-D parameters stored input-major (as the Hub's checkpoints hold them and transformers
  saves them): ``gate_up_proj`` (E, D, 2F), gate the first F columns, and ``down_proj`` (E, F, D); llama.cpp
  keeps ``ffn_gate_exps`` / ``ffn_up_exps`` (E, F, D) and ``ffn_down_exps`` (E, D, F) (row-major shapes).
- RoPE on interleaved pairs (complex multiplication), which is llama.cpp's NORM layout already: no Q/K
  permutation. Every 4th layer is NoPE (``no_rope_layers``), attends to the whole context and, with
  attention temperature tuning, scales its queries by ``log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1``;
  the other layers use chunked attention (``attention_chunk_size``) and an L2 norm (an RMS norm without weight)
  on Q and K after RoPE (``use_qk_norm``).
- llama.cpp hard-codes most of this: the NoPE period 4, the chunk 8192, floor_scale 8192, attn_scale 0.1, and
  the Q/K norm on unless the model has 128 experts. gguf-export refuses configs that differ (it cannot write
  them), so a tiny checkpoint keeps the real values: its chunks are longer than the tests' contexts.
- llama3 RoPE scaling (Scout: factor 16 with low and high frequency factors both 1, so a step at 8192).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mtk.converters.family import (
    COMMON_HPARAMS,
    LLAMA_TENSORS,
    Derived,
    Family,
    Metadata,
    TinyModel,
    Tower,
    register,
)
from mtk.converters.rope import RopeLayout
from mtk.errors import UnsupportedError

if TYPE_CHECKING:
    import torch

# What llama.cpp's llama4 loader fixes (load_arch_hparams), whatever the GGUF says.
NOPE_PERIOD = 4
CHUNK = 8192
FLOOR_SCALE = 8192
ATTN_SCALE = 0.1
NO_QK_NORM_EXPERTS = 128  # llama.cpp turns the Q/K norm off for the 128-expert model only

_FF = "model.layers.{bid}.feed_forward"
_DENSE = {
    "blk.{bid}.ffn_gate.weight": f"{_FF}.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": f"{_FF}.up_proj.weight",
    "blk.{bid}.ffn_down.weight": f"{_FF}.down_proj.weight",
}
LLAMA4_TENSORS = {
    **{k: v for k, v in LLAMA_TENSORS.items() if ".ffn_" not in k or "norm" in k},
    **_DENSE,
    "blk.{bid}.ffn_gate_inp.weight": f"{_FF}.router.weight",
    "blk.{bid}.ffn_gate_shexp.weight": f"{_FF}.shared_expert.gate_proj.weight",
    "blk.{bid}.ffn_up_shexp.weight": f"{_FF}.shared_expert.up_proj.weight",
    "blk.{bid}.ffn_down_shexp.weight": f"{_FF}.shared_expert.down_proj.weight",
}


def _gate_up(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gate, up = w.chunk(2, dim=-1)  # (E, D, F) each
    return gate.transpose(1, 2).contiguous(), up.transpose(1, 2).contiguous()


def _gate_up_back(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.cat([p.transpose(1, 2) for p in parts], dim=-1).contiguous()


def _transposed(w: torch.Tensor) -> tuple[torch.Tensor]:
    return (w.transpose(1, 2).contiguous(),)


def _transposed_back(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0].transpose(1, 2).contiguous()


LLAMA4_DERIVED = (
    Derived(
        (f"{_FF}.experts.gate_up_proj",),
        ("blk.{bid}.ffn_gate_exps.weight", "blk.{bid}.ffn_up_exps.weight"),
        _gate_up,
        _gate_up_back,
    ),
    Derived((f"{_FF}.experts.down_proj",), ("blk.{bid}.ffn_down_exps.weight",), _transposed, _transposed_back),
)


def _rotate_real(xq: torch.Tensor, xk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``apply_rotary_emb`` in real arithmetic: ``freqs`` (batch, seq, head_dim / 2, 2) holds
    (cos, sin) where transformers holds one complex number; each pair (x0, x1) of a head is multiplied by it."""
    import torch

    c, s = freqs[:, :, None, :, 0], freqs[:, :, None, :, 1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        pairs = x.float().reshape(*x.shape[:-1], -1, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(3).type_as(x)

    return rotate(xq), rotate(xk)


@contextmanager
def onnx_tracing(model: Any) -> Iterator[None]:
    """torch.onnx has no complex numbers, which Llama 4's RoPE uses (``torch.polar`` in the rotary module,
    ``view_as_complex`` in ``apply_rotary_emb``): while tracing, the rotary module returns (cos, sin) pairs and
    the attention rotates with :func:`_rotate_real`; both are put back after, also on error."""
    import torch
    from transformers.models.llama4 import modeling_llama4

    rotary = model.model.rotary_emb

    def real_freqs(x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        angles = position_ids[..., None].float() * rotary.inv_freq.to(device=x.device, dtype=torch.float)
        return torch.stack([angles.cos(), angles.sin()], dim=-1) * rotary.attention_scaling

    original = modeling_llama4.apply_rotary_emb
    rotary.forward = real_freqs
    modeling_llama4.apply_rotary_emb = _rotate_real
    try:
        yield
    finally:
        modeling_llama4.apply_rotary_emb = original
        del rotary.forward  # the class's forward again


def _refuse(what: str, given: Any, fixed: Any) -> UnsupportedError:
    return UnsupportedError(f"Llama 4 with {what} {given!r} is not supported: llama.cpp's llama4 uses {fixed!r}")


def _export(config: Any) -> dict[str, Any]:
    """The MoE period llama.cpp reads; refuses what its llama4 graph fixes otherwise (module notes)."""
    n, step = config.num_hidden_layers, int(config.interleave_moe_layer_step)
    moe = list(range(step - 1, n, step)) if step > 0 else []
    if list(config.moe_layers) != moe:
        raise _refuse("moe_layers", list(config.moe_layers), moe)
    nope = [int((i + 1) % NOPE_PERIOD != 0) for i in range(n)]
    if list(config.no_rope_layers) != nope:
        raise _refuse("no_rope_layers", list(config.no_rope_layers), nope)
    if config.attention_chunk_size != CHUNK:
        raise _refuse("attention_chunk_size", config.attention_chunk_size, CHUNK)
    tuning = (bool(config.attn_temperature_tuning), int(config.floor_scale), float(config.attn_scale))
    if tuning != (True, FLOOR_SCALE, ATTN_SCALE):
        raise _refuse("attn_temperature_tuning, floor_scale, attn_scale", tuning, (True, FLOOR_SCALE, ATTN_SCALE))
    qk_norm = config.num_local_experts != NO_QK_NORM_EXPERTS
    if bool(config.use_qk_norm) != qk_norm:
        raise _refuse(f"{config.num_local_experts} experts and use_qk_norm", bool(config.use_qk_norm), qk_norm)
    if config.attention_bias:
        raise _refuse("attention_bias", True, False)
    return {"interleave_moe_layer_step": step}


def _config(meta: Metadata, arch: str) -> dict[str, Any]:
    n_experts = int(meta[f"{arch}.expert_count"])
    return {
        "interleave_moe_layer_step": int(meta[f"{arch}.interleave_moe_layer_step"]),
        "use_qk_norm": n_experts != NO_QK_NORM_EXPERTS,
        "no_rope_layer_interval": NOPE_PERIOD,
        "attention_chunk_size": CHUNK,
        "attn_temperature_tuning": True,
        "floor_scale": FLOOR_SCALE,
        "attn_scale": ATTN_SCALE,
    }


# No layer plan: quantize refuses it (README).
LLAMA4 = register(
    Family(
        gguf_arch="llama4",
        hf_architecture="Llama4ForCausalLM",
        model_type="llama4_text",
        tensors=LLAMA4_TENSORS,
        hparams={
            **COMMON_HPARAMS,
            "feed_forward_length": "intermediate_size_mlp",
            "expert_feed_forward_length": "intermediate_size",
            "expert_count": "num_local_experts",
            "expert_used_count": "num_experts_per_tok",
        },
        derived=LLAMA4_DERIVED,
        moe_layer_step="interleave_moe_layer_step",
        extra_config=_config,
        export_config=_export,
        onnx_tracing=onnx_tracing,
        # The Hub's checkpoints: text under language_model., beside a vision tower that is left out.
        towers=(Tower("Llama4ForConditionalGeneration", "llama4"),),
        rope=RopeLayout(default_theta=500000.0, freq_factors=True),  # the llama4 loader reads rope_freqs.weight
        # Maverick's shape (MAVERICK below) is tested on its own (tests/test_families.py), not in the grids.
        tiny=(
            # Scout's text tower at tiny sizes: every layer MoE (16 experts there, 4 here), top-1 sigmoid routing,
            # a shared expert, dense width (intermediate_size_mlp) twice the experts', NoPE every 4th layer,
            # chunked attention of 8192 (llama.cpp's fixed chunk), L2 Q/K norm, explicit head_dim, llama3 RoPE
            # 16x with both frequency factors 1 over 8192 positions, base 500000, an untied head.
            TinyModel(
                "llama4",
                "meta-llama/Llama-4-Scout-17B-16E-Instruct",
                "llama4_text",
                "o200k",
                {
                    "num_hidden_layers": 4,
                    "head_dim": 16,
                    "intermediate_size": 32,
                    "intermediate_size_mlp": 64,
                    "num_local_experts": 4,
                    "num_experts_per_tok": 1,
                    "interleave_moe_layer_step": 1,
                    "use_qk_norm": True,
                    "attention_chunk_size": CHUNK,
                    "rms_norm_eps": 1e-5,
                    "max_position_embeddings": 131072,
                    "tie_word_embeddings": False,
                    "rope_parameters": {
                        "rope_type": "llama3",
                        "rope_theta": 500000.0,
                        "factor": 16.0,
                        "low_freq_factor": 1.0,
                        "high_freq_factor": 1.0,
                        "original_max_position_embeddings": 8192,
                    },
                },
            ),
        ),
    )
)

# Overrides of the tiny row for Maverick's quirks (meta-llama/Llama-4-Maverick-17B-128E-Instruct): MoE every second
# layer with dense ones between, 128 experts (llama.cpp turns the Q/K norm off for 128 experts, as Maverick's config
# does), default RoPE base 500000. Not a grid row: at Q8_0, top-1 routing over 128 random experts flips under
# llama.cpp's activation rounding (measured top-1 agreement 0.81 at seed 0, 0.91-0.97 at seeds 1-3, under the
# grid's 0.85), a property of the random router, not of the conversion.
MAVERICK: dict[str, Any] = {
    "num_local_experts": NO_QK_NORM_EXPERTS,
    "interleave_moe_layer_step": 2,
    "use_qk_norm": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}
