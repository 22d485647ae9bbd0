"""K-quant/IQ4 mixes: mtk's per-tensor plan equals llama.cpp's own quantizer tensor for tensor, every mix's
export loads in llama.cpp and agrees with transformers on the file's weights, --dry-run equals the written
file, --tensor-type overrides as llama-quantize's does."""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from conftest import run_mtk
from fixtures_models import MOE, build_tiny_model
from transformers import AutoModelForCausalLM

from mtk.artifacts.gguf import compare_on_prompts, export_check
from mtk.artifacts.hf import logits as hf_logits
from mtk.artifacts.llama_cpp import LlamaCpp
from mtk.converters.gguf_types import FILE_TYPE_NAMES, TypeRules, parse_file_type
from mtk.converters.hf_to_gguf import gguf_export, plan_export
from mtk.formats.gguf_reader import open_gguf
from mtk.kernels import types

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
llama_logger = pytest.importorskip("llama_cpp._logger")
Q = gguf.GGMLQuantizationType
# The file types of the K-quant and IQ4 rows (q2_k, q3_k_s, q3_k_m, ... iq4_xs).
MIXES = [
    name for row in types.rows(writes=True) if row.importance is types.Importance.BUILT_IN for name in row.file_types
]
# Width 256 (whole super-blocks, no fallbacks), 8 query / 2 KV heads (n_gqa 4: the Q2_K and IQ4 attn_v
# rules), a spread of 0.05 (at 0.1 llama.cpp's 8-bit activations alone flip a fifth of the top-1 tokens).
WIDE = {"hidden_size": 256, "intermediate_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2}
WIDE |= {"initializer_range": 0.05}
DRY_RUN_LINE = re.compile(r"\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =[^\n(]*?(?:\((\w+)\))?\n")


def llama_quantize(
    source: Path,
    out: Path | None,
    file_type: str,
    *,
    overrides: list[tuple[str, Q]] | None = None,
    imatrix: dict[str, torch.Tensor] | None = None,
) -> dict[str, str]:
    """llama.cpp's own ``llama_model_quantize`` of ``source`` (the mix, not --pure): tensor name -> type name.

    With ``out`` None it is a dry run and the types are read from its log (llama.cpp prints one line per
    tensor with the type it chose); otherwise they are read from the written file.
    """
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.dry_run = int(parse_file_type(file_type)), 2, out is None
    keep = []  # ctypes arrays must outlive the call
    if overrides:
        items = [llama_cpp.llama_model_tensor_override(p.encode(), int(t)) for p, t in overrides]
        arr = (llama_cpp.llama_model_tensor_override * (len(items) + 1))(*items)
        arr[len(items)].pattern, arr[len(items)].type = None, 39  # terminator (GGML_TYPE_COUNT is ignored)
        params.tt_overrides, keep = arr, [*keep, arr]
    if imatrix:
        values = {n: (ctypes.c_float * v.numel())(*v.reshape(-1).tolist()) for n, v in imatrix.items()}
        entries = [llama_cpp.llama_model_imatrix_data(n.encode(), values[n], len(values[n])) for n in values]
        arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))(*entries)
        params.imatrix, keep = arr, [*keep, arr, values]
    log = io.StringIO()
    # llama-cpp-python's log callback prints to sys.stderr, but only at its logger's level: any earlier
    # Llama(verbose=False) in this process raised it to ERROR, hiding the per-tensor lines of a dry run.
    saved_level = llama_logger.logger.level
    llama_logger.logger.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stderr(log):
            target = str(out) if out is not None else str(source) + ".dry-run"
            assert llama_cpp.llama_model_quantize(str(source).encode(), target.encode(), ctypes.byref(params)) == 0
    finally:
        llama_logger.logger.setLevel(saved_level)
    if out is not None:
        return {t.name: t.qtype.name for t in open_gguf(out).tensors}
    return {m.group(1): (m.group(3) or m.group(2)).upper() for m in DRY_RUN_LINE.finditer(log.getvalue())}


def mtk_plan(source: Path, rules: TypeRules) -> dict[str, str]:
    return {row["name"]: row["type"] for row in plan_export(source, rules=rules)["plan"]}


@pytest.fixture(scope="module")
def deep_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-layer width-256 llama as an F16 GGUF: enough layers for every use_more_bits / n/8 / n/16 rule."""
    root = tmp_path_factory.mktemp("deep")
    src = build_tiny_model("llama", root / "hf", num_hidden_layers=16, **WIDE)
    gguf_export(src, root / "f16.gguf", rules=TypeRules(Q.F16))
    return root / "f16.gguf"


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smol") / "f16.gguf"
    gguf_export(smollm2_hf, out, rules=TypeRules(Q.F16))
    return out


@pytest.fixture(scope="module")
def wide2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer width-256 llama with tied embeddings: small enough to export and verify every mix."""
    root = tmp_path_factory.mktemp("wide2")
    return build_tiny_model("llama", root / "hf", num_hidden_layers=2, tie_word_embeddings=True, **WIDE)


