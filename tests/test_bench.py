"""mtk bench: a tiny llama as HF (the reference), F32 and Q8_0 GGUFs and an fp32 ONNX folder, measured together
in their real runtimes; figures checked against independent computations in transformers and llama-cpp-python
on the same windows; gates, plot, JSON, cache and refusals.

One CLI run (module fixture ``run``) serves most checks: each artifact is a child process that imports its
runtime, so every extra run costs seconds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_mtk
from fixtures_models import FAMILY_NAMES
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.artifacts.onnx import validate
from mtk.bench.gates import MissingMetric, parse_gate
from mtk.bench.run import ROW_FIELDS, evaluate_gates
from mtk.bench.scoring import Totals, make_windows, score_window
from mtk.converters.gguf_types import TYPE_NAMES, TypeRules
from mtk.converters.hf_to_gguf import gguf_export
from mtk.converters.hf_to_onnx import export_onnx
from mtk.errors import UsageError

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
CTX, WINDOWS = 128, 4


@pytest.fixture(scope="module")
def art(tiny_models: dict[str, Path], bible_text: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    hf = tiny_models["llama"]
    for t in ("f32", "q8_0"):
        gguf_export(hf, root / f"llama.{t}.gguf", rules=TypeRules(TYPE_NAMES[t]))
    export_onnx(hf, root / "llama-onnx", check=validate)
    text = root / "text.txt"
    text.write_text(bible_text[200_000:260_000], encoding="utf-8")
    return {"hf": hf, "f32": root / "llama.f32.gguf", "q8": root / "llama.q8_0.gguf", "onnx": root / "llama-onnx",
            "text": text, "root": root, "cache": root / "cache"}  # fmt: skip


def _bench(art: dict[str, Path], *args: str, json_global: bool = True) -> Any:
    common = ["--text", str(art["text"]), "--ctx", str(CTX), "--windows", str(WINDOWS), "--device", "cpu"]
    return run_mtk(
        *(["--json"] if json_global else []), "bench", *args, *common, env={"MTK_CACHE_DIR": str(art["cache"])}
    )


@pytest.fixture(scope="module")
def run(art: dict[str, Path]) -> dict[str, Any]:
    out = art["root"] / "out"
    proc = _bench(
        art, str(art["f32"]), str(art["hf"]), str(art["q8"]), str(art["onnx"]), "--gen-tokens", "16",
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"), "--fail-if", "kl > 0.05 or top1 < 0.8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {
        "stdout": json.loads(proc.stdout),
        "file": json.loads((out / "bench.json").read_text()),
        "png": out / "bench.png",
    }


def _independent_ppl(logits_of: Any, windows: np.ndarray) -> float:
    """llama-perplexity's convention written out plainly: second half of each window, torch cross-entropy."""
    first, nll, count = CTX // 2, 0.0, 0
    for w in windows:
        logits = torch.as_tensor(np.asarray(logits_of(w.tolist())), dtype=torch.float64)
        target = torch.as_tensor(w[first + 1 :])
        nll += float(torch.nn.functional.cross_entropy(logits[first:-1], target, reduction="sum"))
        count += len(target)
    return math.exp(nll / count)


def test_every_runtime_agrees_with_the_reference(run: dict[str, Any], art: dict[str, Path]) -> None:
    result = run["stdout"]
    rows = {Path(r["path"]).name: r for r in result["artifacts"]}
    ref = result["artifacts"][0]
    assert ref["is_reference"] and ref["kind"] == "hf" and Path(ref["path"]) == art["hf"]  # listed second, runs first
    assert [r["is_reference"] for r in result["artifacts"]].count(True) == 1
    for lossless in (rows["llama.f32.gguf"], rows["llama-onnx"]):
        assert abs(lossless["ppl"] / ref["ppl"] - 1) < 1e-3, lossless
        assert lossless["kl_mean"] < 1e-5 and lossless["top1"] == 1.0, lossless
    q8 = rows["llama.q8_0.gguf"]
    assert 1e-6 < q8["kl_mean"] < 5e-3 and q8["top1"] >= 0.9, q8  # measured: KL 2.2e-4, top-1 0.97
    assert ref["kl_mean"] < 1e-5 and ref["top1"] == 1.0  # against its own float16 cache
    assert result["gates"] == [{"expr": "kl > 0.05 or top1 < 0.8", "failed": []}]


