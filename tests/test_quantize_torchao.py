"""The torchao format against torchao itself: the tensors mtk writes against ``IntxWeightOnlyConfig``'s own
quantization of the same weights, the safetensors subclass table against torchao's ``flatten_tensor_state_dict``,
the config against ``TorchAoConfig.to_dict``, and mtk's checkpoints loaded back by ``from_pretrained``."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_mtk

from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.engine import STORED_FLOAT
from mtk.quantizers.formats import FORMATS, format_of
from mtk.quantizers.formats.torchao import DEQUANT_DTYPE
from mtk.quantizers.linear import round_to_nearest

pytest.importorskip("torchao")

TORCHAO = FORMATS.get("torchao")
GRIDS = [(bits, group, sym) for bits in (2, 3, 4, 8) for group in (32, -1) for sym in (True, False)]


def _config(bits: int, group: int, sym: bool) -> Any:
    """torchao's ``IntxWeightOnlyConfig`` for an mtk grid."""
    from torchao.quantization import IntxWeightOnlyConfig, PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    return IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"),
        granularity=PerAxis(0) if group == -1 else PerGroup(group),
        mapping_type=MappingType.SYMMETRIC if sym else MappingType.ASYMMETRIC,
    )


def _torchao_weight(w: torch.Tensor, bits: int, group: int, sym: bool) -> Any:
    """``w`` quantized by torchao's ``quantize_`` (an ``IntxUnpackedToInt8Tensor``)."""
    from torchao.quantization import quantize_

    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    with torch.no_grad():
        linear.weight.copy_(w)
    quantize_(linear, _config(bits, group, sym))
    return linear.weight


def _cfg(bits: int, group: int, sym: bool, method: str = "rtn") -> QuantizeConfig:
    return QuantizeConfig(method=method, bits=bits, group_size=group, sym=sym, format="torchao")


