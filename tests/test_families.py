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
from fixtures_models import TINY, tiny_config
from gguf import GGMLQuantizationType
from transformers import AutoConfig, AutoModelForCausalLM

import mtk.converters.hf_to_gguf as hf_to_gguf
from mtk.artifacts.gguf import export_check, import_check
from mtk.converters import rope
from mtk.converters.family import (
    Synthesised,
    all_families,
    family_for_gguf,
    family_for_hf,
    family_for_model_type,
    layer_plan,
)
from mtk.converters.gguf_types import TypeRules
from mtk.errors import InvalidFileError, UnsupportedError
from mtk.formats.gguf_reader import open_gguf
from mtk.quantizers.awq import _applicable, apply_scales
from mtk.quantizers.moe import expert_count, unfuse
from mtk.quantizers.plan import linear_names, scale_groups
from mtk.runtime import auto_model_class


def test_every_family_is_found_by_gguf_arch_hf_architecture_and_model_type() -> None:
    for fam in all_families():
        assert family_for_gguf(fam.gguf_arch, experts=bool(fam.expert_tensors)) is fam
        assert family_for_hf(fam.hf_architecture) is fam
        assert all(family_for_model_type(t) is fam for t in fam.model_types)
    assert family_for_hf("MistralForCausalLM").gguf_arch == family_for_model_type("mistral").gguf_arch == "llama"
    assert layer_plan("mistral") is layer_plan("llama")
    with pytest.raises(UnsupportedError, match="does not support model type 'bert'"):
        layer_plan("bert")
    with pytest.raises(UnsupportedError, match="olmo2"):
        family_for_model_type("bert")
    # Mixtral shares llama.cpp's llama architecture: a GGUF with experts is Mixtral, one without is llama.
    assert family_for_gguf("llama").hf_architecture == "LlamaForCausalLM"
    assert family_for_gguf("llama", experts=True).hf_architecture == "MixtralForCausalLM"
    with pytest.raises(UnsupportedError, match="unknown architecture 'mixtral'"):
        family_for_gguf("mixtral")  # a registry name, not a GGUF architecture


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_rows_and_layer_plans_fit_transformers(name: str) -> None:
    """Each tiny row names a real model; its family's layer plan names every Linear of a decoder layer once,
    and folding random AWQ scales into every applicable group leaves the model's logits unchanged (a group
    whose ``prev`` does not feed exactly its Linears changes them)."""
    tiny = TINY[name]
    assert "/" in tiny.mirrors
    fam = family_for_model_type(tiny.model_type)
    config = tiny_config(tiny, vocab_size=96, pad_token_id=None)
    torch.manual_seed(0)
    # eager experts too: transformers' default grouped matmul for fused MoE experts takes no float64
    impl = {"experts_implementation": "eager"} if fam.layer_plan and fam.layer_plan.experts else {}
    auto = auto_model_class(config.model_type)
    model = auto.from_config(config, dtype=torch.float64, attn_implementation="eager", **impl).eval()
    if fam.layer_plan is None:
        return
    layers = model.get_decoder().layers  # a multimodal model's text tower
    text = config.get_text_config(decoder=True)
    kinds = getattr(text, "layer_types", None) or [""] * len(layers)
    plans = [fam.layer_plans.get(k, fam.layer_plan) for k in kinds]  # hybrid families: a plan per layer type
    n_experts = expert_count(fam.layer_plan, text)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # norms away from 1 (Gemma's from 0)
        ids = torch.randint(0, 96, (1, 7))
        before = model(ids).logits
    for plan, layer in zip(plans, layers, strict=True):
        if plan.experts is not None:  # fused MoE experts as per-expert Linears: must compute the same (below)
            unfuse(layer, plan.experts)
        float_ = plan.experts.keep_float if plan.experts else ()
        linears = sorted(n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear) and n not in float_)
        names = sorted(linear_names(plan, n_experts))
        assert [n for n in names if n in linears or n not in plan.optional] == linears  # optional: Gemma 4's K/V
        layer.get_submodule(plan.mixer)
    with torch.no_grad():
        folded = 0
        for plan, block in zip(plans, layers, strict=True):
            for group in scale_groups(plan, n_experts):
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
    (
        # gpt-oss's: llama.cpp's converter writes the betas too.
        {
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
        {
            "rope.freq_base": 150000.0,
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": 32.0,
            "rope.scaling.original_context_length": 4096,
            "rope.scaling.yarn_beta_fast": 32.0,
            "rope.scaling.yarn_beta_slow": 1.0,
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


@pytest.mark.parametrize("kind", ["dynamic"])
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
    # As llama.cpp's converter writes a Gemma 3 4B-27B config: the global layers' base and scaling, the sliding base.
    assert meta == {
        "gemma3.rope.freq_base": 1e6,
        "gemma3.rope.scaling.type": "linear",
        "gemma3.rope.scaling.factor": 8.0,
        "gemma3.rope.freq_base_swa": 10000.0,
    }
    assert rope.hf_parameters(layout, meta, "gemma3", (), NO_TENSORS) == config.rope_parameters
    # Another sliding base goes to rope.freq_base_swa; llama.cpp never scales sliding layers: scaling is refused.
    other = {"full_attention": full, "sliding_attention": {**sliding, "rope_theta": 5e4}}
    meta = rope.gguf_metadata(layout, SimpleNamespace(rope_parameters=other), "gemma3")
    assert meta["gemma3.rope.freq_base_swa"] == 5e4
    assert rope.hf_parameters(layout, meta, "gemma3", (), NO_TENSORS) == other
    scaled = SimpleNamespace(rope_parameters={"full_attention": full, "sliding_attention": full})
    with pytest.raises(UnsupportedError, match="sliding_attention"):
        rope.gguf_metadata(layout, scaled, "gemma3")


def test_gemma3_sliding_rope_base_reaches_llama_cpp(tmp_path: Path) -> None:
    """A sliding base other than llama.cpp's default (10000) in rope.freq_base_swa: llama.cpp agrees with
    transformers on the layers that use it, and the import gives the same rope_parameters back."""
    from fixtures_models import build_tiny_model

    from mtk.converters.gguf_to_hf import gguf_import

    params = {
        "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
    }
    src = build_tiny_model("gemma3", tmp_path / "src", rope_parameters=params)
    out = tmp_path / "m.gguf"
    result = hf_to_gguf.gguf_export(src, out, rules=TypeRules(GGMLQuantizationType.F32), check=export_check(src, True))
    m = result["verification"]["logits"]
    assert m["max_abs"] < 3e-3 and m["top1"] == 1.0, m
    assert open_gguf(out).metadata["gemma3.rope.freq_base_swa"] == 100.0
    gguf_import(out, tmp_path / "hf")
    assert AutoConfig.from_pretrained(tmp_path / "hf").rope_parameters == params


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


def test_longrope_factors_follow_each_runtimes_choice_and_import_back(tmp_path: Path) -> None:
    """Phi-4-mini's LongRoPE and partial rotary, trained at 256 positions here so that both factor lists are
    reachable: transformers takes the long list for a pass reaching past 256 positions, llama.cpp for a context
    above 256 (it pads n_ctx to a multiple of 256). Where both choose the same list (n_ctx 256 with 200 tokens:
    short; n_ctx 512 with 300 tokens: long) they agree; n_ctx 512 with 200 tokens takes the long list in
    llama.cpp only, and the logits part (measured max |diff| 3.3, against ~1e-5 where they agree)."""
    from fixtures_models import build_tiny_model

    from mtk.artifacts.hf import logits as hf_logits
    from mtk.artifacts.llama_cpp import LlamaCpp
    from mtk.converters.gguf_to_hf import gguf_import

    src = build_tiny_model("phi4mini", tmp_path / "src", original_max_position_embeddings=256)
    out = tmp_path / "m.gguf"
    hf_to_gguf.gguf_export(src, out, rules=TypeRules(GGMLQuantizationType.F32))
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    params = model.config.rope_parameters
    g = open_gguf(out)
    for key, name in (("long_factor", "rope_factors_long.weight"), ("short_factor", "rope_factors_short.weight")):
        info = g.by_name[name]
        assert info.qtype == GGMLQuantizationType.F32 and info.shape == (6,)  # 0.75 * 16 / 2 frequency pairs
        assert g.tensor_bytes(info).view(torch.float32).tolist() == params[key]
    assert g.metadata["phi3.rope.dimension_count"] == 12
    assert g.metadata["phi3.rope.scaling.original_context_length"] == 256
    attention = model.model.rotary_emb.attention_scaling  # transformers' own factor (1.458 here)
    assert g.metadata["phi3.rope.scaling.attn_factor"] == pytest.approx(attention, rel=1e-6) and attention > 1.4

    ids = [(7 * i) % 1000 + 3 for i in range(300)]
    gaps = {}
    for n_ctx, length in ((256, 200), (512, 300), (512, 200)):
        with LlamaCpp(out, n_ctx=n_ctx) as llm:
            theirs = torch.from_numpy(llm.logits(ids[:length]))
        gaps[n_ctx, length] = float((theirs - hf_logits(model, ids[:length])).abs().max())
    assert gaps[256, 200] < 1e-4 and gaps[512, 300] < 1e-4 and gaps[512, 200] > 0.5, gaps

    # (No llama.cpp check here: mtk's runs at n_ctx 512, past this model's 256; the grid checks real lengths.)
    gguf_import(out, tmp_path / "hf")
    imported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    for length in (200, 300):  # both lists, as transformers chooses them
        assert torch.equal(hf_logits(imported, ids[:length]), hf_logits(model, ids[:length]))
    config = AutoConfig.from_pretrained(tmp_path / "hf")
    assert config.original_max_position_embeddings == 256
    got = {k: v for k, v in config.rope_parameters.items() if k != "type"}
    assert got == {k: v for k, v in params.items() if k != "type"}, (got, params)
    assert "attention_factor" not in got  # the GGUF's equals the one transformers computes


def test_longrope_is_refused_where_llama_cpp_reads_no_factors_and_when_the_lists_do_not_fit() -> None:
    from mtk.errors import InvalidFileError

    factors = {"long_factor": [1.0] * 8, "short_factor": [1.0] * 8}
    params = {"rope_type": "longrope", "rope_theta": 1e4, "original_max_position_embeddings": 64, **factors}
    config = SimpleNamespace(rope_parameters=params, max_position_embeddings=512, hidden_size=64, num_attention_heads=4)
    with pytest.raises(UnsupportedError, match="qwen2 loader does not read rope_factors_long.weight"):
        family_for_gguf("qwen2").synthesised(config)
    assert set(family_for_gguf("phi3").synthesised(config)) == {"rope_factors_long.weight", "rope_factors_short.weight"}
    short = SimpleNamespace(**{**vars(config), "rope_parameters": {**params, "short_factor": [1.0] * 7}})
    with pytest.raises(InvalidFileError, match="short_factor has 7 values; the rotary dimension 16 needs 8"):
        family_for_gguf("phi3").synthesised(short)
    # Import: a GGUF with one factor tensor, or without the original context length, is corrupt (exit 4).
    layout, one = family_for_gguf("phi3").rope, {"rope_factors_long.weight": torch.ones(8)}
    meta = {"phi3.rope.scaling.original_context_length": 64}
    with pytest.raises(InvalidFileError, match="longrope GGUF lacks rope_factors_short.weight"):
        rope.hf_parameters(layout, meta, "phi3", set(one), one.__getitem__, 16)
    with pytest.raises(InvalidFileError, match="lacks 'phi3.rope.scaling.original_context_length'"):
        rope.hf_parameters(layout, {}, "phi3", set(one), one.__getitem__, 16)


def test_longrope_attention_factor_follows_transformers_and_an_explicit_one_comes_back() -> None:
    """transformers' attention factor from an explicit ``factor``, else from the context lengths; a GGUF factor
    other than the computed one is read back as ``attention_factor`` (the import's model then uses it)."""
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    factors = {"long_factor": [2.0] * 8, "short_factor": [1.0] * 8}
    base = {"rope_type": "longrope", "rope_theta": 1e4, **factors}
    layout = family_for_gguf("phi3").rope
    tensors = {"rope_factors_long.weight": torch.full((8,), 2.0), "rope_factors_short.weight": torch.ones(8)}
    for extra in ({}, {"factor": 4.0}, {"attention_factor": 1.25}):
        hf = Phi3Config(
            hidden_size=64, num_attention_heads=4, max_position_embeddings=2048, original_max_position_embeddings=64,
            rope_parameters={**base, **extra},
        )  # fmt: skip
        _, expected = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu")
        meta = rope.gguf_metadata(layout, hf, "phi3")
        assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(expected, rel=1e-7), extra
        meta["phi3.context_length"] = 2048
        back = rope.hf_parameters(layout, meta, "phi3", set(tensors), tensors.__getitem__, 16)
        assert back["long_factor"] == factors["long_factor"] and back["original_max_position_embeddings"] == 64
        # The default (sqrt(1 + ln 32 / ln 64) = 1.37) is recomputed by transformers; the others travel.
        assert back.get("attention_factor", expected) == pytest.approx(expected, rel=1e-7), (extra, back)
        assert ("attention_factor" in back) == bool(extra)


def test_smollm3_runs_its_fourth_layer_without_rope_as_llama_cpp_does(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """llama.cpp fixes SmolLM3's NoPE layers (every fourth); the tiny model's last layer is one, and it is live:
    with RoPE switched on there, transformers leaves llama.cpp (measured max |diff| 0.21, against 2.5e-6).
    Another pattern is refused (exit 3)."""
    from fixtures_models import build_tiny_model

    from mtk.artifacts.hf import logits as hf_logits
    from mtk.artifacts.llama_cpp import LlamaCpp

    src, out = tiny_models["smollm3"], tmp_path / "m.gguf"
    hf_to_gguf.gguf_export(src, out, rules=TypeRules(GGMLQuantizationType.F32))
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    ids = [(5 * i) % 900 + 3 for i in range(64)]
    with LlamaCpp(out) as llm:
        theirs = torch.from_numpy(llm.logits(ids))
    assert [layer.self_attn.use_rope for layer in model.model.layers] == [1, 1, 1, 0]
    assert (theirs - hf_logits(model, ids)).abs().max() < 1e-4
    model.model.layers[3].self_attn.use_rope = 1
    assert (theirs - hf_logits(model, ids)).abs().max() > 0.05
    other = build_tiny_model("smollm3", tmp_path / "other", no_rope_layers=[1, 0, 1, 1])
    r = run_mtk("gguf-export", str(other), "-o", str(tmp_path / "o.gguf"), "--no-verify")
    assert r.returncode == 3 and "no_rope_layers [1, 0, 1, 1]" in r.stderr, r.stderr
    assert not (tmp_path / "o.gguf").exists()


REFUSED_MOE = [
    ("qwen3moe", {"mlp_only_layers": [1]}, "dense layers"),
    ("qwen3moe", {"decoder_sparse_step": 2}, "dense layers"),
    ("qwen3moe", {"norm_topk_prob": False}, "norm_topk_prob false"),
    ("mixtral", {"sliding_window": 4096}, "sliding_window 4096"),
    # llama.cpp's llama4 fixes its chunk at 8192 and turns the Q/K norm off only for 128 experts.
    ("llama4", {"attention_chunk_size": 64}, "attention_chunk_size 64"),
    ("llama4", {"use_qk_norm": False}, "use_qk_norm False"),
    ("deepseek-v3", {"attention_bias": True}, "deepseek2 has no biases"),
    (
        "deepseek-v3",
        {"rope_parameters": {**TINY["deepseek-v3"].config["rope_parameters"], "mscale": 0.707}},
        "llama.cpp assumes mscale 1.0",
    ),
]


@pytest.mark.parametrize(("name", "overrides", "message"), REFUSED_MOE, ids=[m for _, _, m in REFUSED_MOE])
def test_moe_configs_llama_cpp_cannot_run_are_refused(name: str, overrides: dict, message: str, tmp_path: Path) -> None:
    """llama.cpp's qwen3moe makes every layer MoE and renormalises the top-k weights; its llama has no sliding
    window: such checkpoints exit 3 with one line, before anything is written."""
    from fixtures_models import build_tiny_model

    src = build_tiny_model(name, tmp_path / "src", **overrides)
    r = run_mtk("gguf-export", str(src), "-o", str(tmp_path / "m.gguf"), "--no-verify")
    assert r.returncode == UnsupportedError.exit_code and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.gguf").exists()


def test_multimodal_checkpoint_converts_its_text_tower_and_says_what_it_left_out(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Gemma3ForConditionalGeneration: gguf-export writes the text tower alone (no vision tensor), says so in one
    stderr line and in the result; gguf-import gives a text-only Gemma3ForCausalLM."""
    import json

    from safetensors import safe_open

    src = tiny_models["gemma3-4b"]
    with safe_open(src / "model.safetensors", "pt") as f:
        stored = list(f.keys())
    vision = [n for n in stored if not n.startswith("language_model.")]
    assert vision and all(n.startswith(("vision_tower.", "multi_modal_projector.")) for n in vision)
    out = tmp_path / "m.gguf"
    r = run_mtk("--json", "gguf-export", str(src), "-o", str(out), "--type", "f32", "--no-verify")
    assert r.returncode == 0, r.stderr
    note = json.loads(r.stdout)["note"]
    assert note.startswith("Gemma3ForConditionalGeneration: converted its text tower as Gemma3ForCausalLM")
    assert f"left out {len(vision)} tensors" in note
    assert [line for line in r.stderr.splitlines() if line.startswith("note: ")] == [f"note: {note}"]
    g = open_gguf(out)
    assert g.architecture == "gemma3" and all(t.name.startswith(("blk.", "token_embd", "output")) for t in g.tensors)
    assert len(g.tensors) == len(stored) - len(vision)  # tied head: no output.weight in either
    r = run_mtk("--json", "gguf-import", str(out), "-o", str(tmp_path / "hf"), "--no-verify")
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "vision_config" not in config
    # quantize writes the text tower alone too, and says so.
    q = tmp_path / "rtn"
    args = ("--json", "quantize", str(src), "-o", str(q), "--method", "rtn", "--group-size", "32", "--no-verify")
    r = run_mtk(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["note"] == note and f"note: {note}" in r.stderr.splitlines()
    config = json.loads((q / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    with safe_open(q / "model.safetensors", "pt") as f:
        written = list(f.keys())
    assert written and not [n for n in written if "vision" in n or "multi_modal" in n]


GEMMA4_REFUSED = [
    ({"enable_moe_block": True, "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 32}, "Mixture"),
    ({"attention_k_eq_v": True, "num_global_key_value_heads": 1}, "K=V attention"),
    # transformers shares the last sliding and the last global layer before the shared ones, in any order;
    # llama.cpp takes the two layers before them as sliding, then global.
    ({"layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]}, "shares"),
    ({"vocab_size_per_layer_input": 64}, "same token ids"),
]


@pytest.mark.parametrize(("overrides", "message"), GEMMA4_REFUSED, ids=[m for _, m in GEMMA4_REFUSED])
def test_gemma4_variants_llama_cpp_cannot_run_are_refused(overrides: dict, message: str, tmp_path: Path) -> None:
    from fixtures_models import build_tiny_model

    src = build_tiny_model("gemma4", tmp_path / "src", **overrides)
    r = run_mtk("gguf-export", str(src), "-o", str(tmp_path / "m.gguf"), "--type", "f32", "--no-verify")
    assert r.returncode == 3 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "m.gguf").exists()


def test_llama4_maverick_dense_layers_and_live_quirks_agree_with_llama_cpp(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Maverick's shape (MoE every second layer, dense between, 128 experts, no Q/K norm) exports at F32, agrees
    with transformers in llama.cpp and imports back bit for bit; on Scout's row the Q/K norm and the NoPE layer
    are live: switching either off in transformers leaves llama.cpp."""
    from fixtures_models import build_tiny_model

    from mtk.artifacts.hf import logits as hf_logits
    from mtk.artifacts.llama_cpp import LlamaCpp
    from mtk.converters.families.llama4 import MAVERICK
    from mtk.converters.gguf_to_hf import gguf_import

    src = build_tiny_model("llama4", tmp_path / "maverick", **MAVERICK)
    out = tmp_path / "m.gguf"
    result = hf_to_gguf.gguf_export(src, out, rules=TypeRules(GGMLQuantizationType.F32), check=export_check(src, True))
    assert result["verification"]["logits"]["max_abs"] < 1e-4 and result["verification"]["logits"]["top1"] == 1.0
    names = {t.name for t in open_gguf(out).tensors}
    assert {"blk.0.ffn_gate.weight", "blk.2.ffn_gate.weight", "blk.1.ffn_gate_exps.weight"} <= names
    assert "blk.1.ffn_gate.weight" not in names and "blk.0.ffn_gate_exps.weight" not in names
    back = gguf_import(out, tmp_path / "hf", check=import_check(out, True))
    assert back["verification"]["logits"]["max_abs"] < 1e-4
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    scout, scout_gguf = tiny_models["llama4"], tmp_path / "scout.gguf"
    hf_to_gguf.gguf_export(scout, scout_gguf, rules=TypeRules(GGMLQuantizationType.F32))
    ids = [(7 * i) % 900 + 3 for i in range(64)]
    with LlamaCpp(scout_gguf) as llm:
        theirs = torch.from_numpy(llm.logits(ids))
    model = AutoModelForCausalLM.from_pretrained(scout, dtype=torch.float32).eval()
    assert (theirs - hf_logits(model, ids)).abs().max() < 1e-4
    del model.model.layers[0].self_attn.qk_norm
    assert (theirs - hf_logits(model, ids)).abs().max() > 0.05
    model = AutoModelForCausalLM.from_pretrained(scout, dtype=torch.float32).eval()
    model.model.layers[3].self_attn.use_rope = 1
    assert (theirs - hf_logits(model, ids)).abs().max() > 0.05


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


def test_llama4_multimodal_checkpoint_exports_its_text_tower(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The Hub's Llama 4 checkpoints are Llama4ForConditionalGeneration (``language_model.model.*``,
    ``language_model.lm_head``, beside a vision tower): gguf-export writes the text tower's tensors, byte for byte
    those of the text-only checkpoint's export, and llama.cpp agrees with transformers on the source."""
    from safetensors import safe_open
    from transformers import Llama4ForConditionalGeneration

    text_src = tiny_models["llama4"]
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 14, "vision_output_dim": 32, "projector_input_dim": 32,
        "projector_output_dim": 32,
    }  # fmt: skip
    text = AutoConfig.from_pretrained(text_src)
    mm = Llama4ForConditionalGeneration(
        AutoConfig.for_model("llama4", vision_config=vision, text_config=text.to_dict())
    )
    mm.language_model.load_state_dict(AutoModelForCausalLM.from_pretrained(text_src, dtype=torch.float32).state_dict())
    src = tmp_path / "mm"
    mm.save_pretrained(src)
    for f in text_src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            (src / f.name).write_bytes(f.read_bytes())
    with safe_open(src / "model.safetensors", "pt") as f:
        stored = list(f.keys())
    assert any(n.startswith("vision_model.") for n in stored) and "language_model.lm_head.weight" in stored
    ours, ref = tmp_path / "mm.gguf", tmp_path / "text.gguf"
    result = hf_to_gguf.gguf_export(src, ours, rules=TypeRules(GGMLQuantizationType.F32), check=export_check(src, True))
    m = result["verification"]["logits"]
    assert m["max_abs"] < 1e-4 and m["top1"] == 1.0, m
    hf_to_gguf.gguf_export(text_src, ref, rules=TypeRules(GGMLQuantizationType.F32))
    a, b = open_gguf(ours), open_gguf(ref)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert all(
        bytes(a.tensor_bytes(t).numpy()) == bytes(b.tensor_bytes(u).numpy())
        for t, u in zip(a.tensors, b.tensors, strict=True)
    )
