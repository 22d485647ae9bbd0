"""export-onnx: tiny models exported with torch.onnx (dynamo), run in onnxruntime, compared with PyTorch.

One real export per model; the dtype / quantization / optimization variants and the failure path reuse the
tiny llama's traced fp32 graph (``_reuse_graph``) and run every later step for real: the passes, the
manifest, onnxruntime and the comparison with the PyTorch model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fixtures_models import FAMILY_NAMES, build_tiny_model
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from mtk.artifacts.onnx import PROMPT, validate
from mtk.artifacts.onnx_runtime import OnnxCausalLM, generate_text, make_session
from mtk.converters import hf_to_onnx
from mtk.converters.hf_to_onnx import OnnxExportConfig, export_onnx
from mtk.errors import UnsupportedError, VerificationError


@pytest.fixture(scope="module")
def llama_onnx(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("onnx") / "llama"
    return out, export_onnx(tiny_models["llama"], out, check=validate)


def _reuse_graph(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make export_onnx copy ``folder``'s fp32 graph instead of tracing the model again."""
    manifest = json.loads((folder / "mtk_onnx.json").read_text())
    graph = {k: manifest[k] for k in ("inputs", "outputs", "cache") if k in manifest}

    def copy_graph(model: object, task: str, opset: int, dst: Path) -> dict:
        shutil.copyfile(folder / "model.onnx", dst)
        return json.loads(json.dumps(graph))

    monkeypatch.setattr(hf_to_onnx, "_export_graph", copy_graph)


def test_config_is_validated() -> None:
    for bad in (
        {"task": "translation"},
        {"dtype": "bf16"},
        {"quantize": "int2"},
        {"block_size": 64},
        {"opset": 13},
        {"quantize": "int8", "dtype": "fp16"},
    ):
        with pytest.raises(ValueError):
            OnnxExportConfig(**bad)
    assert OnnxExportConfig().task == "auto"


def test_llama_with_past_layout(llama_onnx: tuple[Path, dict]) -> None:
    out, result = llama_onnx
    assert result["task"] == "text-generation-with-past"
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "mtk_onnx.json", "config.json", "tokenizer.json"} <= names
    assert not any(n.startswith(".") for n in names)
    manifest = json.loads((out / "mtk_onnx.json").read_text())
    assert manifest["cache"] == {"layers": 2, "kv_heads": 2, "head_dim": 16, "dtype": "float32"}
    graph = onnx.load(str(out / "model.onnx")).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    assert inputs == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")
    ]
    assert outputs == ["logits"] + [f"present.{i}.{k}" for i in range(2) for k in ("key", "value")]
    past_dims = [d.dim_param or d.dim_value for d in graph.input[3].type.tensor_type.shape.dim]
    assert past_dims == ["batch", 2, "past_sequence", 16]
    m = result["validation"]["logits"]
    assert m["positions"] == len(AutoTokenizer.from_pretrained(out)(PROMPT)["input_ids"]) + 2 >= 20
    assert m["max_abs"] <= 1e-4 and m["top1"] == 1.0


def test_graph_holds_no_path_of_this_machine(llama_onnx: tuple[Path, dict]) -> None:
    """torch.onnx's per-node stack traces (absolute paths of the checkout and the virtual environment) are dropped,
    so the bytes do not depend on where mtk runs from."""
    import sys

    import mtk

    data = (llama_onnx[0] / "model.onnx").read_bytes()
    for where in (str(Path(mtk.__file__).resolve().parent.parent), sys.prefix, "site-packages"):
        assert where.encode() not in data, where


def test_llama_dynamic_batch_and_past(llama_onnx: tuple[Path, dict], tiny_models: dict[str, Path]) -> None:
    """Batch 3, a 5-token prefill then a 2-token chunk through the cache, against PyTorch's own cache."""
    out, _ = llama_onnx
    runner = OnnxCausalLM(out)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(0))
    logits1, cache = runner.step(ids[:, :5].numpy(), runner.empty_cache(3))
    logits2, cache = runner.step(ids[:, 5:].numpy(), cache)
    assert cache[0].shape == (3, 2, 7, 16)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    assert np.abs(np.concatenate([logits1, logits2], axis=1) - ref).max() <= 1e-4


def test_left_padding_matches_unpadded(llama_onnx: tuple[Path, dict]) -> None:
    out, _ = llama_onnx
    runner = OnnxCausalLM(out)
    ids = np.array([[5, 6, 7, 8]])
    alone, _ = runner.step(ids, runner.empty_cache())
    padded, _ = runner.step(
        np.array([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]),
        runner.empty_cache(2),
        np.array([[0, 0, 1, 1, 1, 1], [1] * 6]),
    )
    assert np.abs(padded[0, 2:] - alone[0]).max() <= 1e-4