@pytest.mark.parametrize(
    ("bits", "group", "sym"), GRIDS, ids=[f"int{b}-g{g}-{'sym' if s else 'asym'}" for b, g, s in GRIDS]
)
def test_tensors_are_torchao_own_quantization(bits: int, group: int, sym: bool) -> None:
    """mtk's RTN grid is torchao's affine grid: scales and zero points bit-exact; the values too, except (symmetric
    grids) where ``w / scale`` lies on a half and torchao's ``w * (1 / scale)`` rounds it the other way."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    torch.manual_seed(bits)
    w = torch.randn(48, 256) * torch.rand(48, 1).add(0.05)
    mine = TORCHAO.pack(round_to_nearest(w, bits, group, sym), _cfg(bits, group, sym))
    theirs = _torchao_weight(w, bits, group, sym)
    assert theirs.block_size == (1, 256 if group == -1 else group)
    assert {k: v.dtype for k, v in mine.items()} == {
        "_weight_qdata": theirs.qdata.dtype,
        "_weight_scale": theirs.scale.dtype,
        "_weight_zero_point": theirs.zero_point.dtype,
    }
    assert torch.equal(mine["_weight_scale"], theirs.scale)
    assert torch.equal(mine["_weight_zero_point"], theirs.zero_point)
    differ = mine["_weight_qdata"] != theirs.qdata
    if sym:
        g = 256 if group == -1 else group
        ratio = w / mine["_weight_scale"].repeat_interleave(g, dim=1)
        on_half = (ratio.abs() - ratio.abs().floor() - 0.5).abs() < 1e-5
        assert bool(on_half[differ].all()) and int(differ.sum()) <= w.numel() // 64
        assert int((mine["_weight_qdata"].int() - theirs.qdata.int()).abs().max()) <= 1
    else:
        assert not bool(differ.any())
    # Either side's tensors read by the other's dequantization: the same floats.
    assert torch.equal(TORCHAO.unpack({"_weight_qdata": theirs.qdata, **_rest(theirs)}, {}), theirs.dequantize())
    rebuilt = IntxUnpackedToInt8Tensor(
        mine["_weight_qdata"],
        mine["_weight_scale"],
        mine["_weight_zero_point"],
        getattr(torch, f"int{bits}"),
        theirs.block_size,
        torch.float32,
        None,  # no activation quantization: weight-only
    )
    assert torch.equal(rebuilt.dequantize(), TORCHAO.unpack(mine, {}))


def _rest(t: Any) -> dict[str, torch.Tensor]:
    return {"_weight_scale": t.scale, "_weight_zero_point": t.zero_point}


def test_safetensors_metadata_is_torchao_flattening() -> None:
    """The table mtk writes for a plan equals the one torchao's ``flatten_tensor_state_dict`` writes for the same
    state dict (a quantized Linear dequantizing to float16, per group and per channel, and a plain tensor)."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    torch.manual_seed(0)
    for group in (32, -1):
        cfg = _cfg(4, group, True)
        weight = _torchao_weight(torch.randn(16, 64).half(), 4, group, True)
        assert weight.dtype == torch.float16
        tensors, theirs = flatten_tensor_state_dict({"m.weight": torch.ones(3), "m.proj.weight": weight})
        plan = [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
        mine = TORCHAO.safetensors_metadata(plan, cfg)
        assert mine.keys() == theirs.keys()
        assert {k: json.loads(v) for k, v in mine.items()} == {k: json.loads(v) for k, v in theirs.items()}


@pytest.mark.parametrize(("bits", "group", "sym"), [(4, 32, True), (8, -1, False), (2, 128, False)])
def test_quantization_config_is_torchao_config(bits: int, group: int, sym: bool) -> None:
    from transformers import TorchAoConfig

    mine = TORCHAO.quantization_config(_cfg(bits, group, sym))
    assert mine == json.loads(json.dumps(TorchAoConfig(_config(bits, group, sym)).to_dict()))
    assert format_of(mine) is TORCHAO and TORCHAO.label(mine) == f"torchao {bits}-bit" + (
        f" g{group}" if group > 0 else ""
    )
    parsed = TorchAoConfig.from_dict(mine).quant_type
    assert parsed.weight_dtype == getattr(torch, f"int{bits}") and parsed.mapping_type.name == (
        "SYMMETRIC" if sym else "ASYMMETRIC"
    )


# --- checkpoints in transformers -------------------------------------------------------------------------

CASES = [
    ("rtn", "llama", 4, 32, True),
    ("rtn", "qwen3", 8, -1, False),
    ("rtn", "gemma3", 2, 64, False),
    ("hqq", "llama", 3, 32, False),
    ("gptq", "llama", 4, 64, True),
    ("awq", "llama", 4, 32, False),
]


def _held_weights(path: Path) -> dict[str, torch.Tensor]:
    """Each quantized Linear's weight as mtk reads the files (``unpack``), by module name."""
    from mtk.formats.checkpoint import HFCheckpoint

    ckpt = HFCheckpoint(path)
    keys = TORCHAO.packed_keys
    bases = [n.removesuffix(f".{keys[0]}") for n in ckpt.names() if n.endswith(f".{keys[0]}")]
    return {b: TORCHAO.unpack({k: ckpt.get(f"{b}.{k}") for k in keys}, {}) for b in bases}


@pytest.mark.parametrize(
    ("method", "family", "bits", "group", "sym"), CASES, ids=[f"{c[0]}-{c[1]}-int{c[2]}-g{c[3]}" for c in CASES]
)
def test_checkpoints_load_in_transformers(
    method: str, family: str, bits: int, group: int, sym: bool, tiny_models: dict, calibration: Path, tmp_path: Path
) -> None:
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from transformers import AutoModelForCausalLM

    out = tmp_path / "torchao"
    args = ["--json", "quantize", str(tiny_models[family]), "-o", str(out), "--method", method, "--format", "torchao"]
    args += ["--bits", str(bits), "--group-size", str(group), "--sym" if sym else "--no-sym"]
    if method in ("gptq", "awq"):
        args += ["--calibration", str(calibration), "--samples", "8", "--seq-len", "64"]
    r = run_mtk(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    v = json.loads(r.stdout)["verification"]
    # The runtime (moved to float32 after loading) dequantizes the files exactly as mtk's unpack does.
    assert v["logits"]["kl_mean"] < 1e-9 and v["logits"]["top1"] == 1.0, v
    # A plain from_pretrained (config.json's float16) holds exactly the files' weights, in torchao's tensor.
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")
    held = _held_weights(out)
    assert len(held) == 7 * model.config.num_hidden_layers
    for base, w in held.items():
        loaded = model.get_submodule(base).weight
        assert isinstance(loaded, IntxUnpackedToInt8Tensor) and loaded.dtype == torch.float16
        assert torch.equal(loaded.dequantize(), w.half()), base
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == TORCHAO.quantization_config(_cfg(bits, group, sym, method))
    assert config["dtype"] == DEQUANT_DTYPE == str(STORED_FLOAT).removeprefix("torch.")  # the subclass's dtype


def test_every_shard_carries_the_whole_table(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers merges the shards' metadata and checks every name in ``tensor_names``: each shard has it all."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from mtk.formats.safetensors_io import SafetensorsWriter
    from mtk.quantizers import engine

    monkeypatch.setattr(engine, "SafetensorsWriter", functools.partial(SafetensorsWriter, max_shard_bytes=200_000))
    out = tmp_path / "sharded"
    engine.quantize(tiny_models["llama"], out, _cfg(4, 32, True))
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1
    tables = []
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            tables.append(f.metadata())
    assert all(t == tables[0] for t in tables) and tables[0]["format"] == "pt"
    names = json.loads(tables[0]["tensor_names"])
    assert "model.layers.1.mlp.down_proj.weight" in names and "model.embed_tokens.weight" in names
    model = AutoModelForCausalLM.from_pretrained(str(out), device_map="cpu")
    assert torch.equal(
        model.model.layers[1].mlp.down_proj.weight.dequantize(),
        _held_weights(out)["model.layers.1.mlp.down_proj"].half(),
    )


def test_what_it_cannot_hold_is_refused(tiny_models: dict, tmp_path: Path) -> None:
    bad = (
        ({"method": "gptq", "desc_act": True}, "no g_idx"),
        ({"method": "rtn", "bits": 5}, "supports bits"),
        ({"method": "smoothquant"}, "writes the formats"),
        ({"method": "fp8"}, "writes the formats"),
    )
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            QuantizeConfig(**options, format="torchao")
    assert QuantizeConfig(method="gptq", desc_act=True, static_groups=True, format="torchao").format == "torchao"
    r = run_mtk(
        "quantize", str(tiny_models["qwen3moe"]), "-o", str(tmp_path / "x"), "--method", "rtn", "--format", "torchao"
    )
    assert r.returncode == 3 and "mixture-of-experts" in r.stderr and "cannot hold its experts" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
