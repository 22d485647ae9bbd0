"""The family registry and the RoPE table: lookups, layer plans that fit transformers' layers, every RoPE row
in both directions (or refused with exit 3), and tensors the exporter synthesises."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_mtk
from fixtures_models import TINY
from gguf import GGMLQuantizationType
from transformers import AutoConfig, AutoModelForCausalLM

import mtk.converters.hf_to_gguf as hf_to_gguf
from mtk.artifacts.gguf import export_check, import_check
from mtk.converters import rope
from mtk.converters.family import (
    TINY_SHAPE,
    Synthesised,
    all_families,
    family_for_gguf,
    family_for_hf,
    family_for_model_type,
    layer_plan,
    layer_plans,
)
from mtk.converters.gguf_types import TypeRules
from mtk.errors import InvalidFileError, UnsupportedError
from mtk.formats.gguf_reader import open_gguf
from mtk.quantizers.awq import _applicable, apply_scales


def test_every_family_is_found_by_gguf_arch_hf_architecture_and_model_type() -> None:
    for fam in all_families():
        assert family_for_gguf(fam.gguf_arch) is fam
        assert family_for_hf(fam.hf_architecture) is fam
        assert all(family_for_model_type(t) is fam for t in fam.model_types)
    assert family_for_hf("MistralForCausalLM").gguf_arch == family_for_model_type("mistral").gguf_arch == "llama"
    assert layer_plan("mistral") is layer_plan("llama")
    with pytest.raises(UnsupportedError, match="does not support model type 'qwen2_moe'"):
        layer_plan("qwen2_moe")
    with pytest.raises(UnsupportedError, match="olmo2"):
        family_for_model_type("bert")


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_rows_and_layer_plans_fit_transformers(name: str) -> None:
    """Each tiny row names a real model; its family's layer plan names every Linear of a decoder layer once,
    and folding random AWQ scales into every applicable group leaves the model's logits unchanged (a group
    whose ``prev`` does not feed exactly its Linears changes them)."""
    tiny = TINY[name]
    assert "/" in tiny.mirrors
    fam = family_for_model_type(tiny.model_type)
    config = AutoConfig.for_model(tiny.model_type, **{**TINY_SHAPE, **tiny.config}, vocab_size=96, pad_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float64, attn_implementation="eager").eval()
    if fam.layer_plan is None:
        return
    plans = layer_plans(tiny.model_type, getattr(config, "layer_types", None), config.num_hidden_layers)
    for plan, layer in zip(plans, model.model.layers, strict=True):  # hybrid families: a plan per layer type
        linears = sorted(n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear))
        assert sorted(n for group in plan.sequential for n in group) == linears
        assert all(set(group.linears) <= set(linears) for group in plan.awq)
        layer.get_submodule(plan.mixer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms away from 1 (Gemma's from 0)
        ids = torch.randint(0, 96, (1, 7))
        before = model(ids).logits
        folded = 0
        for plan, block in zip(plans, model.model.layers, strict=True):
            for group in plan.awq:
                block.get_submodule(group.inspect)
                if _applicable(block, group):
                    width = block.get_submodule(group.linears[0]).in_features
                    apply_scales(block, group, torch.rand(width, dtype=torch.float64) + 0.5, plan.norm_offset)
                    folded += 1
        assert folded > 0
        # float64, but Gemma's norms compute in float32; a wrong group moves logits by ~0.1.
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


ROUND_TRIPS = [
    ({"rope_type": "default", "rope_theta": 10000.0}, {"rope.freq_base": 10000.0}),
    (
        {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
        {"rope.freq_base": 500000.0, "rope.scaling.type": "linear", "rope.scaling.factor": 4.0},
    ),
    (
        {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 32768},
        {
            "rope.freq_base": 1e6,
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": 4.0,
            "rope.scaling.original_context_length": 32768,
        },
    ),
]


@pytest.mark.parametrize(("params", "keys"), ROUND_TRIPS, ids=[p["rope_type"] for p, _ in ROUND_TRIPS])
def test_rope_rows_write_their_keys_and_read_them_back(params: dict, keys: dict) -> None:
    layout = rope.RopeLayout()
    meta = rope.gguf_metadata(layout, SimpleNamespace(rope_parameters=params), "qwen2")
    assert meta == {f"qwen2.{k}": v for k, v in keys.items()}
    assert list(meta) == [f"qwen2.{k}" for k in keys]  # freq_base first: the header's byte order
    assert rope.hf_parameters(layout, meta, "qwen2", (), NO_TENSORS) == params


def NO_TENSORS(name: str) -> torch.Tensor:
    raise AssertionError(f"{name} was read")


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_rope_rows_without_support_are_refused_both_ways(kind: str) -> None:
    config = SimpleNamespace(rope_parameters={"rope_type": kind, "rope_theta": 10000.0, "factor": 8.0})
    with pytest.raises(UnsupportedError, match=f"'{kind}' is not supported by gguf-export"):
        rope.gguf_metadata(rope.RopeLayout(), config, "llama")
    tensors = rope.ROPE_TYPES[kind].tensors
    if tensors:  # what marks it in a GGUF
        with pytest.raises(UnsupportedError, match=f"'{kind}' is not supported by gguf-import"):
            rope.hf_parameters(rope.RopeLayout(), {}, "llama", {tensors[0]}, NO_TENSORS)
    assert UnsupportedError.exit_code == 3
    with pytest.raises(UnsupportedError, match="'su' is not supported by gguf-import"):
        rope.hf_parameters(rope.RopeLayout(), {"llama.rope.scaling.type": "su"}, "llama", (), NO_TENSORS)


def test_gemma3_keeps_per_layer_type_rope_through_the_table() -> None:
    layout = family_for_gguf("gemma3").rope
    sliding = {"rope_type": "default", "rope_theta": 10000.0}
    assert rope.hf_parameters(layout, {}, "gemma3", (), NO_TENSORS) == {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": sliding,
    }
    full = {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}
    config = SimpleNamespace(rope_parameters={"full_attention": full, "sliding_attention": sliding})
    meta = rope.gguf_metadata(layout, config, "gemma3")
    assert meta == {
        "gemma3.rope.freq_base": 1e6,
        "gemma3.rope.scaling.type": "linear",
        "gemma3.rope.scaling.factor": 8.0,
    }
    assert rope.hf_parameters(layout, meta, "gemma3", (), NO_TENSORS) == config.rope_parameters
    # llama.cpp runs sliding layers at base 10000 whatever the config says: another base is refused.
    other = SimpleNamespace(
        rope_parameters={"full_attention": full, "sliding_attention": {**sliding, "rope_theta": 5e4}}
    )
    with pytest.raises(UnsupportedError, match="sliding_attention"):
        rope.gguf_metadata(layout, other, "gemma3")


def test_synthesised_tensors_are_planned_written_and_refused_on_import(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A family may compute GGUF tensors no checkpoint holds: planned first and written. rope_freqs.weight is
    read back by the RoPE table on import, which refuses factors that are not llama3's (exit 3)."""
    values = torch.linspace(1.0, 8.0, 8)
    made = {"rope_freqs.weight": Synthesised((8,), lambda: values)}
    fam = dataclasses.replace(family_for_hf("LlamaForCausalLM"), synthesise=lambda config: made)
    rules = TypeRules(GGMLQuantizationType.Q8_0)
    plain = hf_to_gguf.gguf_export(tiny_models["llama"], tmp_path / "plain.gguf", rules=rules)
    monkeypatch.setattr(hf_to_gguf, "family_for_hf", lambda arch: fam)
    out = tmp_path / "m.gguf"
    result = hf_to_gguf.gguf_export(tiny_models["llama"], out, rules=rules)
    assert result["tensors"] == plain["tensors"] + 1
    g = open_gguf(out)
    first = g.tensors[0]
    assert first.name == "rope_freqs.weight" and first.qtype == GGMLQuantizationType.F32 and first.shape == (8,)
    assert torch.equal(g.tensor_bytes(first).view(torch.float32), values)
    r = run_mtk("gguf-import", str(out), "-o", str(tmp_path / "hf"), "--no-verify")
    assert r.returncode == 3 and "rope_freqs.weight is not llama3 RoPE" in r.stderr, r.stderr
    assert not (tmp_path / "hf").exists()


