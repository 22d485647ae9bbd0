"""gpt-oss beyond the family grids: MXFP4 checkpoints (OpenAI's blocks/scales layout) repacked to ggml's
MXFP4 bit for bit, llama.cpp's rounded YaRN against transformers' unrounded one, and what is refused.

The MXFP4 checkpoint is built here from the tiny float model by :func:`write_hf_mxfp4`, which writes the layout
transformers' ``integrations/mxfp4.py`` reads (see ``mtk/converters/families/gpt_oss.py``): per expert and
output row, blocks of 32 input values as 16 bytes (value 2k in the low nibble of byte k, 2k + 1 in the high
one) and one E8M0 scale byte (2 ** (s - 127)).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_mtk
from fixtures_models import TINY, build_tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from mtk.artifacts import hf
from mtk.artifacts.gguf import compare_on_prompts, export_check, import_check
from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.converters.families.gpt_oss import repack_mxfp4
from mtk.converters.family import TINY_SHAPE
from mtk.converters.gguf_to_hf import gguf_import
from mtk.converters.gguf_types import TYPE_NAMES, TypeRules
from mtk.converters.hf_to_gguf import auto_type, gguf_export
from mtk.errors import InvalidFileError, UnsupportedError
from mtk.formats.gguf_reader import open_gguf
from mtk.formats.gguf_writer import write_gguf
from mtk.kernels import mxfp4

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
EXPERT_MATRICES = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
LAYERS = {**TINY_SHAPE, **TINY["gpt-oss"].config}["num_hidden_layers"]
QUALITY_KL_Q8_0 = 0.005  # test_gguf_export's bound for Q8_0: only the non-expert matrices are re-encoded here


def write_hf_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float (E, in, out) expert parameter as OpenAI's MXFP4: blocks uint8 (E, out, in / 32, 16) and
    scales uint8 (E, out, in / 32). The codes and exponents are ggml's encoder's choice; the packing is OpenAI's."""
    e, n_in, n_out = w.shape
    ggml = mxfp4.encode(w.transpose(1, 2).reshape(-1, 32).contiguous())  # (n, 17): e, q[j] = c[j] | c[j + 16] << 4
    codes = torch.cat([ggml[:, 1:] & 0x0F, ggml[:, 1:] >> 4], dim=1)  # (n, 32) in value order
    blocks = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return blocks.reshape(e, n_out, n_in // 32, 16).contiguous(), ggml[:, 0].reshape(e, n_out, n_in // 32).contiguous()


def mxfp4_checkpoint(src: Path, dst: Path) -> Path:
    """``src`` with its expert matrices stored as gpt-oss-20b stores them (MXFP4, quantization_config)."""
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    for name in [n for n in state if n.endswith(EXPERT_MATRICES)]:
        state[f"{name}_blocks"], state[f"{name}_scales"] = write_hf_mxfp4(state.pop(name))
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        # As openai/gpt-oss-20b's config: only the experts are MXFP4.
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def test_repacked_blocks_decode_to_transformers_dequantization() -> None:
    """Every code in every nibble, every scale byte: ggml's decode of the repack equals transformers' own
    dequantization value for value; the only bits that differ are zeros' signs (code 8 is -0.0 in
    transformers' table, +0 in ggml's)."""
    torch.manual_seed(0)
    blocks = torch.randint(0, 256, (3, 256, 2, 16), dtype=torch.uint8)
    blocks[0, :, 0, :] = torch.arange(256, dtype=torch.uint8)[:, None]  # every byte value in every position
    scales = torch.arange(256, dtype=torch.uint8)[None, :, None].expand(3, 256, 2).contiguous()
    ours = mxfp4.decode(repack_mxfp4(blocks, scales).reshape(-1, 17)).reshape(3, 256, 64).transpose(1, 2)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    assert theirs.shape == ours.shape == (3, 64, 256)
    assert torch.equal(ours, theirs)
    differ = ours.view(torch.int32) != theirs.view(torch.int32)
    assert differ.any() and (ours[differ] == 0).all() and theirs[differ].signbit().all()
    # The same on real shapes: a tiny model's experts, through the checkpoint writer and back.
    w = torch.randn(4, 64, 128) * 0.05
    b, s = write_hf_mxfp4(w)
    theirs = convert_moe_packed_tensors(b, s, dtype=torch.float32)
    ours = mxfp4.decode(repack_mxfp4(b, s).reshape(-1, 17)).reshape(4, 128, 64).transpose(1, 2)
    assert torch.equal(ours, theirs) and (theirs - w).abs().max() < 0.05


def test_llama_cpp_rounds_the_yarn_range_transformers_does_not(tmp_path: Path) -> None:
    """gpt-oss says ``truncate: false``; llama.cpp rounds YaRN's correction range whatever the config says. The
    same F32 GGUF agrees with transformers to 1e-4 when transformers rounds too, and by only ~2e-3 when it
    does not (measured 2.8e-3 on this model): the gap is the rounding, not the export."""
    rope = {**TINY["gpt-oss"].config["rope_parameters"], "truncate": False}
    src = build_tiny_model("gpt-oss", tmp_path / "src", rope_parameters=rope)
    out = tmp_path / "m.gguf"
    gguf_export(src, out, rules=TypeRules(TYPE_NAMES["f32"]))
    untruncated = hf.load(src)
    rounded = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, rope_parameters={**rope, "truncate": True})
    with LlamaCpp(out) as llm:
        exact = compare_on_prompts(llm, lambda ids: hf.logits(rounded, ids), llm.logits)
        gap = compare_on_prompts(llm, lambda ids: hf.logits(untruncated, ids), llm.logits)
    assert exact["max_abs"] < 1e-4 and exact["top1"] == 1.0, exact
    assert 1e-4 < gap["max_abs"] < 5e-3 and gap["kl_mean"] < 1e-5 and gap["top1"] == 1.0, gap


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"swiglu_limit": 6.0}, "swiglu"),
        ({"layer_types": ["full_attention"] * LAYERS}, "layer_types"),
        ({"rope_parameters": {**TINY["gpt-oss"].config["rope_parameters"], "beta_fast": 16.0}}, "betas"),
    ],
    ids=["swiglu", "layer_types", "yarn_betas"],
)
def test_what_llama_cpp_hard_codes_is_refused(override: dict, message: str, tmp_path: Path) -> None:
    src = build_tiny_model("gpt-oss", tmp_path / "src", **override)
    with pytest.raises(UnsupportedError, match=message):
        gguf_export(src, tmp_path / "m.gguf", rules=TypeRules(TYPE_NAMES["f32"]))
    assert not (tmp_path / "m.gguf").exists()