# Bounds for the tiny llama (its measured values: fp16 KL ~1e-6, int8 ~5e-4, int4 ~0.03); the library's
# own bounds are looser because they must also hold for real models (see mtk/artifacts/onnx.py).
@pytest.mark.parametrize(
    ("options", "kl_bound", "top1_bound"),
    [
        ({"dtype": "fp16"}, 1e-4, 1.0),
        ({"quantize": "int8"}, 5e-3, 0.8),
        ({"quantize": "int4", "block_size": 32}, 0.1, 0.35),
        ({"optimize": True}, 1e-9, 1.0),
    ],
    ids=["fp16", "int8", "int4", "optimize"],
)
def test_variants_are_validated(
    options: dict,
    kl_bound: float,
    top1_bound: float,
    llama_onnx: tuple[Path, dict],
    tiny_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _reuse_graph(monkeypatch, llama_onnx[0])
    result = export_onnx(tiny_models["llama"], tmp_path / "out", OnnxExportConfig(**options), check=validate)
    m = result["validation"]["logits"]
    assert m["kl_mean"] <= kl_bound and m["top1"] >= top1_bound, m
    assert result["validation"]["conversion"]["logits"]["max_abs"] <= 1e-4  # the fp32 graph, checked first
    assert not (tmp_path / "out" / ".fp32").exists()
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    if options.get("quantize") == "int4":
        assert "MatMulNBits" in ops and result["bytes"] < llama_onnx[1]["bytes"] * 0.6
    if options.get("quantize") == "int8":
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    if options.get("dtype") == "fp16":
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        assert json.loads((tmp_path / "out" / "mtk_onnx.json").read_text())["cache"]["dtype"] == "float16"
    if options.get("optimize"):
        assert m["max_abs"] <= 1e-4


def test_mismatch_fails_and_publishes_nothing(
    llama_onnx: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph traced from other weights (another seed) must fail validation; the output folder never appears."""
    other = build_tiny_model("llama", tmp_path / "other", seed=1)
    _reuse_graph(monkeypatch, llama_onnx[0])
    with pytest.raises(VerificationError, match="max abs logit diff") as err:
        export_onnx(other, tmp_path / "out", check=validate)
    assert err.value.exit_code == 5
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_json(
    llama_onnx: tuple[Path, dict], tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from mtk.cli.common import SETTINGS
    from mtk.cli.export_onnx import export_onnx_command

    _reuse_graph(monkeypatch, llama_onnx[0])
    app = typer.Typer()
    app.command()(export_onnx_command)
    monkeypatch.setattr(SETTINGS, "json", True)
    res = CliRunner().invoke(
        app, [str(tiny_models["llama"]), "-o", str(tmp_path / "o"), "--quantize", "int4", "--block-size", "128"]
    )
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout[res.stdout.index("{") :])
    assert result["quantize"] == "int4" and result["validation"]["kind"] == "int4"
    bad = CliRunner().invoke(app, [str(tiny_models["llama"]), "-o", str(tmp_path / "p"), "--block-size", "64"])
    assert bad.exit_code != 0 and isinstance(bad.exception, Exception)


def test_task_must_fit_the_model() -> None:
    from transformers import BertConfig, LlamaConfig

    assert hf_to_onnx.resolve_task(LlamaConfig(), "auto") == "text-generation-with-past"
    assert hf_to_onnx.resolve_task(BertConfig(), "auto") == "feature-extraction"
    with pytest.raises(UnsupportedError, match="not a causal LM"):
        hf_to_onnx.resolve_task(BertConfig(), "text-generation-with-past")


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f != "llama"])
def test_every_family(family: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = export_onnx(tiny_models[family], tmp_path / family, check=validate)
    m = result["validation"]["logits"]
    assert m["max_abs"] <= 1e-4 and m["top1"] == 1.0
    if family == "gemma4":
        # Only the two layers that compute K/V keep a cache (the last two reuse theirs), one KV head each, of 32
        # (sliding) and 64 (global) dimensions.
        cache = json.loads((tmp_path / family / "mtk_onnx.json").read_text())["cache"]
        assert cache == {"layers": 2, "kv_heads": 1, "head_dim": 32, "shapes": [[1, 32], [1, 64]], "dtype": "float32"}
        graph = onnx.load(str(tmp_path / family / "model.onnx")).graph
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        assert len(dims) == 3 + 4 and dims["past_key_values.1.value"] == ["batch", 1, "past_sequence", 64]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_sliding_window_through_the_cache(family: str, tmp_path: Path) -> None:
    """A 4-token window over a ~57-token prompt: the exported graph keeps the whole past and masks by position,
    transformers' own sliding cache drops it; the logits must still agree."""
    src = build_tiny_model(family, tmp_path / "src", sliding_window=4)
    m = export_onnx(src, tmp_path / "onnx", check=validate)["validation"]["logits"]
    assert m["positions"] > 20 and m["max_abs"] <= 1e-4 and m["top1"] == 1.0


@pytest.mark.slow
def test_text_generation_without_cache(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    result = export_onnx(
        tiny_models["qwen2"], tmp_path / "onnx", OnnxExportConfig(task="text-generation"), check=validate
    )
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in graph.output] == ["logits"]
    assert result["validation"]["logits"]["max_abs"] <= 1e-4


def test_bert_feature_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _tiny_bert(tmp_path / "bert")
    result = export_onnx(src, tmp_path / "onnx", check=validate)
    assert result["task"] == "feature-extraction"
    manifest = json.loads((tmp_path / "onnx" / "mtk_onnx.json").read_text())
    assert manifest["outputs"] == ["last_hidden_state", "pooler_output"]
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert max(result["validation"]["max_abs"].values()) <= 1e-4
    tok = AutoTokenizer.from_pretrained(tmp_path / "onnx")
    enc = tok(["hello world", "the cat sat on the mat"], padding=True, return_tensors="np")
    session = make_session(tmp_path / "onnx" / "model.onnx")
    hidden = session.run(["last_hidden_state"], {k: enc[k].astype(np.int64) for k in manifest["inputs"]})[0]
    model = AutoModel.from_pretrained(src).eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(enc[k]) for k in manifest["inputs"]}).last_hidden_state.numpy()
    assert hidden.shape == (2, enc["input_ids"].shape[1], 32)
    assert np.abs(hidden[1] - ref[1]).max() <= 1e-4
    _reuse_graph(monkeypatch, tmp_path / "onnx")
    int8 = export_onnx(src, tmp_path / "int8", OnnxExportConfig(quantize="int8"), check=validate)["validation"]
    assert int8["cosine"]["last_hidden_state"] >= 0.999 and int8["conversion"]["max_abs"]["last_hidden_state"] <= 1e-4