def test_schema_sizes_and_bits_per_weight(run: dict[str, Any], art: dict[str, Path]) -> None:
    result = run["stdout"]
    assert result == run["file"]  # --json OUT.json writes the same object the global --json prints
    assert result["schema"] == "mtk.bench/1" and result["ctx"] == CTX and result["windows"] == WINDOWS
    assert result["scored_per_window"] == CTX - CTX // 2 - 1 and result["text"]["tokens"] >= CTX * WINDOWS
    model = AutoModelForCausalLM.from_pretrained(art["hf"])
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once, like the file
    assert result["reference"]["n_params"] == n_params and result["reference"]["cached"] is False
    expected_size = {
        "llama.f32.gguf": art["f32"].stat().st_size,
        "llama.q8_0.gguf": art["q8"].stat().st_size,
        "llama-onnx": (art["onnx"] / "model.onnx").stat().st_size,
        art["hf"].name: (art["hf"] / "model.safetensors").stat().st_size,
    }
    for row in result["artifacts"]:
        assert set(row) == set(ROW_FIELDS)
        assert row["size_bytes"] == expected_size[Path(row["path"]).name]
        assert row["bpw"] == pytest.approx(row["size_bytes"] * 8 / n_params)
        assert row["vocab"] == model.config.vocab_size
        assert row["load_s"] > 0 and row["prefill_tps"] > 0 and row["decode_tps"] > 0
        assert row["prefill_tps"] == pytest.approx(CTX * WINDOWS / row["prefill_s"])
        assert 20e6 < row["rss_peak_bytes"] < 4e9 and row["vram_peak_bytes"] is None
    rss = {r["kind"]: r["rss_peak_bytes"] for r in result["artifacts"]}
    assert rss["gguf"] < rss["hf"] / 2  # the GGUF child never imports torch: its memory is its own
    assert 30 < [r for r in result["artifacts"] if r["quantization"] == "F32"][0]["bpw"] < 34