def test_quantize_refuses_gpt_oss_with_exit_3(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_mtk("quantize", str(tiny_models["gpt-oss"]), "-o", str(tmp_path / "q"), "--method", "rtn")
    assert proc.returncode == UnsupportedError.exit_code, proc.stderr
    assert "gpt_oss" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.fixture(scope="module")
def mxfp4_model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mxfp4_checkpoint(tiny_models["gpt-oss"], tmp_path_factory.mktemp("gpt-oss-mxfp4") / "hf")


def _expert_parts(hf_dir: Path) -> dict[str, torch.Tensor]:
    """transformers' own dequantization of an MXFP4 checkpoint's experts, cut into llama.cpp's GGUF tensors
    ((E, F, D) gate and up from the interleaved (E, D, 2F) gate_up_proj; (E, D, F) down)."""
    state = load_file(hf_dir / "model.safetensors")
    out = {}
    for name in [n for n in state if n.endswith("gate_up_proj_blocks")]:
        bid = name.split(".")[2]
        gate_up = convert_moe_packed_tensors(state[name], state[name[:-6] + "scales"], dtype=torch.float32)
        out[f"blk.{bid}.ffn_gate_exps.weight"] = gate_up[..., ::2].transpose(1, 2)
        out[f"blk.{bid}.ffn_up_exps.weight"] = gate_up[..., 1::2].transpose(1, 2)
        down = name.replace("gate_up_proj", "down_proj")
        value = convert_moe_packed_tensors(state[down], state[down[:-6] + "scales"], dtype=torch.float32)
        out[f"blk.{bid}.ffn_down_exps.weight"] = value.transpose(1, 2)
    return out


def test_mxfp4_checkpoint_exports_its_experts_without_a_float_round_trip(mxfp4_model: Path, tmp_path: Path) -> None:
    """mxfp4_moe from an MXFP4 checkpoint: the experts' blocks are the checkpoint's (gguf-py's MXFP4 decoder
    gives transformers' dequantization exactly, scale bytes copied), llama.cpp runs the file, and agrees with
    transformers running the checkpoint itself (dequantized on the CPU) up to the other matrices' Q8_0."""
    import gguf

    out = tmp_path / "m.gguf"
    result = gguf_export(mxfp4_model, out, rules=TypeRules(TYPE_NAMES["mxfp4"]), check=export_check(mxfp4_model, True))
    model = open_gguf(out)
    expected = _expert_parts(mxfp4_model)
    assert len(expected) == 3 * LAYERS
    scales = load_file(mxfp4_model / "model.safetensors")["model.layers.0.mlp.experts.gate_up_proj_scales"]
    for name, values in expected.items():
        info = model.by_name[name]
        assert info.qtype == gguf.GGMLQuantizationType.MXFP4 and info.shape == tuple(values.shape), name
        raw = model.tensor_bytes(info).numpy()
        decoded = gguf.quants.dequantize(raw.reshape(*info.shape[:-1], -1), info.qtype)
        assert torch.equal(torch.from_numpy(decoded), values), name
    gate = model.tensor_bytes(model.by_name["blk.0.ffn_gate_exps.weight"]).reshape(*scales[:, ::2].shape, 17)
    assert torch.equal(gate[..., 0], scales[:, ::2])  # the E8M0 bytes as they were
    assert result["types"] == {"F32": result["types"]["F32"], "Q8_0": 4 * LAYERS + 2, "MXFP4": 3 * LAYERS}
    v = result["verification"]
    assert v["tokenizer"]["identical"] and v["logits"]["kl_mean"] < 0.02 and v["logits"]["top1"] >= 0.85, v
    assert v["quality"]["kl_mean"] < QUALITY_KL_Q8_0, v["quality"]


def test_mxfp4_checkpoint_to_f32_and_back_to_hf(mxfp4_model: Path, tmp_path: Path) -> None:
    """An F32 export of the MXFP4 checkpoint runs in llama.cpp as transformers runs the checkpoint; gguf-import
    of an MXFP4 GGUF writes float32 experts equal to transformers' dequantization, and transformers loads them."""
    f32 = tmp_path / "m.f32.gguf"
    v = gguf_export(mxfp4_model, f32, rules=TypeRules(TYPE_NAMES["f32"]), check=export_check(mxfp4_model, True))
    assert v["verification"]["logits"]["max_abs"] < 1e-4 and v["verification"]["logits"]["top1"] == 1.0, v
    mx = tmp_path / "m.mxfp4.gguf"
    gguf_export(mxfp4_model, mx, rules=TypeRules(TYPE_NAMES["mxfp4"]))
    back = gguf_import(mx, tmp_path / "back", check=import_check(mx, True))
    m = back["verification"]["logits"]  # llama.cpp rounds activations to Q8_0 for the Q8_0 matrices
    assert back["dtype"] == "float32" and m["kl_mean"] < 0.02 and m["top1"] >= 0.85, m
    theirs = AutoModelForCausalLM.from_pretrained(mxfp4_model, dtype=torch.float32).state_dict()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).state_dict()
    assert "quantization_config" not in json.loads((tmp_path / "back" / "config.json").read_text())
    experts = [k for k in theirs if k.endswith(EXPERT_MATRICES)]
    assert len(experts) == 2 * LAYERS
    for name in experts:
        assert torch.equal(ours[name], theirs[name]), name


