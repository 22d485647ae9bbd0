"""mtk quantize --format compressed-tensors: the pack-quantized layout against compressed-tensors' own writer and
reader, and checkpoints loaded back by transformers + compressed-tensors.

compressed-tensors is the independent side here: its ``pack_to_int32``/``PackedQuantizationCompressor`` write and
read the same tensors mtk does, so agreement bit for bit means mtk holds the format's facts, not its own guesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_mtk

from mtk.errors import UsageError, VerificationError
from mtk.quantizers.compressed import pack_compressed, pack_rows, unpack_compressed, unpack_rows
from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.engine import check_shape, quantize
from mtk.quantizers.formats.compressed_tensors import quantization_config
from mtk.quantizers.grid import rtn
from mtk.quantizers.linear import QuantizedLinear

ct = pytest.importorskip("compressed_tensors")

CT = "compressed-tensors"


def _scheme(cfg: QuantizeConfig):  # noqa: ANN202 - a compressed_tensors QuantizationScheme
    from compressed_tensors.quantization import QuantizationScheme

    return QuantizationScheme.model_validate(quantization_config(cfg)["config_groups"]["group_0"])


def _quantized(out: int, cols: int, bits: int, group_size: int, sym: bool) -> QuantizedLinear:
    torch.manual_seed(bits + group_size)
    codes, scale, zero = rtn(torch.randn(out, cols), bits, group_size, sym)
    gs = cols if group_size == -1 else group_size
    return QuantizedLinear(codes, scale, zero, (torch.arange(cols) // gs).to(torch.int32))


# --- the layout against compressed-tensors' own code -----------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [32, 96, 40])  # 40: not a multiple of 32 (padded, cut after the last used word)
def test_packed_rows_are_compressed_tensors_words(bits: int, n: int) -> None:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    values = torch.randint(0, 1 << bits, (n, 6))
    packed = pack_rows(values, bits)
    assert packed.dtype == torch.int32 and packed.shape == (-(-n * bits // 32), 6)
    assert torch.equal(unpack_rows(packed, n, bits), values)
    # compressed-tensors packs signed values plus 2**(bits-1): mtk's unsigned values are those stored words.
    signed = (values - (1 << (bits - 1))).to(torch.int8)
    assert torch.equal(pack_to_int32(signed, bits, packed_dim=0), packed)
    assert torch.equal(pack_to_int32(signed.t().contiguous(), bits, packed_dim=1), packed.t().contiguous())
    assert torch.equal(unpack_from_int32(packed, bits, torch.Size((n, 6)), packed_dim=0), signed)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_compressed_tensors_writes_and_reads_what_mtk_does(bits: int, group_size: int, sym: bool) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor as Packed

    q = _quantized(64, 128, bits, group_size, sym)
    cfg = QuantizeConfig(method="rtn", bits=bits, group_size=group_size, sym=sym, format=CT)
    scheme = _scheme(cfg)
    mine = pack_compressed(q.codes, q.scale, q.zero, q.g_idx, bits, sym)
    assert set(mine) == set(Packed.compression_param_names(scheme))
    expect = (q.scale.half().float()[:, q.g_idx.long()] * (q.codes - q.zero[:, q.g_idx.long()])).half()
    # Its reader, on mtk's tensors (it dequantizes in the scale's dtype, float16, as mtk's float32 result rounds).
    theirs = Packed.decompress(dict(mine), scheme)["weight"]
    assert theirs.dtype == torch.float16 and torch.equal(theirs, expect)
    assert torch.equal(unpack_compressed(mine, bits).half(), expect)
    # Its writer, given mtk's grid (signed zero points) and the weights that grid holds, writes the same words.
    state = {"weight": q.dequantize(), "weight_scale": q.scale}
    if not sym:
        state["weight_zero_point"] = (q.zero - (1 << (bits - 1))).to(torch.int8)
    written = Packed.compress(state, scheme)
    assert torch.equal(written["weight_packed"], mine["weight_packed"])
    assert torch.equal(written["weight_shape"], mine["weight_shape"])
    if not sym:
        assert torch.equal(written["weight_zero_point"], mine["weight_zero_point"])


@pytest.mark.parametrize(
    "cfg",
    [
        QuantizeConfig(method="rtn", bits=4, group_size=128, format=CT),
        QuantizeConfig(method="gptq", bits=8, group_size=-1, sym=False, format=CT),
        QuantizeConfig(method="gptq", bits=4, desc_act=True, static_groups=True, format=CT),
    ],
    ids=["w4a16-g128", "w8a16-channel-asym", "actorder-weight"],
)
def test_quantization_config_is_what_compressed_tensors_serialises(cfg: QuantizeConfig) -> None:
    from compressed_tensors.quantization import QuantizationConfig

    mine = quantization_config(cfg)
    parsed = QuantizationConfig.model_validate(mine)
    dumped = json.loads(json.dumps(parsed.model_dump()))  # enums and dtypes as llm-compressor writes them
    dumped.pop("moe_sparsity_config")
    assert {k: mine[k] for k in dumped} == dumped
    weights = parsed.config_groups["group_0"].weights
    assert (weights.num_bits, weights.symmetric) == (cfg.bits, cfg.sym)
    assert weights.strategy == ("channel" if cfg.group_size == -1 else "group")
    assert weights.actorder == ("weight" if cfg.desc_act else None)


# --- checkpoints in transformers -------------------------------------------------------------------------


def _run(src: Path, out: Path, calibration: Path, *options: str) -> dict:
    r = run_mtk(
        "--json", "quantize", str(src), "-o", str(out), "--format", CT, "--calibration", str(calibration),
        "--samples", "8", "--seq-len", "64", *options,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


CASES = [
    # family, method, bits, group size, symmetric
    ("llama", "rtn", 4, "32", "--sym"),
    ("llama", "rtn", 4, "32", "--no-sym"),
    # compressed-tensors decompresses to float Linears: groups GPTQModel's int4 kernel refuses load here
    ("llama", "rtn", 4, "16", "--no-sym"),
    ("llama", "gptq", 4, "32", "--sym"),
    ("llama", "gptq", 4, "32", "--no-sym"),
    ("llama", "rtn", 8, "-1", "--sym"),
    ("llama", "gptq", 8, "-1", "--no-sym"),
    ("phi3", "gptq", 4, "32", "--sym"),
    ("phi3", "rtn", 8, "-1", "--no-sym"),
    ("qwen2", "awq", 4, "32", "--no-sym"),
]


@pytest.mark.parametrize(
    ("family", "method", "bits", "group", "sym"), CASES, ids=["-".join(map(str, c)) for c in CASES]
)
def test_checkpoints_load_in_transformers(
    family: str, method: str, bits: int, group: str, sym: str, tiny_models: dict, calibration: Path, tmp_path: Path
) -> None:
    from mtk.formats.checkpoint import HFCheckpoint

    out = tmp_path / "ct"
    result = _run(
        tiny_models[family], out, calibration, "--method", method, "--bits", str(bits), "--group-size", group, sym
    )
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["format"], qc["quantization_status"]) == (CT, "pack-quantized", "compressed")
    assert not (out / "quantize_config.json").exists()
    ckpt = HFCheckpoint(out)
    base = "model.layers.1.mlp.down_proj"
    assert ckpt.get(f"{base}.weight_shape").tolist() == [64, 128] and f"{base}.weight" not in ckpt
    assert ckpt.dtype(f"{base}.weight_packed") == torch.int32 and ckpt.dtype(f"{base}.weight_scale") == torch.float16
    assert (f"{base}.weight_zero_point" in ckpt) == (sym == "--no-sym")
    v = result["verification"]
    # compressed-tensors' decompression computes what the files define: exactly (symmetric: float32 scales) or
    # up to float16 rounding of the weights (asymmetric: dequantized at load time in the checkpoint's dtype).
    if sym == "--sym":
        assert v["logits"]["max_abs"] == 0.0, v
    # (float16 weights can flip a near-tie of a tiny model's flat logits: measured 1 position in 101)
    assert v["logits"]["kl_mean"] < 1e-5 and v["logits"]["top1"] >= 0.95, v
    quality = v["quality"]
    if bits == 8:
        assert quality["kl_mean"] < 1e-3 and quality["top1"] >= 0.9, quality
    else:
        # Tiny random models have flat logits, so 4 bits move them visibly (as in test_quantize); a wrong
        # layout or config gives KL > 1.
        assert quality["kl_mean"] < 0.15 and quality["top1"] >= 0.4, quality


def test_verification_catches_a_layout_mtk_and_the_runtime_disagree_on(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtk.quantizers.compressed as layout
    from mtk.artifacts import quantized as check

    src, out = tiny_models["llama"], tmp_path / "ct"
    quantize(src, out, QuantizeConfig(method="rtn", bits=4, group_size=32, format=CT), device="cpu")
    assert check.verify(out, src)["logits"]["max_abs"] == 0.0
    # Reading the words of each row in reverse (a plausible layout bug) must not pass.
    real = layout.unpack_compressed
    flipped = lambda t, bits: real({**t, "weight_packed": t["weight_packed"].flip(1)}, bits)  # noqa: E731
    monkeypatch.setattr(layout, "unpack_compressed", flipped)
    with pytest.raises(VerificationError, match="disagrees with its own weights"):
        check.verify(out, src)


# --- what the format cannot hold -------------------------------------------------------------------------


def test_bad_combinations_are_refused() -> None:
    bad = (
        ({"bits": 3}, "4 or 8 bits"),
        ({"bits": 2, "method": "rtn"}, "4 or 8 bits"),
        ({"desc_act": True}, "no g_idx"),
        ({"method": "awq", "sym": True}, "zero point"),
    )
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            QuantizeConfig(**options, format=CT)
    asym = QuantizeConfig(method="rtn", bits=4, group_size=-1, sym=False, format=CT)
    with pytest.raises(UsageError, match="divisible by 8"):
        check_shape("l.weight", 36, 64, asym)  # zero points pack 8 output rows per word
    check_shape("l.weight", 36, 64, QuantizeConfig(method="rtn", bits=4, group_size=-1, format=CT))
    with pytest.raises(UsageError, match="divisible by 4"):
        check_shape("l.weight", 64, 66, QuantizeConfig(method="rtn", bits=8, group_size=-1, format=CT))
    q = _quantized(32, 64, 4, 32, sym=True)
    with pytest.raises(ValueError, match="g_idx"):
        pack_compressed(q.codes, q.scale, q.zero, q.g_idx.flip(0), 4, True)
    with pytest.raises(ValueError, match="zero point"):
        pack_compressed(q.codes, q.scale, q.zero - 1, q.g_idx, 4, True)


def test_cli_errors_are_clear(tiny_models: dict, tmp_path: Path) -> None:
    src = str(tiny_models["llama"])
    r = run_mtk("quantize", src, "-o", str(tmp_path / "a"), "--method", "rtn", "--bits", "3", "--format", CT)
    assert r.returncode == 2 and "4 or 8 bits" in r.stderr, r.stderr
    r = run_mtk("quantize", src, "-o", str(tmp_path / "b"), "--desc-act", "--format", CT, "--calibration", src)
    assert r.returncode == 2 and "--static-groups" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())
