"""gguf-import: every family from a GGUF the tests write, quantized inputs from gguf-py and llama.cpp,
and the real SmolLM2, each checked against llama.cpp on the same GGUF."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from conftest import run_mtk
from fixtures_models import FAMILY_NAMES, build_tiny_model, text_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtk.artifacts.gguf import import_check
from mtk.artifacts.hf import load as hf_load
from mtk.artifacts.hf import logits as hf_logits
from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.bench.perplexity import perplexity, token_windows
from mtk.compare import PROMPTS, logit_metrics
from mtk.converters.gguf_to_hf import gguf_import
from mtk.converters.gguf_types import TypeRules
from mtk.converters.hf_to_gguf import gguf_export
from mtk.errors import OutputError, UnsupportedError, VerificationError
from mtk.formats.gguf_reader import open_gguf
from mtk.formats.gguf_writer import write_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
Q = gguf.GGMLQuantizationType
GELU_FAMILIES = {f for f in FAMILY_NAMES if f.startswith("gemma")}


def llama_vs_hf(gguf_path: Path, hf_dir: Path) -> dict[str, float]:
    """Logit metrics of transformers on ``hf_dir`` against llama.cpp on ``gguf_path`` over PROMPTS."""
    model = hf_load(hf_dir)  # a multimodal source too
    llm = LlamaCpp(gguf_path)
    ref, cand = [], []
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt, add_bos=True)
        ref.append(torch.from_numpy(llm.logits(ids)))
        cand.append(hf_logits(model, ids))
    llm.close()
    return logit_metrics(torch.cat(ref), torch.cat(cand))


@pytest.fixture(scope="module")
def f32_ggufs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("f32-gguf")

    class Lazy(dict):
        def __missing__(self, family: str) -> Path:
            path = root / f"{family}.gguf"
            gguf_export(tiny_models[family], path, rules=TypeRules(Q.F32))
            self[family] = path
            return path

    return Lazy()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_imports_and_agrees_with_llama_cpp(
    family: str, tiny_models: dict[str, Path], f32_ggufs: dict[str, Path], tmp_path: Path
) -> None:
    src, gguf_path = tiny_models[family], f32_ggufs[family]
    # The GGUF itself is right: llama.cpp on it agrees with transformers on the source checkpoint.
    exported = llama_vs_hf(gguf_path, src)
    bound = 3e-3 if family in GELU_FAMILIES else 1e-4  # llama.cpp's CPU GELU is an f16 lookup table
    # Gemma 4 (norms unshifted, so bit-exact below): four GELU layers and per-layer GELU gates, 9.9e-3 measured.
    bound = 3e-2 if family == "gemma4" else bound
    assert exported["max_abs"] < bound and exported["top1"] == 1.0, exported
    out = tmp_path / "hf"
    result = gguf_import(gguf_path, out, check=import_check(gguf_path, True))
    v = result["verification"]
    assert v["tokenizer"]["identical"] and v["tokenizer"]["tokens"] > 200
    assert v["logits"]["max_abs"] < bound and v["logits"]["top1"] == 1.0
    # F32 in, F32 out: every weight comes back bit for bit (Gemma's norms pass through w + 1 - 1).
    # A multimodal source imports as its text tower's causal LM.
    a = text_state_dict(family, src)
    b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    for name, t in a.items():
        if family in GELU_FAMILIES and name.endswith("norm.weight"):
            torch.testing.assert_close(b[name], t, rtol=0, atol=1e-7)
        else:
            assert torch.equal(b[name], t), name
    tok_a, tok_b = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert tok_a("Hello wörld 東京 😀")["input_ids"] == tok_b("Hello wörld 東京 😀")["input_ids"]
    assert json.loads((out / "config.json").read_text())["architectures"][0] == result["architecture"]


def _requantize(src: Path, dst: Path, qtype: Q) -> None:
    """Re-encode a float GGUF's 2-D weights with gguf-py's reference encoder."""
    model = open_gguf(src)
    tensors = {}
    for t in model.tensors:
        data = model.tensor_bytes(t).numpy().view(np.float32).reshape(t.shape)
        if len(t.shape) == 2 and t.shape[-1] % 32 == 0:
            tensors[t.name] = (qtype, gguf.quants.quantize(data, qtype))
        else:
            tensors[t.name] = (Q.F32, data)
    write_gguf(dst, dict(model.metadata), tensors)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.F16, Q.BF16])
def test_legacy_quant_types_import(qtype: Q, f32_ggufs: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / f"llama-{qtype.name}.gguf"
    _requantize(f32_ggufs["llama"], src, qtype)
    result = gguf_import(src, tmp_path / "hf", check=import_check(src, True))
    m = result["verification"]["logits"]
    assert m["top1"] >= 0.85 and m["kl_mean"] < 0.05, m
    # The imported weights are exactly the dequantized GGUF weights (in llama.cpp's row order undone).
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    ref = gguf.GGUFReader(src)
    down = next(t for t in ref.tensors if t.name == "blk.1.ffn_down.weight")
    expected = gguf.quants.dequantize(np.asarray(down.data), down.tensor_type)
    assert torch.equal(hf["model.layers.1.mlp.down_proj.weight"], torch.from_numpy(expected.astype(np.float32)))


LLAMA_CPP_FTYPES = {
    "Q2_K": 10,
    "Q3_K_M": 12,
    "Q4_K_M": 15,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "IQ3_S": 26,
    "IQ4_NL": 25,
    "IQ4_XS": 30,
}


@pytest.fixture(scope="module")
def wide_f32_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama of width 256, so that llama.cpp's K-quants and IQ types apply to every matrix."""
    root = tmp_path_factory.mktemp("wide")
    src = build_tiny_model("llama", root / "hf", hidden_size=256, intermediate_size=512, initializer_range=0.05)
    path = root / "wide-f32.gguf"
    gguf_export(src, path, rules=TypeRules(Q.F32))
    return path