def test_mxfp4_export_is_llama_quantizes_byte_for_byte(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """mxfp4_moe from the float tiny gpt-oss against llama.cpp's own MXFP4_MOE quantization of its F32 export:
    the same type for every tensor (experts MXFP4, biases, sinks, norms and router F32, other matrices Q8_0) and
    the same bytes."""
    import ctypes

    import gguf
    import llama_cpp

    src = tiny_models["gpt-oss"]
    f32, ours = tmp_path / "m.f32.gguf", tmp_path / "m.mxfp4.gguf"
    gguf_export(src, f32, rules=TypeRules(TYPE_NAMES["f32"]))
    gguf_export(src, ours, rules=TypeRules(TYPE_NAMES["mxfp4"]))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(gguf.LlamaFileType.MOSTLY_MXFP4_MOE), 2
    theirs = tmp_path / "llama.mxfp4.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a, b = open_gguf(ours), open_gguf(theirs)
    assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
    assert {t.qtype.name for t in a.tensors} == {"F32", "Q8_0", "MXFP4"}
    for t in a.tensors:
        ref = b.by_name[t.name]
        assert t.qtype == ref.qtype, t.name
        assert torch.equal(a.tensor_bytes(t), b.tensor_bytes(ref)), t.name


def test_auto_type_and_broken_inputs(mxfp4_model: Path, tmp_path: Path) -> None:
    """--type auto reads the float tensors only (a bf16 MXFP4 checkpoint is BF16, as gpt-oss-20b), which holds
    every MXFP4 value exactly (E2M1 times a power of two); a checkpoint with blocks but no scales, and a GGUF
    with gate but no up experts, are invalid inputs."""
    import gguf

    bf16 = tmp_path / "bf16"
    shutil.copytree(mxfp4_model, bf16)
    state = load_file(bf16 / "model.safetensors")
    save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in state.items()}, bf16 / "model.safetensors")
    assert auto_type(bf16) == gguf.GGMLQuantizationType.BF16
    gguf_export(bf16, tmp_path / "auto.gguf", rules=TypeRules(auto_type(bf16)))
    auto = open_gguf(tmp_path / "auto.gguf")
    for name, values in _expert_parts(bf16).items():
        info = auto.by_name[name]
        assert info.qtype == gguf.GGMLQuantizationType.BF16
        assert torch.equal(auto.tensor_bytes(info).view(torch.bfloat16).reshape(info.shape).float(), values), name
    del state["model.layers.1.mlp.experts.down_proj_scales"]
    save_file(state, bf16 / "model.safetensors")
    with pytest.raises(InvalidFileError, match="down_proj_scales"):
        gguf_export(bf16, tmp_path / "x.gguf", rules=TypeRules(TYPE_NAMES["mxfp4"]))
    good = tmp_path / "m.gguf"
    gguf_export(mxfp4_model, good, rules=TypeRules(TYPE_NAMES["mxfp4"]))
    model = open_gguf(good)
    tensors = {
        t.name: (t.qtype, model.tensor_bytes(t).numpy().reshape(*t.shape[:-1], -1))
        for t in model.tensors
        if t.name != "blk.1.ffn_up_exps.weight"
    }
    write_gguf(tmp_path / "broken.gguf", dict(model.metadata), tensors)
    with pytest.raises(InvalidFileError, match=r"lacks blk\.\{bid\}\.ffn_up_exps\.weight"):
        gguf_import(tmp_path / "broken.gguf", tmp_path / "back")
    assert not (tmp_path / "back").exists()