def test_llama3_rope_exports_rope_freqs_that_llama_cpp_runs_and_imports_back(tmp_path: Path) -> None:
    """A Llama 3.1-style RoPE with its smooth band inside the prompts (original context 64, so most
    frequencies are scaled): llama.cpp agrees with transformers only with the factors (without them: max
    |diff| 1.8), and the import recovers the same rope_parameters."""
    from fixtures_models import build_tiny_model

    from mtk.converters.gguf_to_hf import gguf_import

    params = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    src = build_tiny_model("llama", tmp_path / "src", rope_parameters=params)
    out = tmp_path / "m.gguf"
    result = hf_to_gguf.gguf_export(src, out, rules=TypeRules(GGMLQuantizationType.F32), check=export_check(src, True))
    assert result["verification"]["logits"]["max_abs"] < 1e-4, result["verification"]
    g = open_gguf(out)
    freqs = g.tensor_bytes(g.by_name["rope_freqs.weight"]).view(torch.float32)
    # head_dim 16: wavelengths 6.3 (< 64/4: kept), 19.9 and 62.8 (the smooth band), then > 64 (divided by 8).
    assert freqs[0] == 1.0 and 1.0 < freqs[1] < freqs[2] < 8.0 and torch.all(freqs[3:] == 8.0), freqs
    assert "llama.rope.scaling.type" not in g.metadata  # llama.cpp's converter writes none for llama3
    back = gguf_import(out, tmp_path / "hf", check=import_check(out, True))
    assert back["verification"]["logits"]["max_abs"] < 1e-4
    config = AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.rope_parameters == params
    qwen = SimpleNamespace(rope_parameters=params, head_dim=16)
    with pytest.raises(UnsupportedError, match="qwen2 loader does not read rope_freqs.weight"):
        family_for_gguf("qwen2").synthesised(qwen)


