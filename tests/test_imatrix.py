"""mtk imatrix: llama.cpp's GGUF imatrix format, values equal to a direct computation, read back by mtk and
gguf-py, and used by gguf-export --imatrix as llama.cpp uses it."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch
from conftest import run_mtk
from fixtures_models import MOE, TINY
from test_kquant_export import WIDE, llama_quantize
from transformers import AutoModelForCausalLM, AutoTokenizer

from mtk.artifacts.gguf import export_check
from mtk.converters.family import family_for_hf
from mtk.converters.gguf_types import FILE_TYPE_NAMES, TypeRules
from mtk.converters.hf_to_gguf import gguf_export
from mtk.converters.imatrix import collect_imatrix, read_imatrix
from mtk.errors import InvalidFileError, UsageError
from mtk.formats.gguf_reader import open_gguf
from mtk.kernels.quantize import quantize

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def calibration(bible_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibration text from the second half of the Bible (perplexity tests use its start)."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    half = len(bible_text) // 2
    path.write_text(bible_text[half : half + 60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_models import build_tiny_model

    return build_tiny_model("llama", tmp_path_factory.mktemp("wide") / "hf", num_hidden_layers=2, **WIDE)


def test_values_equal_a_direct_computation_and_round_trip(
    tiny_models: dict[str, Path], calibration: Path, tmp_path: Path
) -> None:
    src = tiny_models["llama"]
    out = tmp_path / "imatrix.gguf"
    proc = run_mtk(
        "--json", "imatrix", str(src), "--calibration", str(calibration), "-o", str(out), "--samples", "3",
        "--seq-len", "40",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["chunks"] == 3 and summary["tokens"] == 120 and summary["tensors"] == 2 * 7
    im = read_imatrix(out)
    assert (im.chunk_count, im.chunk_size, im.datasets) == (3, 40, ["calib.txt"])
    assert all(float(c) == 120.0 for c in im.counts.values())
    # Direct: the attention projections read input_layernorm(hidden state entering the layer).
    from mtk.converters.calibration import load_calibration

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    windows = load_calibration(calibration, AutoTokenizer.from_pretrained(src), 3, 40)
    expected = torch.zeros(2, 64, dtype=torch.float64)
    with torch.inference_mode():
        for ids in windows:
            states = model(ids[None], output_hidden_states=True).hidden_states
            for layer in range(2):
                x = model.model.layers[layer].input_layernorm(states[layer])[0].double()
                expected[layer] += (x * x).sum(0)
    for layer in range(2):
        for proj in ("attn_q", "attn_k", "attn_v"):
            got = im.sums[f"blk.{layer}.{proj}.weight"][0].double()
            torch.testing.assert_close(got, expected[layer], rtol=1e-5, atol=0)
        # gate and up read the same input; the attention output reads another one.
        assert torch.equal(im.sums[f"blk.{layer}.ffn_gate.weight"], im.sums[f"blk.{layer}.ffn_up.weight"])
        assert not torch.allclose(im.sums[f"blk.{layer}.attn_output.weight"], im.sums[f"blk.{layer}.attn_q.weight"])
        assert im.sums[f"blk.{layer}.ffn_down.weight"].shape == (1, 128)
    # In memory equals the file, and the importance is sums / counts.
    again = collect_imatrix(model, family_for_hf("LlamaForCausalLM"), windows)
    for name in again.sums:
        torch.testing.assert_close(again.sums[name], im.sums[name], rtol=1e-6, atol=0)
    torch.testing.assert_close(im.importance("blk.1.attn_q.weight")[0], im.sums["blk.1.attn_q.weight"][0] / 120)


def test_file_layout_is_llama_cpps(tiny_models: dict[str, Path], calibration: Path, tmp_path: Path) -> None:
    out = tmp_path / "imatrix.gguf"
    args = ["--calibration", str(calibration), "-o", str(out), "--samples", "2", "--seq-len", "32"]
    assert run_mtk("imatrix", str(tiny_models["qwen3"]), *args).returncode == 0
    reader = gguf.GGUFReader(out)  # gguf-py's reader, independent of mtk's
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields == {
        "general.type": "imatrix",
        "imatrix.datasets": ["calib.txt"],
        "imatrix.chunk_count": 2,
        "imatrix.chunk_size": 32,
    }
    assert reader.fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    names = [t.name for t in reader.tensors]
    # llama.cpp's order: matrices sorted by name, each as in_sum2 then counts.
    bases = sorted({n.rsplit(".", 1)[0] for n in names})
    assert names == [f"{b}.{s}" for b in bases for s in ("in_sum2", "counts")] and len(bases) == 14
    by_name = {t.name: t for t in reader.tensors}
    assert list(by_name["blk.0.ffn_down.weight.in_sum2"].shape) == [128]  # ne (cols,): one matrix
    assert list(by_name["blk.0.ffn_down.weight.counts"].shape) == [1]
    assert by_name["blk.0.attn_q.weight.in_sum2"].tensor_type == Q.F32
    again = run_mtk("imatrix", str(tiny_models["qwen3"]), *args)
    assert again.returncode == 7 and "--overwrite" in again.stderr


def test_export_uses_the_imatrix_as_llama_cpp_does(wide: Path, calibration: Path, tmp_path: Path) -> None:
    im_path = tmp_path / "imatrix.gguf"
    args = ["--calibration", str(calibration), "-o", str(im_path), "--samples", "4", "--seq-len", "64"]
    assert run_mtk("imatrix", str(wide), *args).returncode == 0
    im = read_imatrix(im_path)
    rules = TypeRules(FILE_TYPE_NAMES["q4_k_m"], imatrix=True)
    result = gguf_export(wide, tmp_path / "with.gguf", rules=rules, imatrix=im, check=export_check(wide, True))
    assert result["imatrix"] == {"tensors_used": 14, "missing": []}  # 7 matrices x 2 layers
    plain = gguf_export(wide, tmp_path / "without.gguf", rules=TypeRules(FILE_TYPE_NAMES["q4_k_m"]))
    with_, without = open_gguf(tmp_path / "with.gguf"), open_gguf(tmp_path / "without.gguf")
    name = "blk.0.ffn_gate.weight"  # Q4_K, and not row-permuted: its bytes are the encoder's output
    w = AutoModelForCausalLM.from_pretrained(wide).model.layers[0].mlp.gate_proj.weight.detach()
    expected = quantize(w, Q.Q4_K, importance=im.sums[name][0] / im.counts[name][0])
    ours = with_.tensor_bytes(with_.by_name[name])
    assert torch.equal(ours, expected.reshape(-1))
    assert not torch.equal(ours, without.tensor_bytes(without.by_name[name]))
    assert plain["bytes"] == result["bytes"]
    # llama.cpp's own Q4_K_M of the same weights with the same imatrix: (nearly) the same blocks.
    f32 = tmp_path / "f32.gguf"
    gguf_export(wide, f32, rules=TypeRules(Q.F32))
    values = {n: im.importance(n).reshape(-1) for n in im.sums}
    llama_quantize(f32, tmp_path / "llama.gguf", "q4_k_m", imatrix=values)
    theirs = open_gguf(tmp_path / "llama.gguf")
    blocks = ours.reshape(-1, 144), theirs.tensor_bytes(theirs.by_name[name]).reshape(-1, 144)
    same = (blocks[0] == blocks[1]).all(1).float().mean()
    assert same > 0.9, float(same)


def test_bad_inputs_fail_with_one_line_and_their_exit_codes(
    tiny_models: dict[str, Path], calibration: Path, tmp_path: Path, wide: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    short = tmp_path / "short.txt"
    short.write_text("In the beginning.", encoding="utf-8")
    src = str(tiny_models["llama"])
    out = str(tmp_path / "i.gguf")
    cases = [
        ([src, "--calibration", str(empty)], UsageError, "empty"),
        ([src, "--calibration", str(short), "--seq-len", "64"], UsageError, "fewer than one"),
        ([src, "--calibration", str(tmp_path / "nope.txt")], UsageError, "not found"),
    ]
    for args, error, message in cases:
        proc = run_mtk("imatrix", *args, "-o", out)
        assert proc.returncode == error.exit_code and message in proc.stderr, proc.stderr
    assert not Path(out).exists()
    # An imatrix for another model, or a file that is no imatrix, is refused by gguf-export.
    im = tmp_path / "small.imatrix.gguf"
    assert run_mtk("imatrix", src, "--calibration", str(calibration), "-o", str(im), "--samples", "1").returncode == 0
    for bad in (im, tmp_path / "model.gguf"):
        if bad.name == "model.gguf":
            gguf_export(src, bad, rules=TypeRules(Q.F16))
        proc = run_mtk(
            "gguf-export", str(wide), "-o", str(tmp_path / "x.gguf"), "--type", "q4_k_m", "--imatrix", str(bad)
        )
        assert proc.returncode == InvalidFileError.exit_code, proc.stderr


@pytest.mark.parametrize("family", MOE)
def test_every_moe_family_collects_its_router_and_each_expert(
    family: str, tiny_models: dict[str, Path], calibration: Path, tmp_path: Path
) -> None:
    """transformers 5 runs every MoE family with fused experts (Mixtral's router renamed too): the imatrix still
    names llama.cpp's router and expert tensors, one row and one count per expert, top-k counts per token."""
    config = {**TINY[family].config}
    experts = next(config[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if k in config)
    out = tmp_path / "moe.imatrix.gguf"
    args = ["--calibration", str(calibration), "-o", str(out), "--samples", "2", "--seq-len", "48"]
    assert run_mtk("imatrix", str(tiny_models[family]), *args).returncode == 0
    im = read_imatrix(out)
    # The MoE layers (DeepSeek's and GLM-4.5's first ones are dense).
    moe_layers = sorted({int(name.split(".")[1]) for name in im.sums if "_exps." in name})
    assert moe_layers and moe_layers[-1] == config.get("num_hidden_layers", 2) - 1
    for layer in moe_layers:
        assert im.sums[f"blk.{layer}.ffn_gate_inp.weight"].shape == (1, 64)
        assert im.sums[f"blk.{layer}.ffn_up_exps.weight"].shape == (experts, 64)
        counts = im.counts[f"blk.{layer}.ffn_down_exps.weight"]
        assert counts.shape == (experts,) and float(counts.sum()) == config["num_experts_per_tok"] * 96


def test_experts_are_accounted_per_expert_and_used(
    tiny_models: dict[str, Path], calibration: Path, tmp_path: Path
) -> None:
    src = tiny_models["qwen2moe"]  # 4 experts, 2 per token, and a shared expert that sees every token
    out = tmp_path / "moe.imatrix.gguf"
    args = ["--calibration", str(calibration), "-o", str(out), "--samples", "2", "--seq-len", "48"]
    assert run_mtk("imatrix", str(src), *args).returncode == 0
    im = read_imatrix(out)
    for layer in range(2):
        gate, shared = im.sums[f"blk.{layer}.ffn_gate_exps.weight"], im.sums[f"blk.{layer}.ffn_gate_shexp.weight"]
        counts = im.counts[f"blk.{layer}.ffn_gate_exps.weight"]
        assert gate.shape == (4, 64) and im.sums[f"blk.{layer}.ffn_down_exps.weight"].shape == (4, 32)
        # Each token adds its x*x to the 2 experts it picks: over experts, twice the shared expert's sums.
        assert float(counts.sum()) == 2 * 96 and float(im.counts[f"blk.{layer}.ffn_gate_shexp.weight"][0]) == 96
        torch.testing.assert_close(gate.sum(0), 2 * shared[0], rtol=1e-5, atol=1e-6)
        assert torch.equal(gate, im.sums[f"blk.{layer}.ffn_up_exps.weight"])
        assert f"blk.{layer}.ffn_gate_inp.weight" in im.sums  # the router, as llama-imatrix collects it
    reader = gguf.GGUFReader(out)
    shapes = {t.name: list(t.shape) for t in reader.tensors}
    assert shapes["blk.0.ffn_down_exps.weight.in_sum2"] == [32, 4] and shapes["blk.0.ffn_down_exps.weight.counts"] == [
        1,
        4,
    ]
    # IQ4_NL (32-value blocks) fits the tiny experts: the export uses each expert's row and runs in llama.cpp.
    result = gguf_export(
        src, tmp_path / "m.gguf", rules=TypeRules(FILE_TYPE_NAMES["iq4_nl"]), imatrix=im, check=export_check(src, True)
    )
    assert "blk.0.ffn_down_exps.weight" not in result["imatrix"]["missing"] and result["imatrix"]["tensors_used"] > 6


def test_llama4_is_refused_with_exit_3(tiny_models: dict[str, Path], calibration: Path, tmp_path: Path) -> None:
    """Llama 4's experts take router-scaled copies of every token, which mtk imatrix does not account yet: exit 3
    with one line, nothing written."""
    out = tmp_path / "m.imatrix.gguf"
    r = run_mtk("imatrix", str(tiny_models["llama4"]), "--calibration", str(calibration), "-o", str(out))
    assert r.returncode == 3 and "router-scaled" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
