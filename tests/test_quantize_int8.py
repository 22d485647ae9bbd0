"""INT8 W8A8: the compressed-tensors ``int-quantized`` format against compressed-tensors' own compressor, SmoothQuant's
smoothing (exact in float, lower W8A8 error where activations have outlier channels), and checkpoints loaded back by
transformers with compressed-tensors, which quantizes each Linear's input to int8 per token as vLLM does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_mtk

from mtk.quantizers.activations import int8_dynamic
from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.formats import FORMATS
from mtk.quantizers.linear import round_to_nearest
from mtk.quantizers.smoothquant import smoothing_scales

ct = pytest.importorskip("compressed_tensors")

INT8 = FORMATS.get("compressed-tensors-int8")
W8A8 = "compressed-tensors-int8"


def _scheme(cfg: QuantizeConfig):  # noqa: ANN202 - a compressed_tensors QuantizationScheme
    from compressed_tensors.quantization import QuantizationScheme

    return QuantizationScheme.model_validate(INT8.quantization_config(cfg)["config_groups"]["group_0"])


def test_bytes_and_scales_are_compressed_tensors_compressor_output() -> None:
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor as Int
    from compressed_tensors.quantization.utils import calculate_qparams

    torch.manual_seed(0)
    w = (torch.randn(48, 96) * torch.rand(48, 1).pow(3).mul(10).add(0.05)).to(torch.bfloat16).float()
    w[5] = 0
    cfg = QuantizeConfig(method="rtn", bits=8, group_size=-1, format=W8A8)
    scheme = _scheme(cfg)
    mine = INT8.pack(round_to_nearest(w, 8, -1, True), cfg)
    scale, _ = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), scheme.weights)
    theirs = Int.compress({"weight": w, "weight_scale": scale}, scheme)
    assert set(mine) == set(theirs) == set(Int.compression_param_names(scheme))
    assert mine["weight"].dtype == theirs["weight"].dtype == torch.int8
    assert torch.equal(mine["weight"], theirs["weight"])
    nonzero = w.abs().amax(dim=1) > 0  # an all-zero row: any scale (mtk's grid takes 2/255, compressed-tensors eps)
    assert torch.equal(mine["weight_scale"][nonzero], theirs["weight_scale"][nonzero])
    back = Int.decompress(mine, scheme)["weight"]
    assert torch.equal(back, INT8.unpack(mine, {}))


def test_quantization_config_is_the_w8a8_preset() -> None:
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    mine = INT8.quantization_config(QuantizeConfig(method="smoothquant"))
    parsed = QuantizationConfig.model_validate(mine).config_groups["group_0"]
    expected = PRESET_SCHEMES["W8A8"]
    assert parsed.weights == expected["weights"] and parsed.input_activations == expected["input_activations"]
    assert mine["format"] == "int-quantized"


def test_dynamic_activation_rounding_is_compressed_tensors() -> None:
    """mtk's per-token int8 rounding (what the verifier applies) against compressed-tensors' forward."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    torch.manual_seed(1)
    x = torch.randn(3, 7, 64) * torch.rand(64).pow(4).mul(30)
    args = _scheme(QuantizeConfig(method="smoothquant")).input_activations
    scale, zero = calculate_qparams(x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True), args)
    assert torch.equal(int8_dynamic()(x), fake_quantize(x, scale, zero, args))


