"""gpt-oss (OpenAI's MoE; llama.cpp's ``gpt-oss`` architecture, ``LLM_ARCH_OPENAI_MOE``).

What sets it apart, from transformers' ``modeling_gpt_oss.py`` and llama.cpp's ``src/models/openai-moe.cpp``:

- Experts are fused 3-D parameters stored input-major: ``gate_up_proj`` (E, D, 2F) with gate and up
  *interleaved* along the last axis (gate = columns 0, 2, 4 ..., up = 1, 3, 5 ...), ``down_proj`` (E, F, D),
  and biases ``gate_up_proj_bias`` (E, 2F) (interleaved too) and ``down_proj_bias`` (E, D). llama.cpp keeps
  ``ffn_gate_exps`` / ``ffn_up_exps`` (E, F, D), ``ffn_down_exps`` (E, D, F) (row-major shapes) and the
  matching ``.bias`` tensors.
- The router is a Linear with a bias (``ffn_gate_inp`` weight and bias); the top-k logits are softmaxed
  after selection (llama.cpp's SOFTMAX_WEIGHT gating).
- Every projection has a bias, and each head a learned attention sink (``attn_sinks``, a logit that joins
  the softmax and is dropped from it).
- Attention alternates sliding-window and full layers, even layers sliding: llama.cpp's default pattern for
  this architecture (2); another ``layer_types`` is refused. The window is ``attention.sliding_window``.
- YaRN RoPE (factor 32 over 4096 positions, base 150000), NEOX layout. transformers computes it with
  ``truncate: false`` (the correction range is not rounded); llama.cpp always rounds it (floor/ceil in
  ``ggml_rope_yarn_corr_dims``) and does not read the beta keys for this architecture (its defaults 32 and 1
  are gpt-oss's). The GGUF cannot say ``truncate``; the import writes transformers' default (rounded), which
  is what llama.cpp computes.
- The experts' SwiGLU is clamped: gate at most 7, up within +-7, ``gate * sigmoid(1.702 gate) * (up + 1)``;
  llama.cpp hard-codes both constants, so a config with others is refused.

MXFP4 checkpoints (``quantization_config: {"quant_method": "mxfp4"}``, as openai/gpt-oss-20b ships) hold the
expert matrices as ``{proj}_blocks`` uint8 (E, rows, cols / 32, 16) and ``{proj}_scales`` uint8 (E, rows,
cols / 32), output-major (rows: 2F interleaved for gate_up, D for down). transformers' dequantization
(``integrations/mxfp4.py``, ``_convert_moe_packed_tensors``): byte ``k`` of a block holds value ``2k`` in its
low nibble and ``2k + 1`` in its high one, each an E2M1 code (0, .5, 1, 1.5, 2, 3, 4, 6, then the same
negated), times ``2 ** (scale - 127)``. ggml's ``block_mxfp4`` is the scale byte then 16 bytes where value
``j`` is the low nibble of byte ``j`` (j < 16) or the high nibble of byte ``j - 16``, its table holding twice
the E2M1 values times ``2 ** (e - 128)``: the same codes and the same exponent byte, so :func:`repack_mxfp4`
moves nibbles and copies scales, and gguf-export writes those experts without a float round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gguf import GGMLQuantizationType

from mtk.converters.family import COMMON_HPARAMS, Derived, Family, Metadata, TinyModel, register
from mtk.converters.rope import RopeLayout
from mtk.errors import UnsupportedError

if TYPE_CHECKING:
    import torch

# llama.cpp's constants for LLM_FFN_SWIGLU_OAI_MOE (llama-graph.cpp) and its YaRN defaults.
SWIGLU_ALPHA = 1.702
SWIGLU_LIMIT = 7.0
YARN_BETAS = (32.0, 1.0)
SWA_PATTERN = 2  # llama.cpp's load_swa_pattern(ml, 2): layer il slides when il % 2 < 1
_EXPERTS = "model.layers.{bid}.mlp.experts"
_GATE_UP = ("blk.{bid}.ffn_gate_exps", "blk.{bid}.ffn_up_exps")


def repack_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """OpenAI/transformers MXFP4 blocks to ggml's ``block_mxfp4`` bytes (module notes).

    ``blocks`` uint8 (..., G, 16), ``scales`` uint8 (..., G) -> uint8 (..., G * 17): per block the scale byte,
    then byte ``j`` = code ``j`` | code ``j + 16`` << 4.
    """
    import torch

    codes = torch.stack([blocks & 0x0F, blocks >> 4], dim=-1).flatten(-2)  # (..., G, 32) in value order
    packed = codes[..., :16] | (codes[..., 16:] << 4)
    return torch.cat([scales.unsqueeze(-1), packed], dim=-1).flatten(-2).contiguous()


def _gate_up(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return w[..., ::2].transpose(1, 2).contiguous(), w[..., 1::2].transpose(1, 2).contiguous()


def _gate_up_back(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    import torch

    e, f, d = parts[0].shape  # gate and up (E, F, D) -> (E, D, 2F), gate in the even columns
    return torch.stack(list(parts), dim=2).reshape(e, 2 * f, d).transpose(1, 2).contiguous()


def _gate_up_bias(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return b[..., ::2].contiguous(), b[..., 1::2].contiguous()


def _gate_up_bias_back(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    import torch

    e, f = parts[0].shape
    return torch.stack(list(parts), dim=-1).reshape(e, 2 * f)


def _down(w: torch.Tensor) -> tuple[torch.Tensor]:
    return (w.transpose(1, 2).contiguous(),)


def _down_back(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0].transpose(1, 2).contiguous()


def _gate_up_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Rows are output features, gate and up interleaved as in the float gate_up_proj's columns.
    return repack_mxfp4(blocks[:, ::2], scales[:, ::2]), repack_mxfp4(blocks[:, 1::2], scales[:, 1::2])


def _down_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor]:
    return (repack_mxfp4(blocks, scales),)


MXFP4 = GGMLQuantizationType.MXFP4
# The float rows come first: on import a GGUF part matches the first row that names it.
GPT_OSS_DERIVED = (
    Derived((f"{_EXPERTS}.gate_up_proj",), tuple(f"{p}.weight" for p in _GATE_UP), _gate_up, _gate_up_back),
    Derived(
        (f"{_EXPERTS}.gate_up_proj_bias",), tuple(f"{p}.bias" for p in _GATE_UP), _gate_up_bias, _gate_up_bias_back
    ),
    Derived((f"{_EXPERTS}.down_proj",), ("blk.{bid}.ffn_down_exps.weight",), _down, _down_back),
    Derived(
        (f"{_EXPERTS}.gate_up_proj_blocks", f"{_EXPERTS}.gate_up_proj_scales"),
        tuple(f"{p}.weight" for p in _GATE_UP),
        _gate_up_mxfp4,
        packed=MXFP4,
    ),
    Derived(
        (f"{_EXPERTS}.down_proj_blocks", f"{_EXPERTS}.down_proj_scales"),
        ("blk.{bid}.ffn_down_exps.weight",),
        _down_mxfp4,
        packed=MXFP4,
    ),
)

GPT_OSS_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.post_attention_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    **{
        f"blk.{{bid}}.attn_{g}.{kind}": f"model.layers.{{bid}}.self_attn.{h}_proj.{kind}"
        for g, h in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o"))
        for kind in ("weight", "bias")
    },
    "blk.{bid}.attn_sinks.weight": "model.layers.{bid}.self_attn.sinks",
    "blk.{bid}.ffn_gate_inp.weight": "model.layers.{bid}.mlp.router.weight",
    "blk.{bid}.ffn_gate_inp.bias": "model.layers.{bid}.mlp.router.bias",
    "blk.{bid}.ffn_down_exps.bias": f"{_EXPERTS}.down_proj_bias",
}


def _layer_types(n_layers: int, pattern: Any = SWA_PATTERN) -> list[str]:
    """llama.cpp's sliding-window layers: a period (layer il slides when il % p < p - 1) or one flag per layer."""
    if isinstance(pattern, list):
        return ["sliding_attention" if flag else "full_attention" for flag in pattern[:n_layers]]
    p = int(pattern)
    return ["sliding_attention" if p == 0 or i % p < p - 1 else "full_attention" for i in range(n_layers)]