def _tiny_bert(out: Path) -> Path:
    """A random 2-layer BertModel (width 32) with a WordPiece tokenizer built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["the", "cat", "sat", "on", "mat", "hello", "world", "a", "dog", "ran", "##s", "##ed", "##ing"]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(out)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    return out


def test_smollm2_greedy_matches_transformers(smollm2_hf: Path, tmp_path: Path) -> None:
    """fp32 onnxruntime greedy decoding gives transformers' greedy tokens for 32 new tokens."""
    out = tmp_path / "smollm2-onnx"
    result = export_onnx(smollm2_hf, out, check=validate)
    assert result["validation"]["logits"]["top1"] == 1.0
    got = generate_text(out, "The capital of France is", max_new_tokens=32)
    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1] :].tolist()
    assert got["new_ids"] == ref, (got["new_ids"], ref)
    assert got["text"].lstrip().startswith("Paris")


def test_llama4_real_rope_patch_matches_transformers_and_is_restored(tiny_models: dict[str, Path]) -> None:
    """Llama 4's tracing patch (complex RoPE as real arithmetic) gives transformers' logits, and both patched
    functions are back after the block, also when it raises."""
    from transformers import AutoModelForCausalLM
    from transformers.models.llama4 import modeling_llama4

    from mtk.converters.families.llama4 import onnx_tracing

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama4"], dtype=torch.float32).eval()
    ids = torch.tensor([[(7 * i) % 900 + 3 for i in range(40)]])
    original = modeling_llama4.apply_rotary_emb
    with torch.no_grad():
        ref = model(ids).logits
        with onnx_tracing(model):
            assert modeling_llama4.apply_rotary_emb is not original
            patched = model(ids).logits
        with pytest.raises(RuntimeError, match="inside"), onnx_tracing(model):
            raise RuntimeError("inside")
        again = model(ids).logits
    assert modeling_llama4.apply_rotary_emb is original and "forward" not in vars(model.model.rotary_emb)
    assert (patched - ref).abs().max() < 1e-5
    assert torch.equal(again, ref)