def test_plot_is_a_png(run: dict[str, Any]) -> None:
    data = run["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (960, 600)


def test_figures_match_independent_computations(run: dict[str, Any], art: dict[str, Path]) -> None:
    """The same windows scored by hand: transformers for the HF folder, llama-cpp-python for the GGUFs."""
    result = run["stdout"]
    chars = result["text"]["chars"]
    text = art["text"].read_text(encoding="utf-8")[:chars]
    tok = AutoTokenizer.from_pretrained(art["hf"])
    ids = tok(text)["input_ids"]
    assert result["bos_id"] is None and ids == tok(text, add_special_tokens=False)["input_ids"]
    windows = np.array(ids[: CTX * WINDOWS]).reshape(WINDOWS, CTX)
    rows = {Path(r["path"]).name: r for r in result["artifacts"]}
    model = AutoModelForCausalLM.from_pretrained(art["hf"], dtype=torch.float32).eval()
    with torch.inference_mode():
        ppl_hf = _independent_ppl(lambda w: model(torch.tensor([w])).logits[0], windows)
    assert rows[art["hf"].name]["ppl"] == pytest.approx(ppl_hf, rel=1e-6)
    for name in ("llama.f32.gguf", "llama.q8_0.gguf"):
        llm = LlamaCpp(art["root"] / name, n_ctx=CTX)
        try:
            assert llm.tokenize(text, add_bos=True) == ids  # llama.cpp's own ids for the same text
            ppl = _independent_ppl(llm.logits, windows)
        finally:
            llm.close()
        assert rows[name]["ppl"] == pytest.approx(ppl, rel=1e-5), name


def test_bos_windows_follow_llama_perplexity(tiny_models: dict[str, Path], bible_text: str, tmp_path: Path) -> None:
    """A vocabulary that adds BOS (SentencePiece-style mistral): every window starts with BOS, like
    llama-perplexity; a GGUF alone has no reference, so KL is unknown and a KL gate fails closed (exit 5)."""
    gguf = tmp_path / "m.gguf"
    gguf_export(tiny_models["mistral"], gguf, rules=TypeRules(TYPE_NAMES["f32"]))
    text = tmp_path / "t.txt"
    text.write_text(bible_text[:40_000], encoding="utf-8")
    args = ["bench", str(gguf), "--text", str(text), "--ctx", str(CTX), "--windows", "2", "--gen-tokens", "0"]
    proc = run_mtk("--json", *args, "--fail-if", "kl > 0.1", env={"MTK_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 5 and "cannot be evaluated: kl is not known" in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    row = result["artifacts"][0]
    assert result["reference"] is None and row["kl_mean"] is None and row["decode_tps"] is None
    llm = LlamaCpp(gguf, n_ctx=CTX)
    try:
        bos = llm.llm.token_bos()
        ids = llm.tokenize(bible_text[:40_000][: result["text"]["chars"]], add_bos=True)
        assert result["bos_id"] == bos and ids[0] == bos
        windows = np.array(ids[: 2 * CTX]).reshape(2, CTX)
        windows[:, 0] = bos
        assert row["ppl"] == pytest.approx(_independent_ppl(llm.logits, windows), rel=1e-5)
    finally:
        llm.close()


def test_cache_is_reused_and_gates_fail_with_exit_5(run: dict[str, Any], art: dict[str, Path]) -> None:
    first = {Path(r["path"]).name: r for r in run["stdout"]["artifacts"]}
    proc = _bench(art, str(art["hf"]), str(art["q8"]), "--gen-tokens", "0", "--fail-if", "ppl > 0.5 * ref")
    assert proc.returncode == 5, proc.stderr
    assert f"mtk: error: --fail-if 'ppl > 0.5 * ref' holds for {art['hf'].name}, llama.q8_0.gguf" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["reference"]["cached"] is True
    q8 = next(r for r in result["artifacts"] if r["kind"] == "gguf")
    assert q8["kl_mean"] == pytest.approx(first["llama.q8_0.gguf"]["kl_mean"], rel=1e-6)
    assert {f["artifact"] for f in result["gates"][0]["failed"]} == {"llama.q8_0.gguf", art["hf"].name}


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('true')", "ppl.__class__", "ppl ** 2 > 1", "[ppl] == 1", "lambda: 1", "ref > 1",
     "ppl > 'a'", "ppl if 1 else 2", "x > 1", "ppl >", "ref.__dict__ > 1"],
)  # fmt: skip
def test_unsafe_gates_are_usage_errors(expr: str, art: dict[str, Path]) -> None:
    proc = _bench(art, str(art["q8"]), "--fail-if", expr)
    assert proc.returncode == 2 and proc.stderr.startswith("mtk: error: --fail-if"), proc.stderr
    with pytest.raises(UsageError):
        parse_gate(expr)


def test_gate_arithmetic() -> None:
    row = {"ppl": 10.5, "kl_mean": 0.02, "top1": 0.9, "size_bytes": 150e6, "decode_tps": 30.0, "is_reference": False}
    ref = {"ppl": 10.0, "kl_mean": 0.0, "top1": 1.0, "size_bytes": 600e6, "decode_tps": 20.0, "is_reference": True}
    cases = {
        "ppl > 1.04 * ref": True,
        "ppl > 1.06 * ref": False,
        "ppl - ref > 0.4 and size_mb < 0.5 * ref.size_mb": True,
        "10 < ppl <= 10.5": True,
        "not top1 >= 0.95 or kl > 1": True,
        "decode_tps < ref.decode_tps / 2": False,
        "-ppl < -11": False,
    }
    for expr, expected in cases.items():
        assert parse_gate(expr).fails(row, ref) is expected, expr
    with pytest.raises(MissingMetric):
        parse_gate("vram_mb > 100").fails(row, ref)
    with pytest.raises(MissingMetric):
        parse_gate("ppl > ref").fails(row, None)
    failed = evaluate_gates([parse_gate("ppl > 1.04 * ref")], [ref | {"name": "r"}, row | {"name": "a"}])
    assert failed == [{"expr": "ppl > 1.04 * ref", "failed": [{"artifact": "a", "reason": "true"}]}]


def test_scoring_matches_torch() -> None:
    """score_window's NLL, KL and top-1 on random logits against torch's log_softmax and kl_div."""
    gen = torch.Generator().manual_seed(0)
    ctx, vocab = 80, 300  # 39 scored rows: more than one block of scoring.ROWS
    window = torch.randint(0, vocab, (ctx,), generator=gen).numpy()
    ref_logits = torch.randn(ctx, vocab, generator=gen, dtype=torch.float64) * 3
    cand_logits = ref_logits + torch.randn(ctx, vocab, generator=gen, dtype=torch.float64) * 0.5
    first = ctx // 2
    ref_lp = torch.log_softmax(ref_logits[first:-1], -1)
    cand_lp = torch.log_softmax(cand_logits[first:-1], -1)
    totals = Totals()
    score_window(cand_logits.float().numpy(), window, totals, ref_lp.half().numpy(), ref_lp.argmax(-1).numpy())
    summary = totals.summary()
    nll = -cand_lp[torch.arange(ctx - first - 1), torch.as_tensor(window[first + 1 :])].mean()
    kl = torch.nn.functional.kl_div(cand_lp, ref_lp, log_target=True, reduction="none").sum(-1)
    assert totals.tokens == ctx - first - 1
    assert summary["nll_mean"] == pytest.approx(float(nll), rel=1e-5)
    assert summary["kl_mean"] == pytest.approx(float(kl.mean()), rel=2e-2)  # the reference went through float16
    assert summary["top1"] == pytest.approx(float((ref_lp.argmax(-1) == cand_lp.argmax(-1)).double().mean()))
    windows = make_windows(list(range(1000)), 100, 3, bos_id=7)
    assert windows.shape == (3, 100) and list(windows[:, 0]) == [7, 7, 7] and windows[2, 1] == 201
    assert make_windows(list(range(300)), 100, 3, None)[1, 0] == 100
    with pytest.raises(ValueError, match="need 400"):
        make_windows(list(range(300)), 100, 4, None)


def test_refusals(art: dict[str, Path], tiny_models: dict[str, Path], tmp_path: Path) -> None:
    proc = _bench(art, str(art["q8"]), str(tmp_path / "missing.gguf"))
    assert proc.returncode == 4 and "missing.gguf: no such file or folder" in proc.stderr
    (tmp_path / "notes.txt").write_text("hello")
    assert _bench(art, str(tmp_path / "notes.txt")).returncode == 4
    # A SentencePiece-style vocabulary: other ids for the same text (and it adds BOS).
    proc = _bench(art, str(art["hf"]), str(tiny_models["mistral"]))
    assert proc.returncode == 2 and "tokenizes the text differently" in proc.stderr, proc.stderr
    proc = _bench(art, str(art["q8"]), "--reference", str(art["f32"]))
    assert proc.returncode == 2 and "must be an HF folder" in proc.stderr
    proc = run_mtk("bench", str(art["q8"]), "--text", str(art["text"]), "--windows", "0")
    assert proc.returncode == 2 and "--windows must be at least 1" in proc.stderr
    broken = tmp_path / "broken-onnx"  # detected as ONNX, refused by onnxruntime in the child
    shutil.copytree(art["onnx"], broken)
    (broken / "model.onnx").write_bytes(b"not a protobuf")
    proc = _bench(art, str(broken), "--gen-tokens", "0")
    assert proc.returncode == 4 and "onnxruntime cannot load" in proc.stderr, proc.stderr
    (tmp_path / "short.txt").write_text("In the beginning.")
    proc = run_mtk("bench", str(art["q8"]), "--text", str(tmp_path / "short.txt"))
    assert proc.returncode == 2 and "lower --windows or --ctx" in proc.stderr


def test_quantized_folder_labels(tmp_path: Path) -> None:
    """Bits and group size come from GPTQ/AWQ's top-level keys or from compressed-tensors' config group."""
    from mtk.bench.artifacts import detect

    configs = {
        "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 64},
        "awq": {"quant_method": "awq", "w_bit": 4, "q_group_size": 128},
        "ct": {
            "quant_method": "compressed-tensors",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "group_size": 32}}},
        },
    }
    labels = {}
    for name, qc in configs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
        (folder / "model.safetensors").write_bytes(b"")
        labels[name] = detect(folder).quantization
    assert labels == {"gptq": "gptq 4-bit g64", "awq": "awq 4-bit g128", "ct": "compressed-tensors 8-bit g32"}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_benches_as_gguf_against_its_source(
    family: str, tiny_models: dict[str, Path], bible_text: str, tmp_path: Path
) -> None:
    """Each family's F32 GGUF in llama.cpp against its HF source in transformers, on one short window."""
    hf = tiny_models[family]
    gguf_export(hf, tmp_path / "m.gguf", rules=TypeRules(TYPE_NAMES["f32"]))
    text = tmp_path / "text.txt"
    text.write_text(bible_text[300_000:310_000], encoding="utf-8")
    proc = run_mtk(
        "--json", "bench", str(hf), str(tmp_path / "m.gguf"), "--text", str(text), "--ctx", "64", "--windows", "2",
        "--gen-tokens", "4", "--device", "cpu", env={"MTK_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref, gguf_row = json.loads(proc.stdout)["artifacts"]
    assert ref["is_reference"] and gguf_row["kind"] == "gguf"
    assert abs(gguf_row["ppl"] / ref["ppl"] - 1) < 1e-2, (ref, gguf_row)
    assert gguf_row["kl_mean"] < 2e-3 and gguf_row["top1"] >= 0.95, gguf_row