@pytest.fixture(scope="module")
def wide2_f32(wide2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wide2f32") / "f32.gguf"
    gguf_export(wide2, out, rules=TypeRules(Q.F32))
    return out


@pytest.fixture(scope="module")
def wide2_model(wide2: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(wide2, dtype=torch.float32).eval()


def llama_quantize_file(source: Path, out: Path, file_type: str) -> Path:
    llama_quantize(source, out, file_type)
    return out


def test_plan_equals_llama_cpp_quantize_on_a_deep_llama(deep_f16: Path, tmp_path: Path) -> None:
    seen: set[str] = set()
    for mix in MIXES:
        theirs = llama_quantize(deep_f16, tmp_path / f"{mix}.gguf", mix)
        ours = mtk_plan(deep_f16, TypeRules(FILE_TYPE_NAMES[mix]))
        assert ours == theirs, {k: (ours[k], theirs[k]) for k in theirs if ours.get(k) != theirs[k]}
        seen |= {f"{mix}:{n.split('.')[-2]}:{t}" for n, t in ours.items() if n.startswith("blk.")}
        (tmp_path / f"{mix}.gguf").unlink()
    # The rules that vary by layer were reached: Q4_K_M's use_more_bits, Q3_K_M's first attn_v.
    assert {"q4_k_m:ffn_down:Q6_K", "q4_k_m:ffn_down:Q4_K", "q4_k_m:attn_v:Q6_K", "q4_k_m:attn_v:Q4_K"} <= seen
    assert {"q3_k_m:attn_v:Q5_K", "q3_k_m:attn_v:Q4_K", "q2_k:attn_v:Q4_K", "iq4_xs:ffn_down:Q5_K"} <= seen


@pytest.mark.parametrize("mix", MIXES)
def test_plan_equals_llama_cpp_on_smollm2_with_fallbacks(mix: str, smollm2_f16: Path) -> None:
    # Width 576 is not whole 256-blocks: most matrices fall back (Q4_K -> Q5_0, ...); ffn_down (1536) does not.
    theirs = llama_quantize(smollm2_f16, None, mix)
    ours = mtk_plan(smollm2_f16, TypeRules(FILE_TYPE_NAMES[mix]))
    assert len(theirs) == len(ours) == 272
    assert ours == theirs, {k: (ours[k], theirs[k]) for k in theirs if ours.get(k) != theirs[k]}


def test_overrides_and_imatrix_rules_equal_llama_cpp(smollm2_f16: Path, tiny_models: dict[str, Path]) -> None:
    overrides = [("attn_v", Q.Q8_0), (r"blk\.1[0-9]\.ffn_down", Q.Q6_K), ("ffn_up", Q.Q3_K)]
    theirs = llama_quantize(smollm2_f16, None, "q4_k_m", overrides=overrides)
    ours = mtk_plan(smollm2_f16, TypeRules(FILE_TYPE_NAMES["q4_k_m"], overrides=tuple(overrides)))
    assert ours == theirs
    assert theirs["blk.3.attn_v.weight"] == "Q8_0" and theirs["blk.12.ffn_down.weight"] == "Q6_K"
    assert theirs["blk.3.ffn_up.weight"] == "Q4_0"  # Q3_K's fallback for 576 columns
    # With an imatrix llama.cpp moves Q4_0's first ffn_down layers to Q4_1 (the values do not matter).
    fake = {"blk.0.attn_q.weight": torch.ones(576)}
    theirs = llama_quantize(smollm2_f16, None, "q4_0", imatrix=fake)
    ours = mtk_plan(smollm2_f16, TypeRules(FILE_TYPE_NAMES["q4_0"], imatrix=True))
    assert ours == theirs and theirs["blk.2.ffn_down.weight"] == "Q4_1" and theirs["blk.5.ffn_down.weight"] == "Q4_0"


@pytest.mark.parametrize("family", MOE)
def test_moe_plan_equals_llama_cpp(family: str, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Routers stay F32, experts are quantized, and 8-expert models (Mixtral, the tiny Qwen3-MoE) get
    llama.cpp's 8-expert attention rules."""
    f16 = tmp_path / "moe.f16.gguf"
    gguf_export(tiny_models[family], f16, rules=TypeRules(Q.F16))
    for mix in ("q2_k", "q4_k_m"):
        theirs = llama_quantize(f16, None, mix)
        assert mtk_plan(f16, TypeRules(FILE_TYPE_NAMES[mix])) == theirs
        bid = max(int(name.split(".")[1]) for name in theirs if "_exps." in name)  # the last layer has experts
        assert theirs[f"blk.{bid}.ffn_down_exps.weight"] != "F16" and theirs[f"blk.{bid}.ffn_gate_inp.weight"] == "F32"


@pytest.mark.parametrize("mix", MIXES)
def test_every_mix_runs_in_llama_cpp_and_dry_run_equals_the_file(
    mix: str, wide2: Path, wide2_f32: Path, wide2_model: Any, tmp_path: Path
) -> None:
    out = tmp_path / "m.gguf"
    dry = run_mtk("--json", "gguf-export", str(wide2), "--type", mix.upper(), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert not out.exists()
    result = gguf_export(wide2, out, rules=TypeRules(FILE_TYPE_NAMES[mix]), check=export_check(wide2, True))
    v = result["verification"]
    # Conversion: llama.cpp against transformers on the weights the file holds.
    assert v["tokenizer"]["identical"] and v["logits"]["kl_mean"] < 0.005 and v["logits"]["top1"] >= 0.85, v
    # Quality: llama.cpp's own quantization of the same weights, scored the same way, is no better.
    theirs = LlamaCpp(llama_quantize_file(wide2_f32, tmp_path / "llama.gguf", mix))
    try:
        reference = compare_on_prompts(theirs, lambda ids: hf_logits(wide2_model, ids), theirs.logits)
    finally:
        theirs.close()
    assert v["quality"]["kl_mean"] <= reference["kl_mean"] * 1.1 + 1e-5, (v["quality"], reference)
    g = open_gguf(out)
    written = {t.name: (t.qtype.name, list(t.shape), t.nbytes) for t in g.tensors}
    assert written == {r["name"]: (r["type"], r["shape"], r["bytes"]) for r in plan["plan"]}
    assert out.stat().st_size == plan["bytes"] == result["bytes"]
    assert plan["bits_per_weight"] == result["bits_per_weight"]
    assert g.metadata["general.file_type"] == int(FILE_TYPE_NAMES[mix])
    assert {t.qtype for t in g.tensors if len(t.shape) > 1} >= {TypeRules(FILE_TYPE_NAMES[mix]).default}


def test_tensor_type_and_type_names_on_the_cli(tiny_models: dict[str, Path], wide2: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    src = str(tiny_models["llama"])  # width 64: the K types fall back to legacy ones, which encode fast
    args = ["gguf-export", src, "--type", "Q4_K_M", "--no-verify", "-o", str(out)]
    over = ["--tensor-type", r"blk\.0\.attn_q=Q8_0", "--tensor-type", "ATTN_Q=q4_1", "--output-type", "q5_1"]
    assert run_mtk(*args, *over).returncode == 0
    types = {t.name: t.qtype for t in open_gguf(out).tensors}
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["blk.1.attn_q.weight"] == Q.Q4_1
    assert types["output.weight"] == Q.Q5_1 and types["blk.1.attn_k.weight"] == Q.Q5_0  # Q4_K's fallback
    assert open_gguf(out).metadata["general.file_type"] == int(FILE_TYPE_NAMES["q4_k_m"])
    dry = run_mtk("--json", *args[:4], *over, "--tensor-type", "ffn_down=iq4_xs", "--dry-run")
    plan = {r["name"]: r["type"] for r in json.loads(dry.stdout)["plan"]}
    assert plan["blk.0.ffn_down.weight"] == "IQ4_NL"  # IQ4_XS's fallback for 128 columns
    for bad, message in [
        (["--type", "q4_k_x"], "unknown file type"),
        (["--tensor-type", "attn_v"], "REGEX=TYPE"),
        (["--tensor-type", "attn[=q8_0"], "bad regular expression"),
        (["--tensor-type", "attn_v=q9_k"], "unknown tensor type"),
    ]:
        proc = run_mtk("gguf-export", str(wide2), "--dry-run", *bad)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert run_mtk("gguf-export", str(wide2), "--type", "q6_k").returncode == 2  # neither -o nor --dry-run


def test_human_dry_run_prints_a_table_and_writes_nothing(wide2: Path, tmp_path: Path) -> None:
    proc = run_mtk("gguf-export", str(wide2), "--type", "q3_k_m", "--dry-run", "-o", str(tmp_path / "x.gguf"))
    assert proc.returncode == 0, proc.stderr
    assert "blk.0.attn_v.weight" in proc.stdout and "Q5_K" in proc.stdout and "bits/weight" in proc.stdout
    assert list(tmp_path.iterdir()) == []