SLIDING, FULL = "sliding_attention", "full_attention"
# llama.cpp's set_swa_pattern(p): layer il slides when il % p < p - 1; or one flag per layer.
PATTERNS = [(3, [SLIDING, SLIDING]), ([False, True], [FULL, SLIDING])]


@pytest.mark.parametrize(("pattern", "layer_types"), PATTERNS, ids=["period", "flags"])
def test_import_follows_the_ggufs_sliding_window_pattern(
    pattern: int | list[bool], layer_types: list[str], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """A GGUF that sets ``attention.sliding_window_pattern`` (a period, or a flag per layer) imports with the
    layer_types llama.cpp runs: the import agrees with llama.cpp, the source's alternating layers do not."""
    src = tiny_models["gpt-oss"]
    plain = tmp_path / "m.gguf"
    gguf_export(src, plain, rules=TypeRules(TYPE_NAMES["f32"]))
    model = open_gguf(plain)
    tensors = {t.name: (t.qtype, model.tensor_bytes(t).numpy().reshape(*t.shape[:-1], -1)) for t in model.tensors}
    path = tmp_path / "swa.gguf"
    write_gguf(path, {**model.metadata, "gpt-oss.attention.sliding_window_pattern": pattern}, tensors)
    result = gguf_import(path, tmp_path / "back", check=import_check(path, True))
    assert result["verification"]["logits"]["max_abs"] < 1e-4
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert LAYERS == 2 and config["layer_types"] == layer_types
    source = hf.load(src)
    with LlamaCpp(path) as llm:
        assert compare_on_prompts(llm, lambda ids: hf.logits(source, ids), llm.logits)["max_abs"] > 1e-3


def test_k_quant_plans_from_the_checkpoint_equal_llama_quantize(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The per-tensor types mtk plans from the HF checkpoint (its expert count read from the config) are
    llama-quantize's on the F16 export, for the mixes whose rules look at experts and layers."""
    from test_kquant_export import llama_quantize, mtk_plan

    from mtk.converters.gguf_types import FILE_TYPE_NAMES

    f16 = tmp_path / "m.f16.gguf"
    gguf_export(tiny_models["gpt-oss"], f16, rules=TypeRules(TYPE_NAMES["f16"]))
    for mix in ("q2_k", "q4_k_m", "mxfp4_moe"):
        theirs = llama_quantize(f16, None, mix)
        assert mtk_plan(tiny_models["gpt-oss"], TypeRules(FILE_TYPE_NAMES[mix])) == theirs, mix


def test_imatrix_accounts_each_expert_and_the_export_uses_it(
    tiny_models: dict[str, Path], bible_text: str, tmp_path: Path
) -> None:
    """mtk imatrix on gpt-oss: one row and one count per expert for gate/up/down, each token counted by the
    top-k experts it picks (so the experts' sums add up to top-k times the router's, which sees every token);
    an IQ4_NL export (32-value blocks fit the tiny experts) uses them and runs in llama.cpp."""
    from mtk.converters.gguf_types import FILE_TYPE_NAMES
    from mtk.converters.imatrix import read_imatrix

    text = tmp_path / "calibration.txt"
    text.write_text(bible_text[:20000], encoding="utf-8")
    out = tmp_path / "m.imatrix.gguf"
    args = ["--calibration", str(text), "-o", str(out), "--samples", "2", "--seq-len", "32"]
    src = tiny_models["gpt-oss"]
    assert run_mtk("imatrix", str(src), *args).returncode == 0
    im = read_imatrix(out)
    config = TINY["gpt-oss"].config
    top_k, n_expert = config["num_experts_per_tok"], config["num_local_experts"]
    for layer in range(LAYERS):
        gate, router = im.sums[f"blk.{layer}.ffn_gate_exps.weight"], im.sums[f"blk.{layer}.ffn_gate_inp.weight"]
        down = im.sums[f"blk.{layer}.ffn_down_exps.weight"]
        assert gate.shape == (n_expert, 64) and down.shape == (n_expert, config["intermediate_size"])
        assert torch.equal(gate, im.sums[f"blk.{layer}.ffn_up_exps.weight"])
        assert float(im.counts[f"blk.{layer}.ffn_down_exps.weight"].sum()) == top_k * 64
        torch.testing.assert_close(gate.sum(0), top_k * router[0], rtol=1e-5, atol=1e-6)
        assert bool((down > 0).any()) and bool(torch.isfinite(down).all())
    result = gguf_export(
        src, tmp_path / "m.gguf", rules=TypeRules(FILE_TYPE_NAMES["iq4_nl"]), imatrix=im, check=export_check(src, True)
    )
    assert not [n for n in result["imatrix"]["missing"] if "_exps" in n], result["imatrix"]
    assert result["verification"]["logits"]["kl_mean"] < 0.02