def _w8a8_error(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> float:
    """Output error of int8-per-token inputs ``x / s`` times int8-per-channel weights ``w * s``, against ``x w^T``."""
    q = round_to_nearest(w * s, 8, -1, True).dequantize()
    return float((int8_dynamic()(x / s) @ q.t() - x @ w.t()).pow(2).mean())


def test_smoothing_lowers_the_w8a8_error_on_outlier_channels() -> None:
    torch.manual_seed(2)
    x = torch.randn(256, 128)
    x[:, [3, 40, 77]] *= 60  # a few outlier channels, as the paper's LLM activations
    w = torch.randn(96, 128) * 0.05
    plain = _w8a8_error(x, w, torch.ones(128))
    errors = {a: _w8a8_error(x, w, smoothing_scales(x.abs().amax(dim=0), [w], a)) for a in (0.3, 0.5, 0.8)}
    assert all(e < plain for e in errors.values()), (plain, errors)
    assert errors[0.5] < plain / 4, (plain, errors)  # measured 11.2x lower


def test_smoothing_leaves_the_float_layer_unchanged(tiny_models: dict) -> None:
    from transformers import AutoModelForCausalLM

    from mtk.converters.family import layer_plan
    from mtk.quantizers.smoothquant import smooth_layer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float64)
    layer, plan = model.model.layers[0], layer_plan("llama")
    torch.manual_seed(3)
    x = torch.randn(1, 9, model.config.hidden_size, dtype=torch.float64)
    pos = torch.arange(9)[None]
    emb = model.model.rotary_emb(x, pos)
    before = layer(x, position_embeddings=emb, position_ids=pos)
    x_max = {"self_attn.q_proj": torch.rand(x.shape[-1], dtype=torch.float64) * 10, "mlp.gate_proj": None}
    x_max["mlp.gate_proj"] = torch.rand(x.shape[-1], dtype=torch.float64) * 10
    done = smooth_layer(layer, plan, x_max, 0.5)
    assert set(done) == {"input_layernorm", "post_attention_layernorm"}  # norms only: not v -> o, not up -> down
    after = layer(x, position_embeddings=emb, position_ids=pos)
    torch.testing.assert_close(after, before)


# --- checkpoints in transformers -------------------------------------------------------------------------

CASES = [("smoothquant", "llama"), ("smoothquant", "qwen2"), ("rtn", "llama"), ("gptq", "llama")]


@pytest.mark.parametrize(("method", "family"), CASES, ids=["-".join(c) for c in CASES])
def test_checkpoints_load_in_transformers(
    method: str, family: str, tiny_models: dict, calibration: Path, tmp_path: Path
) -> None:
    from mtk.formats.checkpoint import HFCheckpoint

    out = tmp_path / "w8a8"
    args = ["--json", "quantize", str(tiny_models[family]), "-o", str(out), "--method", method, "--format", W8A8]
    if method != "rtn":
        args += ["--calibration", str(calibration), "--samples", "8", "--seq-len", "64"]
    if method != "smoothquant":  # their defaults are 4-bit groups
        args += ["--bits", "8", "--group-size", "-1"]
    r = run_mtk(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    ckpt = HFCheckpoint(out)
    base = "model.layers.1.mlp.down_proj"
    assert ckpt.dtype(f"{base}.weight") == torch.int8 and tuple(ckpt.shape(f"{base}.weight_scale")) == (64, 1)
    v = result["verification"]
    # The runtime rounds each Linear input to int8 per token; so does the verifier's float model: exact.
    assert v["logits"]["kl_mean"] < 1e-6 and v["logits"]["top1"] == 1.0, v
    assert v["quality"]["kl_mean"] < 0.01 and v["quality"]["top1"] >= 0.85, v["quality"]
    if method == "smoothquant":  # the norms changed by exactly what the Linears' columns took
        src = HFCheckpoint(tiny_models[family])
        norm = "model.layers.0.input_layernorm.weight"
        assert not torch.equal(ckpt.get(norm).float(), src.get(norm).float().half().float())


def test_bad_combinations_are_refused(tiny_models: dict, calibration: Path, tmp_path: Path) -> None:
    bad = (
        ({"method": "smoothquant", "format": "gptq"}, "writes the formats"),
        ({"method": "smoothquant", "smoothing_strength": 1.5}, r"\[0, 1\]"),
        ({"method": "rtn", "smoothing_strength": 0.8}, "option of smoothquant"),
        ({"method": "rtn", "bits": 8, "group_size": -1, "sym": False, "format": W8A8}, "symmetric"),
        ({"method": "rtn", "bits": 8, "group_size": 64, "format": W8A8}, "group sizes -1"),
        ({"method": "rtn", "bits": 4, "group_size": -1, "format": W8A8}, "8 bits"),
    )
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            QuantizeConfig(**options)
    r = run_mtk("quantize", str(tiny_models["llama"]), "-o", str(tmp_path / "x"), "--method", "smoothquant")
    assert r.returncode == 2 and "needs --calibration" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())