@pytest.mark.parametrize("mix", sorted(LLAMA_CPP_FTYPES))
def test_llama_cpp_quantized_models_import(mix: str, wide_f32_gguf: Path, tmp_path: Path) -> None:
    dst = tmp_path / f"wide-{mix}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_CPP_FTYPES[mix]
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(wide_f32_gguf).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    types = {t.qtype.name for t in open_gguf(dst).tensors if len(t.shape) == 2}
    assert types & {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ3_S", "IQ4_NL", "IQ4_XS"}, types
    result = gguf_import(dst, tmp_path / "hf", check=import_check(dst, True))
    m = result["verification"]["logits"]
    assert m["top1"] >= 0.85 and m["kl_mean"] < 0.05, (types, m)


def test_smollm2_says_paris_and_matches_llama_cpp_perplexity(
    smollm2_gguf: Path, smollm2_hf: Path, bible_text: str
) -> None:
    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :]).startswith(" Paris")
    # Same token windows for both runtimes: 3 windows of 512 tokens from the middle of the Bible text.
    text = bible_text[len(bible_text) // 2 :][:20000]
    windows = token_windows(tok(text)["input_ids"], 512, 3)
    llm = LlamaCpp(smollm2_gguf, n_ctx=512)
    ppl_llama = perplexity(llm.logits, windows)
    llm.close()
    ppl_hf = perplexity(lambda w: hf_logits(model, w), windows)
    assert 5 < ppl_llama < 40
    assert abs(ppl_hf / ppl_llama - 1) < 0.01, (ppl_hf, ppl_llama)


def test_smollm2_cli_verifies_tokenizer_and_logits(smollm2_gguf: Path, tmp_path: Path) -> None:
    proc = run_mtk("--json", "gguf-import", str(smollm2_gguf), "-o", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    v = result["verification"]
    assert v["tokenizer"]["identical"] is True
    assert v["logits"]["top1"] >= 0.9 and v["logits"]["kl_mean"] < 0.02, v
    assert result["parameters"] == 134515008 - 0  # tied: no lm_head tensor is written
    proc = run_mtk("gguf-import", str(smollm2_gguf), "-o", str(tmp_path / "hf"))
    assert proc.returncode == OutputError.exit_code and "--overwrite" in proc.stderr


def test_split_gguf_imports_like_the_whole(f32_ggufs: dict[str, Path], tmp_path: Path) -> None:
    from test_formats import write_split

    parts = write_split(f32_ggufs["qwen2"], tmp_path / "q.gguf", 200_000)
    assert len(parts) >= 3
    whole = gguf_import(f32_ggufs["qwen2"], tmp_path / "whole")
    split = gguf_import(
        parts[0], tmp_path / "split", check=import_check(parts[0], True)
    )  # llama.cpp loads the split too
    assert split["parameters"] == whole["parameters"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "split").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unsupported_architecture_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    write_gguf(path, {"general.architecture": "mamba"}, {"x.weight": (Q.F32, np.zeros((2, 32), np.float32))})
    proc = run_mtk("gguf-import", str(path), "-o", str(tmp_path / "out"))
    assert proc.returncode == UnsupportedError.exit_code
    assert "mamba" in proc.stderr and "qwen2moe" in proc.stderr and "gemma3" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_verification_failure_exits_5_and_leaves_nothing(
    f32_ggufs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a conversion bug (one layer's V projection scaled): llama.cpp catches it."""
    import mtk.converters.gguf_to_hf as g

    real = g.convert_tensor

    def buggy(family, template, w, config):  # type: ignore[no-untyped-def]
        w = real(family, template, w, config)
        return w * 1.5 if template == "blk.{bid}.attn_v.weight" else w

    monkeypatch.setattr(g, "convert_tensor", buggy)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("the user's file")
    proc = run_mtk("gguf-import", str(f32_ggufs["llama"]), "-o", str(tmp_path / "out"), "--overwrite")
    assert proc.returncode == VerificationError.exit_code, proc.stderr
    assert "disagrees with llama.cpp" in proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_gpu_is_an_environment_error(f32_ggufs: dict[str, Path], tmp_path: Path) -> None:
    from mtk.errors import EnvironmentProblem

    proc = run_mtk("gguf-import", str(f32_ggufs["llama"]), "-o", str(tmp_path / "out"), "--device", "cuda")
    assert proc.returncode == EnvironmentProblem.exit_code and "no CUDA device" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_shapes_that_contradict_the_metadata_are_invalid(f32_ggufs: dict[str, Path], tmp_path: Path) -> None:
    """A GGUF whose KV-head count disagrees with its K projection is refused before anything is written."""
    from mtk.errors import InvalidFileError

    src = open_gguf(f32_ggufs["llama"])
    meta = dict(src.metadata)
    meta["llama.attention.head_count_kv"] = 4  # the K/V projections hold 2 heads
    tensors = {t.name: (t.qtype, src.tensor_bytes(t).numpy().view(np.float32).reshape(t.shape)) for t in src.tensors}
    bad = tmp_path / "bad.gguf"
    write_gguf(bad, meta, tensors)
    proc = run_mtk("gguf-import", str(bad), "-o", str(tmp_path / "out"))
    assert proc.returncode == InvalidFileError.exit_code, proc.stderr
    assert "attn_k.weight" in proc.stderr and "metadata implies" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_llama_cpp_mxfp4_moe_file_matches_mtk_and_imports(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """llama-quantize's MXFP4_MOE of a MoE model: mtk writes the same tensor types and bytes, and imports it."""
    f32 = tmp_path / "moe-f32.gguf"
    gguf_export(tiny_models["qwen2moe"], f32, rules=TypeRules(Q.F32))
    theirs = tmp_path / "theirs.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    ours = tmp_path / "ours.gguf"
    gguf_export(f32, ours, rules=TypeRules(gguf.LlamaFileType.MOSTLY_MXFP4_MOE))
    a, b = open_gguf(theirs), open_gguf(ours)
    assert {t.name: t.qtype.name for t in a.tensors} == {t.name: t.qtype.name for t in b.tensors}
    assert "MXFP4" in {t.qtype.name for t in a.tensors}
    for t in a.tensors:
        assert bytes(a.tensor_bytes(t).numpy()) == bytes(b.tensor_bytes(b.by_name[t.name]).numpy()), t.name
    result = gguf_import(theirs, tmp_path / "hf", check=import_check(theirs, True))
    m = result["verification"]["logits"]
    assert m["top1"] >= 0.95 and m["kl_mean"] < 0.01, m
