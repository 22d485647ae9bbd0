"""gguf-export: every family at the core types (four families at every type) loads in llama.cpp, tokenizes
identically and agrees on logits; round trips through gguf-import;
split files; re-typing GGUFs; the per-tensor type rules."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import run_mtk
from fixtures_models import FAMILY_NAMES, MOE, TINY, build_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtk.artifacts.gguf import export_check, import_check
from mtk.artifacts.hf import logits as hf_logits
from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.bench.perplexity import perplexity, token_windows
from mtk.converters.family import family_for_model_type
from mtk.converters.gguf_to_hf import gguf_import
from mtk.converters.gguf_types import TYPE_NAMES, ModelShape, TypeRules, plan_types
from mtk.converters.hf_to_gguf import gguf_export
from mtk.errors import InvalidFileError, VerificationError
from mtk.formats.checkpoint import TOKENIZER_FILES, HFCheckpoint
from mtk.formats.gguf_reader import open_gguf
from mtk.kernels import types

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
Q = gguf.GGMLQuantizationType
# The plain types (one tensor type for every matrix); K-quant mixes are tested in test_kquant_export.py.
TYPES = [row.key for row in types.rows(writes=True) if row.importance is not types.Importance.BUILT_IN]
# Mean KL of each type's llama.cpp logits against the float source on the tiny random models.
QUALITY_KL = {"q8_0": 0.005, "q5_0": 0.05, "q5_1": 0.05, "q4_0": 0.15, "q4_1": 0.15, "mxfp4": 0.15}


# Every family at the float types and q8_0; every type on the families whose tensors differ in kind (NORM RoPE
# permutation, fused projections, 3-D experts, shifted norms). Types are family-agnostic beyond that, and the
# full grid would cost the suite ~3 s per added family and type.
CORE_TYPES = ("f32", "f16", "q8_0")
FULL_GRID = ("llama", "phi3", "qwen2moe", "gemma3")
# MXFP4 is an experts-only type (llama.cpp's mxfp4_moe: Q8_0 for every other matrix): MoE families only.
MOE_FAMILIES = set(MOE) | {f for f in FAMILY_NAMES if family_for_model_type(TINY[f].model_type).derived}
GRID = [
    (f, t)
    for f in FAMILY_NAMES
    for t in TYPES
    if (t in CORE_TYPES or f in FULL_GRID or t == "mxfp4") and (t != "mxfp4" or f in MOE_FAMILIES)
]


@pytest.mark.parametrize(("family", "type_name"), GRID)
def test_every_family_at_every_type_runs_in_llama_cpp(
    family: str, type_name: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "m.gguf"
    result = gguf_export(
        tiny_models[family], out, rules=TypeRules(TYPE_NAMES[type_name]), check=export_check(tiny_models[family], True)
    )
    v = result["verification"]
    assert v["tokenizer"]["identical"] and v["tokenizer"]["tokens"] > 200
    m = v["logits"]
    if type_name == "f32":
        bound = 3e-3 if family.startswith("gemma") else 1e-4  # llama.cpp's CPU GELU is an f16 table
        bound = 3e-2 if family == "gemma4" else bound  # four GELU layers and per-layer GELU gates: 9.9e-3
        assert m["max_abs"] < bound and m["top1"] == 1.0, m
    elif type_name in ("f16", "bf16"):
        assert m["kl_mean"] < 2e-3 and m["top1"] >= 0.95, m
    else:
        # Conversion: llama.cpp against the weights the file holds (only activation rounding differs).
        assert m["kl_mean"] < 0.02 and m["top1"] >= 0.85, m
        # Quality against the source: the quantization error itself, larger for fewer bits.
        q = v["quality"]
        assert q["kl_mean"] < QUALITY_KL[type_name], q
    written = {t.qtype.name for t in open_gguf(out).tensors if len(t.shape) > 1}
    assert TYPE_NAMES[type_name].name in written


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_export_then_import_gives_back_identical_float_tensors(dtype: torch.dtype, tmp_path: Path) -> None:
    src = build_tiny_model("qwen3", tmp_path / "src")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
    model.save_pretrained(tmp_path / "typed")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "typed")
    type_name = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]
    gguf_export(tmp_path / "typed", tmp_path / "m.gguf", rules=TypeRules(TYPE_NAMES[type_name]))
    result = gguf_import(tmp_path / "m.gguf", tmp_path / "back")
    assert result["dtype"] == str(dtype).removeprefix("torch.")
    a = model.state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=dtype).state_dict()
    # Norms and biases are F32 in GGUF (llama.cpp's rule); a 16-bit value goes to F32 and back exactly.
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("family", MOE)
def test_fused_and_per_expert_checkpoints_export_the_same_bytes(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """transformers 5 saves MoE experts one 2-D tensor per expert (its default, the Hub's layout) or, with
    save_original_format=False, as its fused 3-D parameters: both export to the same GGUF, byte for byte.
    A checkpoint holding one tensor in both layouts is refused."""
    from safetensors.torch import load_file, save_file

    src = tiny_models[family]
    fused = tmp_path / "fused"
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).save_pretrained(fused, save_original_format=False)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            (fused / name).write_bytes((src / name).read_bytes())
    names = HFCheckpoint(fused).names()
    # The last layer has experts (DeepSeek's first ones are dense).
    bid = TINY[family].config.get("num_hidden_layers", 2) - 1
    assert f"model.layers.{bid}.mlp.experts.gate_up_proj" in names and not any(".experts.0." in n for n in names)
    assert any(".experts.0." in n for n in HFCheckpoint(src).names())
    rules = TypeRules(Q.Q8_0)
    gguf_export(src, tmp_path / "a.gguf", rules=rules)
    gguf_export(fused, tmp_path / "b.gguf", rules=rules)
    a, b = open_gguf(tmp_path / "a.gguf"), open_gguf(tmp_path / "b.gguf")
    assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
    # gate, up and down experts of 2 layers
    assert sum(len(t.shape) == 3 and "_exps." in t.name for t in a.tensors) == 6
    for t in a.tensors:
        other = b.by_name[t.name]
        assert (t.qtype, t.shape) == (other.qtype, other.shape), t.name
        assert torch.equal(a.tensor_bytes(t), b.tensor_bytes(other)), t.name
    assert {k: v for k, v in a.metadata.items() if k != "general.name"} == {
        k: v for k, v in b.metadata.items() if k != "general.name"
    }
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in src.iterdir():
        (mixed / f.name).write_bytes(f.read_bytes())
    both = load_file(src / "model.safetensors")
    gate_up = f"model.layers.{bid}.mlp.experts.gate_up_proj"
    both[gate_up] = load_file(fused / "model.safetensors")[gate_up]
    save_file(both, mixed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidFileError, match=f"both hold blk.{bid}.ffn_gate_exps.weight"):
        gguf_export(mixed, tmp_path / "c.gguf", rules=rules)


def test_smollm2_f16_and_q8_0_perplexity_in_llama_cpp(smollm2_hf: Path, bible_text: str, tmp_path: Path) -> None:
    """F16: llama.cpp's perplexity within 0.5% of transformers' (float32) on the same tokens. Q8_0: every
    tensor byte-identical to llama.cpp's own quantizer on the same model, so the gap to transformers
    (~0.6-0.8% here) is llama.cpp's Q8_0 arithmetic, not mtk's file; bounded at 1%/1.5%."""
    import ctypes

    import llama_cpp

    from mtk.converters.gguf_to_hf import load_in_memory

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    text = bible_text[len(bible_text) // 3 :][:20000]
    windows = token_windows(tok(text)["input_ids"], 512, 3)

    def llama_ppl(path: Path) -> float:
        llm = LlamaCpp(path, n_ctx=512)
        try:
            return perplexity(llm.logits, windows)
        finally:
            llm.close()

    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    ppl_hf = perplexity(lambda w: hf_logits(model, w), windows)
    f16 = tmp_path / "smol.f16.gguf"
    assert gguf_export(smollm2_hf, f16, rules=TypeRules(Q.F16), check=export_check(smollm2_hf, True))["verification"][
        "tokenizer"
    ]["identical"]
    assert abs(llama_ppl(f16) / ppl_hf - 1) < 0.005
    q8 = tmp_path / "smol.q8_0.gguf"
    gguf_export(smollm2_hf, q8, rules=TypeRules(Q.Q8_0), check=export_check(smollm2_hf, True))
    held = load_in_memory(q8)
    ppl_hf_q8 = perplexity(lambda w: hf_logits(held, w), windows)
    ppl_q8 = llama_ppl(q8)
    # llama.cpp multiplies Q8_0 weights with activations rounded to Q8_0: measured 0.35-0.7% on these texts.
    assert abs(ppl_q8 / ppl_hf_q8 - 1) < 0.01, (ppl_q8, ppl_hf_q8)
    assert abs(ppl_q8 / ppl_hf - 1) < 0.015, (ppl_q8, ppl_hf)
    # llama.cpp's own Q8_0 of the same weights (quantized from an F32 export): the same bytes.
    f32 = tmp_path / "smol.f32.gguf"
    gguf_export(smollm2_hf, f32, rules=TypeRules(Q.F32))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(gguf.LlamaFileType.MOSTLY_Q8_0), 2
    theirs = tmp_path / "llama.q8_0.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    ours, ref = open_gguf(q8), open_gguf(theirs)
    assert sorted(t.name for t in ours.tensors) == sorted(t.name for t in ref.tensors)
    for t in ours.tensors:
        assert torch.equal(ours.tensor_bytes(t), ref.tensor_bytes(ref.by_name[t.name])), t.name


def test_split_files_load_in_llama_cpp_and_import_back(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    proc = run_mtk(
        "--json", "gguf-export", str(tiny_models["llama"]), "-o", str(out), "--type", "f32", "--split-max-size", "150K"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    parts = [Path(p) for p in result["output"]]
    assert len(parts) >= 3 and parts[0].name == f"m-00001-of-{len(parts):05d}.gguf"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in parts)
    assert result["verification"]["logits"]["max_abs"] < 1e-4  # llama.cpp loaded the parts
    back = gguf_import(parts[1], tmp_path / "back", check=import_check(parts[1], True))
    a = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert back["tensors"] == result["tensors"]


def test_gguf_input_is_retyped_and_same_type_tensors_copy_byte_for_byte(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    f16 = tmp_path / "m.f16.gguf"
    gguf_export(tiny_models["llama"], f16, rules=TypeRules(Q.F16))
    q8 = tmp_path / "m.q8_0.gguf"
    result = gguf_export(f16, q8, rules=TypeRules(Q.Q8_0), check=export_check(f16, True))
    a, b = open_gguf(f16), open_gguf(q8)
    n_f32 = sum(t.qtype == Q.F32 for t in a.tensors)
    assert result["copied_unchanged"] == n_f32 and n_f32 > 0
    for t in b.tensors:
        if t.qtype == Q.F32:
            assert torch.equal(b.tensor_bytes(t), a.tensor_bytes(a.by_name[t.name]))
        else:
            assert t.qtype == Q.Q8_0
            src = a.tensor_bytes(a.by_name[t.name]).view(torch.float16).reshape(t.shape).float().numpy()
            assert np.array_equal(b.tensor_bytes(t).numpy(), gguf.quants.quantize(src, Q.Q8_0).reshape(-1))
    assert b.metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert b.metadata["tokenizer.ggml.tokens"] == a.metadata["tokenizer.ggml.tokens"]
    # Re-typing to the same type copies every tensor.
    same = gguf_export(f16, tmp_path / "again.gguf", rules=TypeRules(Q.F16))
    assert same["copied_unchanged"] == same["tensors"]


def test_type_rules_follow_llama_cpp() -> None:
    model = ModelShape("llama", n_layer=1, n_head=4, n_head_kv=2)

    def plan(rules: TypeRules, *tensors: tuple[str, tuple[int, ...]]) -> list[str]:
        types = plan_types(list(tensors), model, rules)
        return [types[name].name for name, _ in tensors]

    norm, gate = ("blk.0.attn_norm.weight", (64,)), ("blk.0.ffn_gate_inp.weight", (4, 64))
    q, odd = ("blk.0.attn_q.weight", (64, 64)), ("blk.0.attn_k.weight", (64, 48))
    out, emb = ("output.weight", (100, 256)), ("token_embd.weight", (100, 256))
    assert plan(TypeRules(Q.Q4_0), norm, gate, q, odd, out, emb) == ["F32", "F32", "Q4_0", "F16", "Q6_K", "Q4_0"]
    # Tied embeddings serve as the output; a row that is not whole Q6_K blocks gets Q8_0 (Q6_K's fallback).
    assert plan(TypeRules(Q.Q4_0), emb) == ["Q6_K"]
    assert plan(TypeRules(Q.Q4_0), ("token_embd.weight", (100, 64))) == ["Q8_0"]
    assert plan(TypeRules(Q.Q4_0, pure=True), out) == ["Q4_0"]
    assert plan(TypeRules(Q.Q4_0, output=Q.F16, embedding=Q.Q8_0), out, emb) == ["F16", "Q8_0"]
    assert plan(TypeRules(Q.Q8_0), out) == ["Q8_0"]
    with pytest.raises(ValueError, match="IQ2_XXS"):
        TypeRules(Q.IQ2_XXS)


def test_mxfp4_moe_puts_only_stacked_experts_in_mxfp4() -> None:
    # llama.cpp's llama_tensor_get_type for MXFP4_MOE: 3-D tensors MXFP4, other matrices (output too) Q8_0.
    model = ModelShape("qwen2moe", n_layer=1, n_head=4, n_head_kv=2, n_expert=4)
    tensors = [
        ("blk.0.ffn_gate_exps.weight", (4, 32, 64)),
        ("blk.0.ffn_down_exps.weight", (4, 64, 32)),
        ("blk.0.ffn_up_shexp.weight", (64, 64)),
        ("blk.0.attn_v.weight", (32, 64)),
        ("blk.0.ffn_gate_inp.weight", (4, 64)),
        ("token_embd.weight", (100, 64)),
        ("output.weight", (100, 64)),
    ]
    got = {n: t.name for n, t in plan_types(tensors, model, TypeRules(types.get("MXFP4").qtype)).items()}
    assert got == {
        "blk.0.ffn_gate_exps.weight": "MXFP4",
        "blk.0.ffn_down_exps.weight": "MXFP4",
        "blk.0.ffn_up_shexp.weight": "Q8_0",
        "blk.0.attn_v.weight": "Q8_0",
        "blk.0.ffn_gate_inp.weight": "F32",
        "token_embd.weight": "Q8_0",
        "output.weight": "Q8_0",
    }
    tied = plan_types(tensors[:-1], model, TypeRules(types.get("MXFP4").qtype, output=Q.F16))
    assert tied["token_embd.weight"] == Q.F16  # a tied embedding serves as the output and takes its type


def test_cli_overrides_and_deterministic_bytes(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    args = ["gguf-export", str(tiny_models["qwen2"]), "--type", "q4_0", "--embedding-type", "q8_0", "--no-verify"]
    assert run_mtk(*args, "-o", str(tmp_path / "a.gguf")).returncode == 0
    assert run_mtk(*args, "-o", str(tmp_path / "b.gguf")).returncode == 0
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.gguf", "b.gguf")]
    assert digest[0] == digest[1]
    types = {t.name: t.qtype for t in open_gguf(tmp_path / "a.gguf").tensors}
    assert types["token_embd.weight"] == Q.Q8_0 and types["blk.0.attn_q.weight"] == Q.Q4_0
    bad = run_mtk("gguf-export", str(tiny_models["qwen2"]), "-o", str(tmp_path / "c.gguf"), "--split-max-size", "lots")
    assert bad.returncode == 2 and "not a size" in bad.stderr


def test_verification_failure_keeps_the_users_file(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtk.converters.hf_to_gguf as e

    real = e.hf_tensor

    def buggy(family, t, ckpt, config, device):  # type: ignore[no-untyped-def]
        w = real(family, t, ckpt, config, device)
        return w.flip(0) if t.template == "blk.{bid}.ffn_down.weight" else w

    monkeypatch.setattr(e, "hf_tensor", buggy)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"the user's old file")
    proc = run_mtk("gguf-export", str(tiny_models["llama"]), "-o", str(out), "--type", "f32", "--overwrite")
    assert proc.returncode == VerificationError.exit_code, proc.stderr
    assert out.read_bytes() == b"the user's old file"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