def test_qwen35_transforms_tile_the_value_heads_and_invert() -> None:
    """llama.cpp's value-head order is tiled: its head j is transformers' grouped head (j % n_k) * r + j // n_k
    (r value heads per key head; llama.cpp's _LinearAttentionVReorderBase notes). Each transform inverts bit for
    bit, but A_log's exp/log, within its stated bound over the range transformers initialises it in."""
    from mtk.converters.families.qwen35 import A_LOG_ATOL, QWEN35_TRANSFORMS

    n_k, n_v, dk, dv, width, kernel = 2, 6, 3, 5, 7, 4
    cfg = {"linear_num_key_heads": n_k, "linear_num_value_heads": n_v, "linear_key_head_dim": dk}
    cfg["linear_value_head_dim"] = dv
    tiled_heads = torch.tensor([(j % n_k) * (n_v // n_k) + j // n_k for j in range(n_v)])
    qk = 2 * n_k * dk
    # Each row (column for ssm_out) holds the grouped index of its value head; q/k channels hold -1.
    by_head = torch.arange(n_v).repeat_interleave(dv).float()
    gate = QWEN35_TRANSFORMS["blk.{bid}.attn_gate.weight"].to_gguf(by_head[:, None].expand(-1, width), cfg)
    assert torch.equal(gate[:, 0], tiled_heads.repeat_interleave(dv).float())
    qkv_rows = torch.cat([torch.full((qk,), -1.0), by_head])
    qkv = QWEN35_TRANSFORMS["blk.{bid}.attn_qkv.weight"].to_gguf(qkv_rows[:, None].expand(-1, width), cfg)
    assert torch.equal(qkv[:qk, 0], torch.full((qk,), -1.0))
    assert torch.equal(qkv[qk:, 0], tiled_heads.repeat_interleave(dv).float())
    out = QWEN35_TRANSFORMS["blk.{bid}.ssm_out.weight"].to_gguf(by_head[None, :].expand(width, -1), cfg)
    assert torch.equal(out[0], tiled_heads.repeat_interleave(dv).float())
    beta = QWEN35_TRANSFORMS["blk.{bid}.ssm_beta.weight"].to_gguf(torch.arange(n_v).float()[:, None], cfg)
    assert torch.equal(beta[:, 0], tiled_heads.float())
    conv = QWEN35_TRANSFORMS["blk.{bid}.ssm_conv1d.weight"]
    assert conv.gguf_shape((qk + n_v * dv, 1, kernel)) == (qk + n_v * dv, kernel)
    assert conv.hf_shape((qk + n_v * dv, kernel)) == (qk + n_v * dv, 1, kernel)

    torch.manual_seed(0)
    shapes = {
        "blk.{bid}.attn_qkv.weight": (qk + n_v * dv, width),
        "blk.{bid}.attn_gate.weight": (n_v * dv, width),
        "blk.{bid}.ssm_beta.weight": (n_v, width),
        "blk.{bid}.ssm_alpha.weight": (n_v, width),
        "blk.{bid}.ssm_dt.bias": (n_v,),
        "blk.{bid}.ssm_conv1d.weight": (qk + n_v * dv, kernel),
        "blk.{bid}.ssm_out.weight": (width, n_v * dv),
    }
    assert set(shapes) | {"blk.{bid}.ssm_a"} == set(QWEN35_TRANSFORMS)
    for template, shape in shapes.items():
        w = torch.randn(shape)
        t = QWEN35_TRANSFORMS[template]
        moved = t.to_gguf(w, cfg)
        assert not torch.equal(moved, w) and torch.equal(t.to_hf(moved, cfg), w), template
    # A_log = log(A), A uniform in [0.01, 16] (transformers' init), and the ends of that range.
    a_log = torch.cat([torch.empty(100_000).uniform_(0.01, 16).log(), torch.tensor([math.log(0.01), math.log(16)])])
    many = {**cfg, "linear_num_value_heads": len(a_log)}  # one value per head, two key heads
    t = QWEN35_TRANSFORMS["blk.{bid}.ssm_a"]
    stored = t.to_gguf(a_log, many)
    assert bool((stored < 0).all())
    assert torch.equal(t.to_gguf(a_log[:n_v], cfg), (-a_log[:n_v].double().exp()).float()[tiled_heads])
    back = t.to_hf(stored, many)
    assert float((back - a_log).abs().max()) <= A_LOG_ATOL
    # One bf16 rounding of the result gives back a bf16 A_log exactly.
    a16 = a_log.bfloat16().float()
    assert torch.equal(t.to_hf(t.to_gguf(a16, many), many).bfloat16().float(), a16)
    with pytest.raises(InvalidFileError, match="ssm_a"):
        t.to_hf(-stored, many)
