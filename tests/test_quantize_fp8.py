"""mtk quantize --method fp8: FP8 e4m3 weights against compressed-tensors' own compressor and transformers' FP8
ops, and checkpoints loaded back by transformers (with compressed-tensors; its fine-grained FP8 quantizer).

The independent sides: compressed-tensors' ``calculate_qparams`` and ``FloatQuantizationCompressor`` (what
llm-compressor runs to write ``FP8_DYNAMIC``/``FP8_BLOCK`` checkpoints) and its ``decompress``; transformers'
``Fp8Quantize``/``Fp8Dequantize`` (what ``FineGrainedFP8Config`` runs to quantize and to dequantize on a CPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_mtk

from mtk.errors import UsageError
from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.engine import check_shape
from mtk.quantizers.formats import FORMATS
from mtk.quantizers.fp8 import FP8_DTYPE, dequantize, fp8_linear

ct = pytest.importorskip("compressed_tensors")

CT_FP8, FINE = FORMATS.get("compressed-tensors-fp8"), FORMATS.get("fp8")


def _weight(out: int = 64, cols: int = 128, seed: int = 0) -> torch.Tensor:
    """Random weights with heavy tails (a few channels 20x larger), one all-zero row and one zero block."""
    torch.manual_seed(seed)
    w = torch.randn(out, cols) * torch.rand(out, 1).pow(4).mul(20).add(0.1)
    w[3] = 0
    w[32:64, 64:96] = 0
    return w.to(torch.bfloat16).float()  # a bf16 checkpoint's values, as SmolLM2's


def _scheme(cfg: QuantizeConfig):  # noqa: ANN202 - a compressed_tensors QuantizationScheme
    from compressed_tensors.quantization import QuantizationScheme

    return QuantizationScheme.model_validate(CT_FP8.quantization_config(cfg)["config_groups"]["group_0"])


def _ct_qparams(w: torch.Tensor, block: int, args) -> torch.Tensor:  # noqa: ANN001 - QuantizationArgs
    """compressed-tensors' scales from the per-channel or per-block min and max (what its observers feed it)."""
    from compressed_tensors.quantization.utils import calculate_qparams

    if block == -1:
        lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    else:
        tiles = w.reshape(w.shape[0] // block, block, w.shape[1] // block, block)
        lo, hi = tiles.amin(dim=(1, 3)), tiles.amax(dim=(1, 3))
    scale, _ = calculate_qparams(lo, hi, args)
    return scale


@pytest.mark.parametrize("block", [-1, 32, 16])
def test_bytes_and_scales_are_compressed_tensors_compressor_output(block: int) -> None:
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor as Float

    w = _weight()
    cfg = QuantizeConfig(method="fp8", group_size=block)
    scheme = _scheme(cfg)
    mine = CT_FP8.pack(fp8_linear(w, block), cfg)
    scale = _ct_qparams(w, block, scheme.weights)
    theirs = Float.compress({"weight": w, "weight_scale": scale}, scheme)
    assert set(mine) == set(theirs) == set(Float.compression_param_names(scheme))
    assert mine["weight"].dtype == theirs["weight"].dtype == FP8_DTYPE
    assert torch.equal(mine["weight"].view(torch.uint8), theirs["weight"].view(torch.uint8))
    assert torch.equal(mine["weight_scale"], theirs["weight_scale"])  # float32 both
    # compressed-tensors' reader gives the weights mtk's decoder gives.
    back = Float.decompress(mine, scheme)["weight"]
    assert torch.equal(back, CT_FP8.unpack(mine, {})) and torch.equal(back, fp8_linear(w, block).dequantize())
    assert (back - w).abs().max() <= w.abs().max() / 16  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("block", [32, 128])
def test_fine_grained_tensors_against_transformers_fp8_ops(block: int) -> None:
    from transformers import FineGrainedFP8Config
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize, Fp8Quantize

    w = _weight(256, 256, seed=1)
    w[128:, :128] = 0  # a whole zero tile at both block sizes
    cfg = QuantizeConfig(method="fp8", format="fp8", group_size=block)
    mine = FINE.pack(fp8_linear(w, block), cfg)
    quantizer = SimpleNamespace(quantization_config=FineGrainedFP8Config(weight_block_size=(block, block)))
    theirs = Fp8Quantize(quantizer)._quantize_one("x.weight", w)
    # Scales: mtk's amax / 448 (DeepSeek's and compressed-tensors' rule), transformers' 1 / (448 / amax): the same
    # to a float32 rounding; blocks of zeros have any scale (mtk eps, transformers 1).
    nonzero = theirs["x.weight_scale_inv"] != 1
    torch.testing.assert_close(
        mine["weight_scale_inv"][nonzero], theirs["x.weight_scale_inv"][nonzero], rtol=2e-7, atol=0
    )
    # Values: dividing by the scale (mtk) and multiplying by its reciprocal (transformers) round apart only at exact
    # midpoints between two e4m3 values (bf16 weights make such ratios common: measured 0.04-0.4% of them), where
    # float32's last bit picks the side; they are one e4m3 step apart.
    a, b = mine["weight"].double(), theirs["x.weight"].double()
    apart = a != b
    assert apart.double().mean() < 0.01
    tiles = w.double().abs().reshape(256 // block, block, 256 // block, block).amax(dim=(1, 3))
    exact = w.double() * 448 / tiles.repeat_interleave(block, 0).repeat_interleave(block, 1)
    torch.testing.assert_close(exact[apart], (a[apart] + b[apart]) / 2, rtol=1e-6, atol=0)
    # transformers' CPU path (dequantize at load time) reads mtk's tensors as mtk's decoder does.
    back = Fp8Dequantize(None)._dequantize_one(mine["weight"], mine["weight_scale_inv"], torch.float32)
    assert torch.equal(back, FINE.unpack(mine, {})) and torch.equal(
        back, dequantize(mine["weight"], mine["weight_scale_inv"])
    )


@pytest.mark.parametrize(("block", "preset"), [(-1, "FP8_DYNAMIC"), (128, "FP8_BLOCK")])
def test_quantization_config_is_compressed_tensors_preset(block: int, preset: str) -> None:
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    mine = CT_FP8.quantization_config(QuantizeConfig(method="fp8", group_size=block))
    parsed = QuantizationConfig.model_validate(mine).config_groups["group_0"]
    expected = PRESET_SCHEMES[preset]
    assert parsed.weights == expected["weights"] and parsed.input_activations == expected["input_activations"]
    assert mine["format"] == "float-quantized"


# --- checkpoints in transformers -------------------------------------------------------------------------

CASES = [("compressed-tensors-fp8", "-1"), ("compressed-tensors-fp8", "32"), ("fp8", "32"), ("fp8", "16")]


@pytest.mark.parametrize(("fmt", "group"), CASES, ids=["-".join(c) for c in CASES])
def test_checkpoints_load_in_transformers(fmt: str, group: str, tiny_models: dict, tmp_path: Path) -> None:
    from mtk.formats.checkpoint import HFCheckpoint

    out = tmp_path / "fp8"
    r = run_mtk("--json", "quantize", str(tiny_models["llama"]), "-o", str(out), "--method", "fp8", "--format", fmt,
                "--group-size", group)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert (result["bits"], result["format"], result["samples"]) == (8, fmt, 0)
    ckpt = HFCheckpoint(out)
    base = "model.layers.1.mlp.down_proj"  # (64, 128)
    scale = f"{base}.weight_scale" if fmt != "fp8" else f"{base}.weight_scale_inv"
    assert ckpt.dtype(f"{base}.weight") == FP8_DTYPE and ckpt.dtype(scale) == torch.float32
    g = int(group)
    assert tuple(ckpt.shape(scale)) == ((64, 1) if g == -1 else (64 // g, 128 // g))
    assert ckpt.dtype("model.layers.1.input_layernorm.weight") == torch.float16
    v = result["verification"]
    # fine-grained FP8 is dequantized at load time; compressed-tensors also rounds each Linear's input to FP8 (per
    # token, or per group of the block size), which the verifier's float model does too: exact either way.
    assert v["logits"]["max_abs"] == 0.0, v
    # 8-bit float weights barely move a tiny model's logits.
    assert v["quality"]["kl_mean"] < 0.01 and v["quality"]["top1"] >= 0.8, v["quality"]


def test_verification_rounds_activations_as_the_runtime(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the activation rounding (a verifier that forgot W8A8) the runtime's logits are measurably off, so the
    exact agreement above is the rounding being the same, not the check being blind; a config without input
    activations (FP8 weights only) is verified without it."""
    import mtk.quantizers.activations as act
    from mtk.artifacts import quantized
    from mtk.errors import VerificationError

    src, out = tiny_models["llama"], tmp_path / "fp8"
    r = run_mtk("quantize", str(src), "-o", str(out), "--method", "fp8", "--group-size", "32")
    assert r.returncode == 0, r.stderr
    with monkeypatch.context() as m:
        m.setattr(act, "fp8_dynamic", lambda group=None: act.unchanged)
        with pytest.raises(VerificationError, match="disagrees with its own weights"):
            quantized.verify(out, src)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = None
    (out / "config.json").write_text(json.dumps(config))
    assert quantized.verify(out, src)["logits"]["max_abs"] == 0.0


def test_bad_combinations_are_refused(tiny_models: dict, tmp_path: Path) -> None:
    bad = (
        ({"method": "fp8", "sym": False}, "symmetric"),
        ({"method": "fp8", "bits": 4}, "bits 8"),
        ({"method": "fp8", "format": "fp8", "group_size": -1}, "block scales only"),
        ({"method": "rtn", "bits": 8, "format": "fp8"}, "use --method fp8"),
        ({"method": "rtn", "bits": 8, "format": "compressed-tensors-fp8"}, "use --method fp8"),
        ({"method": "fp8", "format": "gptq"}, "writes the formats"),
    )
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            QuantizeConfig(**options)
    with pytest.raises(UsageError, match="output width 48 is not a multiple of the FP8 block size 32"):
        check_shape("l.weight", 48, 64, QuantizeConfig(method="fp8", group_size=32))
    check_shape("l.weight", 48, 64, QuantizeConfig(method="fp8"))  # per channel: any width
    r = run_mtk("quantize", str(tiny_models["llama"]), "-o", str(tmp_path / "x"), "--method", "fp8", "--group-size",
                "48")  # fmt: skip
    assert r.returncode == 2 and "not a multiple of group size 48" in r.stderr, r.stderr
    # MoE: no FP8 format's runtime loads per-expert weights back here (README): refused, not a wrong default format
    r = run_mtk("quantize", str(tiny_models["qwen3moe"]), "-o", str(tmp_path / "y"), "--method", "fp8")
    assert r.returncode == 3 and "writes no format whose runtime loads per-expert weights" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())