def _export(config: Any) -> dict[str, Any]:
    """Refuse what llama.cpp's gpt-oss graph cannot run (it hard-codes the SwiGLU, the betas and the pattern)."""
    swiglu = (float(config.swiglu_alpha), float(config.swiglu_limit))
    if swiglu != (SWIGLU_ALPHA, SWIGLU_LIMIT):
        raise UnsupportedError(
            f"gpt-oss with swiglu_alpha/limit {swiglu}: llama.cpp hard-codes {(SWIGLU_ALPHA, SWIGLU_LIMIT)}"
        )
    rope = dict(getattr(config, "rope_parameters", None) or {})
    betas = (float(rope.get("beta_fast") or 32), float(rope.get("beta_slow") or 1))
    if rope.get("rope_type") == "yarn" and betas != YARN_BETAS:
        raise UnsupportedError(f"gpt-oss with YaRN betas {betas}: llama.cpp's gpt-oss loader uses {YARN_BETAS}")
    expected = _layer_types(config.num_hidden_layers)
    if list(config.layer_types) != expected:
        raise UnsupportedError(
            f"gpt-oss layer_types {list(config.layer_types)}: llama.cpp's gpt-oss runs even layers sliding, odd full"
        )
    if config.sliding_window is None:
        raise UnsupportedError("gpt-oss without a sliding_window: llama.cpp's gpt-oss needs one")
    return {}


