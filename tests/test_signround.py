"""SignRound (``--method signround``): its grid starts as RTN's, its tuning lowers a layer's output error below RTN's,
its bytes are deterministic, and its checkpoints load in their formats' runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_mtk

from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.grid import rtn
from mtk.quantizers.signround import signround_layer, tuned_grid


@pytest.mark.parametrize("bits", [4, 3])
def test_untuned_asymmetric_grid_is_rtn(bits: int) -> None:
    """With offsets 0 and coefficients 1 the asymmetric grid is GPTQ's min-max grid (RTN), code for code."""
    torch.manual_seed(bits)
    w = torch.randn(24, 64)
    codes, scale, zero = tuned_grid(w, torch.zeros_like(w), torch.ones(24, 2), torch.ones(24, 2), bits, 32, False)
    q, s, z = rtn(w, bits, 32, False)
    assert torch.equal(codes.reshape(24, 64), q)
    assert torch.equal(scale, s.reshape(-1)) and torch.equal(zero, z.reshape(-1))


def test_untuned_symmetric_grid_uses_the_full_range() -> None:
    """AutoRound's symmetric grid: the larger side of each group is exactly the extra level (code 0, value -8 at 4
    bits), with a negative scale when that side is the positive one."""
    w = torch.tensor([[-1.0, -0.5, 0.25, 0.5] * 8, [1.0, 0.5, -0.25, -0.5] * 8])
    codes, scale, zero = tuned_grid(w, torch.zeros_like(w), torch.ones(2, 1), torch.ones(2, 1), 4, 32, True)
    assert scale.tolist() == [0.125, -0.125] and zero.tolist() == [8.0, 8.0]
    assert codes[0, :4].tolist() == [0.0, 4.0, 10.0, 12.0] and codes[1, :4].tolist() == [0.0, 4.0, 10.0, 12.0]
    back = (scale[:, None] * (codes - zero[:, None])).reshape(w.shape)
    assert torch.equal(back, w)  # these values lie on the grid


def _layer(tiny_models: dict):  # noqa: ANN202 - (layer, names, inputs, kwargs)
    from transformers import AutoModelForCausalLM

    from mtk.converters.family import layer_plan
    from mtk.quantizers.plan import linear_names

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)
    torch.manual_seed(0)
    mix = torch.randn(model.config.hidden_size, model.config.hidden_size)  # correlated hidden channels
    inputs = [torch.randn(1, 24, model.config.hidden_size) @ mix for _ in range(8)]
    pos = torch.arange(24)[None]
    kwargs = {"position_embeddings": model.model.rotary_emb(inputs[0], pos), "position_ids": pos}
    return model.model.layers[0], linear_names(layer_plan("llama")), inputs, kwargs


def test_tuning_lowers_the_layer_output_error_below_rtn(tiny_models: dict) -> None:
    from mtk.quantizers.layerwise import next_inputs

    layer, names, inputs, kwargs = _layer(tiny_models)
    targets = next_inputs(layer, inputs, kwargs, torch.device("cpu"))
    result, losses = signround_layer(
        layer, names, inputs, targets, kwargs, torch.device("cpu"), bits=3, group_size=32, sym=True, iters=40, lr=None,
        batch=4,
    )  # fmt: skip
    # The first step's loss is RTN's (offsets 0, coefficients 1): the kept step is measurably lower.
    assert losses["best_loss"] < 0.8 * losses["first_loss"], losses
    assert set(result) == set(names)
    for name, q in result.items():  # the layer holds exactly the quantized weights
        assert torch.equal(layer.get_submodule(name).weight.data, q.dequantize())
        assert q.codes.min() >= 0 and q.codes.max() <= 7


def test_bytes_are_deterministic_and_load_in_transformers(tiny_models: dict, calibration: Path, tmp_path: Path) -> None:
    outs = []
    for run, fmt in enumerate(("gptq", "gptq", "compressed-tensors")):
        out = tmp_path / f"sr{run}"
        r = run_mtk(
            "--json", "quantize", str(tiny_models["llama"]), "-o", str(out), "--method", "signround", "--group-size",
            "32", "--calibration", str(calibration), "--samples", "8", "--seq-len", "64", "--signround-iters", "20",
            "--format", fmt,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        result = json.loads(r.stdout)
        assert result["verification"]["logits"]["kl_mean"] < 1e-3, result["verification"]  # loads, its own weights
        assert result["verification"]["quality"]["kl_mean"] < 0.15, result["verification"]
        outs.append(out)
    assert (outs[0] / "model.safetensors").read_bytes() == (outs[1] / "model.safetensors").read_bytes()


def test_bad_options_are_refused() -> None:
    bad = (
        ({"method": "signround", "signround_iters": 0}, ">= 1"),
        ({"method": "signround", "signround_lr": 2.0}, r"\[0, 1\]"),
        ({"method": "gptq", "signround_iters": 50}, "option of signround"),
    )
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            QuantizeConfig(**options)
    assert QuantizeConfig(method="signround").options.signround_iters == 200  # AutoRound's default
