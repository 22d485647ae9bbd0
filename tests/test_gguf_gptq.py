"""GPTQ on GGUF's own block grids, on one layer: the code layouts, lower output error than the importance-weighted
encoder for every type, the per-tensor choice, deterministic bytes, and bytes that decode to the weights used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_mtk
from gguf import GGMLQuantizationType
from transformers import AutoModelForCausalLM

from mtk.formats.gguf_reader import open_gguf
from mtk.kernels import codes, types
from mtk.kernels.dequant import dequantize
from mtk.kernels.quantize import quantize
from mtk.quantizers.gguf_calibration import Hessians, hessians_from_checkpoint
from mtk.quantizers.gguf_gptq import gptq_encode, gptq_or_plain, output_error, plain_encode

QT = GGMLQuantizationType
TYPES = [types.get(name).qtype for name in codes.CODE_BYTES]
ROWS, COLS, TOKENS = 48, 512, 2048


def layer(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight (ROWS, COLS), correlated activations' Hessian X^T X and its diagonal's mean (llama-imatrix's
    importance: mean squared activations)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(ROWS, COLS, generator=g) * 0.02
    mix = torch.randn(COLS, COLS, generator=g) / COLS**0.5 + torch.eye(COLS) * 0.5
    x = torch.randn(TOKENS, 64, generator=g) @ torch.randn(64, COLS, generator=g) * 0.3
    x = x + torch.randn(TOKENS, COLS, generator=g) @ mix
    x = x * (torch.rand(COLS, generator=g) * 2 + 0.1)  # columns of different scale, as real activations
    h = x.T @ x
    return w, h, torch.diag(h) / TOKENS


def test_every_block_type_but_mxfp4_has_a_code_layout() -> None:
    blocks = {row.name for row in types.rows(writes=True) if row.block_size > 1}
    assert set(codes.CODE_BYTES) == blocks - {"MXFP4"}


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_code_layout_round_trips(qtype: GGMLQuantizationType) -> None:
    """Reading each value's code back from its sub-block's levels and writing it again gives the encoder's bytes;
    and every position of a sub-block decodes a code as its first position does."""
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    entry, layout = types.get(qtype), codes.code_bytes(qtype)
    blocks = quantize(x, qtype).reshape(-1, entry.type_size)
    grid = codes.levels(blocks, qtype).repeat_interleave(layout.group, dim=1)
    decoded = dequantize(blocks, qtype, (blocks.shape[0], entry.block_size))
    for k in (0, layout.n_codes // 2 + 1, layout.n_codes - 1):
        code = torch.full((blocks.shape[0], entry.block_size), k)
        every = dequantize(codes.with_codes(blocks, code, qtype), qtype, (blocks.shape[0], entry.block_size))
        assert torch.equal(every, grid[..., k])
    hit = grid == decoded[..., None]
    assert bool(hit.any(-1).all()), "a decoded value is none of its position's levels"
    assert torch.equal(codes.with_codes(blocks, hit.int().argmax(-1), qtype), blocks)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_compensation_lowers_output_error(qtype: GGMLQuantizationType) -> None:
    w, h, imp = layer(2)
    use = imp if types.get(qtype).uses_importance else None
    plain = plain_encode(w, qtype, use)
    ours = gptq_encode(w, h, qtype, use)
    ratio = output_error(w, ours.weight, h) / output_error(w, plain.weight, h)
    assert ratio < 0.9, f"{qtype.name}: compensated / plain output error {ratio:.3f}"


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_K, QT.IQ4_XS], ids=lambda t: t.name)
def test_bytes_decode_to_the_weights_and_repeat(qtype: GGMLQuantizationType) -> None:
    w, h, imp = layer(3)
    first = gptq_encode(w, h, qtype, imp)
    again = gptq_encode(w, h, qtype, imp)
    assert torch.equal(first.data, again.data)
    assert torch.equal(dequantize(first.data, qtype, tuple(w.shape)), first.weight)
    assert first.data.shape == quantize(w, qtype, importance=imp).shape


def test_rows_in_chunks_give_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are independent: the chunking that bounds memory does not change a byte."""
    from mtk.quantizers import gguf_gptq

    w, h, imp = layer(4)
    whole = gptq_encode(w, h, QT.Q4_K, imp)
    monkeypatch.setattr(gguf_gptq, "LEVEL_VALUES", 8 * 16 * 5)  # 5 rows a chunk
    assert torch.equal(gptq_encode(w, h, QT.Q4_K, imp).data, whole.data)