def _config(meta: Metadata, arch: str) -> dict[str, Any]:
    n_layers = meta[f"{arch}.block_count"]
    return {
        "layer_types": _layer_types(n_layers, meta.get(f"{arch}.attention.sliding_window_pattern", SWA_PATTERN)),
        "swiglu_alpha": SWIGLU_ALPHA,
        "swiglu_limit": SWIGLU_LIMIT,
        "attention_bias": True,
    }


GPT_OSS = register(
    Family(
        gguf_arch="gpt-oss",
        hf_architecture="GptOssForCausalLM",
        model_type="gpt_oss",
        tensors=GPT_OSS_TENSORS,
        hparams={
            **COMMON_HPARAMS,
            # gpt-oss's intermediate_size is each expert's width; llama.cpp's converter writes it to both keys.
            "expert_feed_forward_length": "intermediate_size",
            "expert_count": "num_local_experts",
            "expert_used_count": "num_experts_per_tok",
            "attention.sliding_window": "sliding_window",
        },
        derived=GPT_OSS_DERIVED,
        extra_config=_config,
        export_config=_export,
        rope=RopeLayout(default_theta=150000.0),
        tiny=(
            # openai/gpt-oss-20b's quirks at tiny sizes: experts top-k of more, 64-wide heads (so q/o are wider
            # than the model), sinks, biases everywhere, alternating sliding (a short window, so that it shows
            # in the tests' prompts) and full layers, YaRN 32x over 4096, the o200k pre-tokenizer. One
            # difference: truncate true (the real config says false), as llama.cpp computes YaRN whatever the
            # config says; with false, llama.cpp's logits differ from transformers' by ~3e-3 on this model
            # (tests/test_gpt_oss.py measures it), past the family grids' F32 bound.
            TinyModel(
                "gpt-oss",
                "openai/gpt-oss-20b",
                "gpt_oss",
                "o200k",
                {
                    "head_dim": 64,
                    "intermediate_size": 64,
                    "num_local_experts": 8,
                    "num_experts_per_tok": 2,
                    "sliding_window": 8,
                    "max_position_embeddings": 131072,
                    "rms_norm_eps": 1e-5,
                    "rope_parameters": {
                        "rope_type": "yarn",
                        "rope_theta": 150000.0,
                        "factor": 32.0,
                        "beta_fast": 32.0,
                        "beta_slow": 1.0,
                        "truncate": True,
                        "original_max_position_embeddings": 4096,
                    },
                },
            ),
        ),
    )
)