def test_choice_keeps_the_lower_error() -> None:
    w, h, imp = layer(5)
    chosen = gptq_or_plain(w, h, QT.Q4_K, imp)
    assert chosen.method == "gptq"
    assert chosen.errors["gptq"] < chosen.errors["importance"]
    # Uncorrelated inputs of one scale: nothing to compensate, so the ordinary encoding is kept.
    flat = gptq_or_plain(w, torch.eye(COLS), QT.Q4_K, torch.ones(COLS))
    assert flat.method == "importance"
    assert flat.errors["gptq"] >= flat.errors["importance"]
    assert torch.equal(flat.encoded.data, quantize(w, QT.Q4_K, importance=torch.ones(COLS)))


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures_models import build_tiny_model
    from test_kquant_export import WIDE

    return build_tiny_model("llama", tmp_path_factory.mktemp("wide") / "hf", num_hidden_layers=2, **WIDE)


@pytest.fixture(scope="module")
def calibration(bible_text: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    half = len(bible_text) // 2
    path.write_text(bible_text[half : half + 60_000], encoding="utf-8")
    return path


@pytest.mark.llama
def test_export_with_calibration_loads_in_llama_cpp(wide: Path, calibration: Path, tmp_path: Path) -> None:
    """gguf-export --calibration: every block matrix reports its choice, the kept bytes are GPTQ's or the plain
    importance-weighted encoder's, and llama.cpp loads the file (the export's own check)."""
    out = tmp_path / "gptq.gguf"
    args = ["--type", "q4_k_m", "--calibration", str(calibration), "--samples", "4", "--seq-len", "64"]
    proc = run_mtk("--json", "gguf-export", str(wide), "-o", str(out), "--verify", *args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    report = result["calibration"]
    assert report["kept"]["gptq"] + report["kept"]["importance"] == 14  # 7 matrices x 2 layers
    assert report["kept"]["gptq"] > 0
    assert "verification" in result  # llama.cpp loaded and ran it (a failed check exits non-zero)
    model = AutoModelForCausalLM.from_pretrained(wide)
    name, w = "blk.0.ffn_gate.weight", model.model.layers[0].mlp.gate_proj.weight.detach()  # not row-permuted
    entry = report["tensors"][name]
    errors = entry["relative_output_error"]
    assert entry["method"] == min(errors, key=lambda k: (errors[k], k != "importance"))
    reader = open_gguf(out)
    ours = reader.tensor_bytes(reader.by_name[name]).reshape(w.shape[0], -1)
    # The plain candidate: the importance of the same activations, as mtk imatrix would have collected it.
    hessians = collect_calibration(wide, calibration)
    imp = hessians.imatrix().importance(name)[0]
    plain = quantize(w, QT.Q4_K, importance=imp)
    assert torch.equal(ours, plain) == (entry["method"] == "importance")
    again = gptq_or_plain(w, hessians.sums[name], QT.Q4_K, imp)
    assert torch.equal(ours, again.encoded.data)


def collect_calibration(model_dir: Path, calibration: Path) -> Hessians:
    return hessians_from_checkpoint(model_dir, calibration, samples=4, seq_len=64, device="cpu")


def test_first_token_weighs_more_in_the_hessian_only() -> None:
    from mtk.quantizers.gguf_calibration import _Accumulator

    x = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(6))
    lin = torch.nn.Linear(8, 4)
    for weight in (1.0, 16.0):
        acc = _Accumulator(weight)
        lin.register_forward_pre_hook(acc)
        lin(x)
        lin._forward_pre_hooks.clear()
        flat, head = x.reshape(-1, 8), x[:, 0]
        assert acc.sum is not None and acc.squares is not None and acc.count == 30
        torch.testing.assert_close(acc.sum, flat.T @ flat + (weight - 1) * head.T @ head)
        torch.testing.assert_close(acc.squares.float(), (flat * flat).sum(0))


def test_calibration_usage_errors(wide: Path, calibration: Path, tmp_path: Path) -> None:
    """A GGUF source (nothing to run), an unknown method and a first-token weight of 0 are usage errors (exit 2)."""
    f32 = tmp_path / "f32.gguf"
    f32.write_bytes(b"GGUF")  # refused before it is read
    out = str(tmp_path / "o.gguf")
    calib = ["--calibration", str(calibration)]
    cases = [
        (str(f32), [*calib], "HF checkpoint folder"),
        (str(wide), [*calib, "--method", "awq"], "calibration method"),
        (str(wide), [*calib, "--first-token-weight", "0"], "must be positive"),
    ]
    for source, args, message in cases:
        proc = run_mtk("gguf-export", source, "-o", out, "--type", "q4_k_m", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, proc.stderr
