"""mtk quantize --method bnb --format bitsandbytes: bitsandbytes' own quantization and transformers' own
save_pretrained are the independent sides, and the checkpoints load back in transformers + bitsandbytes (CPU).

mtk computes the codes in torch (mtk.quantizers.bnb); agreement tensor for tensor with bitsandbytes'
``quantize_4bit`` / ``quantize_blockwise`` / ``int8_vectorwise_quant`` means mtk holds the format's facts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import run_mtk
from fixtures_models import MOE, QUANTIZABLE
from safetensors import safe_open

from mtk.quantizers import bnb
from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.formats import FORMATS

bitsandbytes = pytest.importorskip(
    "bitsandbytes", reason="bitsandbytes is not installed (pip install mtk[quantize]): nothing to compare with"
)
F = pytest.importorskip("bitsandbytes.functional")

BNB = FORMATS.get("bitsandbytes")
FOUR_BIT = [("nf4", False), ("nf4", True), ("fp4", False), ("fp4", True)]
FOUR_BIT_IDS = [f"{t}{'-dq' if dq else ''}" for t, dq in FOUR_BIT]


def _weight(out: int = 96, cols: int = 384, seed: int = 0) -> torch.Tensor:
    """Random float16 weights with the cases that trip a quantizer: an all-zero block and row, tiny values, a wide
    spread of block magnitudes (so that the absmax vector double quantization sees is not flat)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=g) * torch.logspace(-3, 0, out)[:, None]
    w[3] = 0
    w[5, :64] = 0
    w[7, 3] = 1e-7
    return w.half()


def _cfg(quant_type: str = "nf4", double_quant: bool = False, bits: int = 4, group: int | None = None):
    return QuantizeConfig(
        method="bnb", bits=bits, group_size=group, bnb_quant_type=quant_type, bnb_double_quant=double_quant
    )


def _reference_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes' reference ``quantize_blockwise`` (its torch kernel, which other devices dispatch to): the CPU
    build dispatches float32 to a C kernel instead (see test_the_cpu_kernel_rounds_a_few_absmax_codes_the_other_way)."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return op.redispatch(keys, x, code, blocksize)


# --- the tables ------------------------------------------------------------------------------------------


def test_codebooks_and_the_dynamic_map_are_bitsandbytes() -> None:
    for quant_type in bnb.QUANT_TYPES:
        assert torch.equal(bnb.codebook(quant_type), F.get_4bit_type(quant_type, device="cpu"))
    assert torch.equal(bnb.dynamic_map(), F.create_dynamic_map(signed=True))


# --- mtk's tensors against bitsandbytes' own quantization ------------------------------------------------


@pytest.mark.parametrize(("quant_type", "double_quant"), FOUR_BIT, ids=FOUR_BIT_IDS)
@pytest.mark.parametrize("blocksize", [64, 128])
def test_4bit_tensors_are_bitsandbytes_quantize_4bit(quant_type: str, double_quant: bool, blocksize: int) -> None:
    w = _weight()
    cfg = _cfg(quant_type, double_quant, group=blocksize)
    mine = BNB.pack(bnb.quantize_4bit(w, quant_type, blocksize, double_quant), cfg)
    packed, state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant, quant_type=quant_type)
    theirs = {f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}
    theirs["weight"] = packed
    assert list(mine) == list(BNB.packed_shapes(*w.shape, cfg))  # the plan's keys, in its order
    assert set(mine) == set(theirs)
    key = f"weight.quant_state.bitsandbytes__{quant_type}"
    for name, tensor in mine.items():
        assert tensor.dtype == theirs[name].dtype and tensor.shape == theirs[name].shape or name == key, name
        if name not in (key, "weight.absmax") or not double_quant:
            assert torch.equal(tensor, theirs[name]), name
    if double_quant:
        # The nested codes are bitsandbytes' reference kernel's exactly (its CPU kernel: the next test).
        absmax = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)[1].absmax
        ref_codes, ref_absmax = _reference_blockwise(absmax - absmax.mean(), bnb.dynamic_map(), 256)
        assert torch.equal(mine["weight.absmax"], ref_codes) and torch.equal(mine["weight.nested_absmax"], ref_absmax)
        # The state's JSON: the same object, padded with spaces to the length the plan fixed before quantizing.
        assert bytes(mine[key].numpy()).rstrip() == bytes(theirs[key].numpy())
    # bitsandbytes reads mtk's tensors back into the weight its own dequantization gives.
    restored = bitsandbytes.functional.QuantState.from_dict(
        {k.removeprefix("weight."): v for k, v in mine.items() if k != "weight"}, device=torch.device("cpu")
    )
    expect = F.dequantize_4bit(mine["weight"], restored)
    assert expect.dtype == torch.float16 and torch.equal(BNB.unpack(mine, {}), expect)


def test_the_cpu_kernel_rounds_a_few_absmax_codes_the_other_way() -> None:
    """bitsandbytes' CPU build quantizes float32 blockwise (double quantization's absmax) with a C
    kernel of its own: measured 101 of 102,400 codes differ from its reference kernel (which mtk matches), each by
    one level, to one the scaled value is as near to within 3e-5 (values that lie that close to a midpoint). mtk
    keeps the reference rounding (exact nearest level), which does not depend on the CPU's instruction set."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(400 * 256, generator=g) * 0.1
    x = x - x.mean()
    code = bnb.dynamic_map()
    mine, absmax = bnb.blockwise(x, 256, code)
    ref, ref_absmax = _reference_blockwise(x, code, 256)
    assert torch.equal(mine.to(torch.uint8), ref) and torch.equal(absmax, ref_absmax)
    cpu, _ = F.quantize_blockwise(x, code=code, blocksize=256)
    differ = cpu != ref
    assert 0 < int(differ.sum()) < 0.005 * x.numel()
    scaled = (x * (1.0 / absmax.repeat_interleave(256)))[differ]
    theirs, nearest = (code[cpu[differ].long()] - scaled).abs(), (code[ref[differ].long()] - scaled).abs()
    assert bool((theirs <= nearest + 5e-5).all()) and int((cpu.long() - ref.long()).abs().max()) == 1


def test_int8_tensors_are_bitsandbytes_int8_vectorwise_quant() -> None:
    w = _weight(seed=2)
    w[3] = 0  # an all-zero row: bitsandbytes divides by its absmax 0; mtk writes codes 0 (its runtime weight, 0)
    cfg = _cfg(bits=8)
    mine = BNB.pack(bnb.quantize_int8(w), cfg)
    codes, scb, _ = F.int8_vectorwise_quant(w.clone())
    assert list(mine) == list(BNB.packed_shapes(*w.shape, cfg)) == ["weight", "SCB", "weight_format"]
    rows = torch.arange(w.shape[0]) != 3
    assert torch.equal(mine["weight"][rows], codes[rows]) and torch.equal(mine["SCB"], scb)
    assert mine["weight"][3].abs().sum() == 0 and mine["weight_format"].item() == 0
    assert torch.allclose(BNB.unpack(mine, {}), F.int8_vectorwise_dequant(mine["weight"], mine["SCB"]))


@pytest.mark.parametrize(("quant_type", "double_quant"), FOUR_BIT, ids=FOUR_BIT_IDS)
def test_the_layer_dequantizes_to_what_the_files_define(quant_type: str, double_quant: bool) -> None:
    w = _weight(seed=3).float()
    q = bnb.quantize_4bit(w, quant_type, 64, double_quant)
    files = BNB.unpack(BNB.pack(q, _cfg(quant_type, double_quant)), {})
    assert torch.equal(q.dequantize().half(), files)
    # Nearest level: no value is further from its level than half the widest gap between levels times its block's
    # absmax, plus (double quantization) how far the runtime's absmax moved from it: |c a' - w| <= |c a - w| + |a' - a|.
    half_gap = float(bnb.codebook(quant_type).sort().values.diff().max()) / 2
    absmax = q.scale.reshape(-1, 1)
    bound = half_gap * absmax + (q.runtime_absmax().reshape(-1, 1) - absmax).abs()
    assert bool(((q.dequantize() - w).abs().reshape(-1, 64) <= bound * (1 + 1e-5)).all())


# --- transformers' own checkpoint -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_llama(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama in float16: transformers quantizes the weights in the dtype it loads, mtk in the stored one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("half") / "llama"
    AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(out)
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping


CHECKPOINTS = [("nf4", False, 4), ("nf4", True, 4), ("fp4", False, 4), ("nf4", False, 8)]


@pytest.mark.parametrize(("quant_type", "double_quant", "bits"), CHECKPOINTS, ids=["nf4", "nf4-dq", "fp4", "int8"])
def test_mtk_writes_what_transformers_saves(
    quant_type: str, double_quant: bool, bits: int, half_llama: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from mtk.quantizers.engine import quantize

    if bits == 4:
        hf = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant
        )
    else:
        hf = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(half_llama, quantization_config=hf, device_map="cpu", dtype="auto")
    model.save_pretrained(tmp_path / "hf")
    quantize(half_llama, tmp_path / "mtk", _cfg(quant_type, double_quant, bits), device="cpu")

    def qc(folder: str) -> dict:
        return json.loads((tmp_path / folder / "config.json").read_text())["quantization_config"]

    assert qc("mtk") == qc("hf")
    theirs, mine = _tensors(tmp_path / "hf"), _tensors(tmp_path / "mtk")
    assert sorted(mine) == sorted(theirs)
    state = f"quant_state.bitsandbytes__{quant_type}"
    nested_codes, nested_differ = 0, 0
    for name, tensor in theirs.items():
        if double_quant and name.endswith(state):
            assert json.loads(bytes(mine[name].numpy())) == json.loads(bytes(tensor.numpy())), name
            continue
        assert (mine[name].dtype, mine[name].shape) == (tensor.dtype, tensor.shape), name
        if double_quant and name.endswith("weight.absmax"):
            # transformers quantized them with this CPU's C kernel (test_the_cpu_kernel_rounds_...): one level apart
            steps = (mine[name].long() - tensor.long()).abs()
            assert int(steps.max()) <= 1, name
            nested_codes, nested_differ = nested_codes + steps.numel(), nested_differ + int(steps.sum())
        else:
            assert torch.equal(mine[name], tensor), name
    assert nested_differ <= 0.01 * nested_codes


# --- checkpoints in transformers -------------------------------------------------------------------------

LOADS = [
    ("nf4", ()),
    ("nf4-dq", ("--bnb-double-quant",)),
    ("fp4", ("--bnb-quant-type", "fp4")),
    ("nf4-g32", ("--group-size", "32")),  # bitsandbytes' smallest block (the tiny model is 64 wide)
    ("int8", ("--bits", "8")),
]


@pytest.mark.parametrize("options", [o for _, o in LOADS], ids=[n for n, _ in LOADS])
def test_checkpoints_load_in_transformers(options: tuple[str, ...], tiny_models: dict, tmp_path: Path) -> None:
    out = tmp_path / "bnb"
    r = run_mtk("--json", "quantize", str(tiny_models["llama"]), "-o", str(out), "--method", "bnb", *options)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    group = -1 if "8" in options else 32 if "32" in options else 64
    assert result["format"] == "bitsandbytes" and result["group_size"] == group
    v = result["verification"]
    # bitsandbytes on the CPU against the files' weights (the format's load computes in float32, see its notes):
    # 4-bit weights are dequantized in float16 in both (measured KL 1.5e-7); LLM.int8() also quantizes the
    # activations (measured KL 1.8e-4).
    if "8" in options:
        assert v["logits"]["kl_mean"] < 1e-3 and v["logits"]["top1"] >= 0.9, v
    else:
        assert v["logits"]["kl_mean"] < 1e-5 and v["logits"]["top1"] >= 0.99, v
    quality = v["quality"]
    if "8" in options:
        assert quality["kl_mean"] < 1e-3 and quality["top1"] >= 0.9, quality
    else:
        assert quality["kl_mean"] < 0.15 and quality["top1"] >= 0.4, quality


# Gemma 4's tiny model has a 32-wide per-layer input projection, outside the decoder layers (float, and named in
# llm_int8_skip_modules since transformers would convert it) and inside them (blocks of 32).
DENSE = [f for f in QUANTIZABLE if f not in MOE]


@pytest.mark.parametrize("family", DENSE)
def test_every_dense_family_loads_back(family: str, tiny_models: dict, tmp_path: Path) -> None:
    from mtk.artifacts import quantized as check
    from mtk.quantizers.engine import quantize

    src = tiny_models[family]
    cfg = _cfg(double_quant=True, group=32 if family == "gemma4" else None)
    result = quantize(src, tmp_path / "bnb", cfg, device="cpu", check=lambda tmp: check.verify(tmp, src))
    assert result["verification"]["logits"]["kl_mean"] < 1e-5, result["verification"]
    skipped = json.loads((tmp_path / "bnb" / "config.json").read_text())["quantization_config"]["llm_int8_skip_modules"]
    assert skipped == (["lm_head", "model.per_layer_model_projection"] if family == "gemma4" else None)


def test_mixture_of_experts_models_are_refused(tiny_models: dict, tmp_path: Path) -> None:
    r = run_mtk("quantize", str(tiny_models["qwen2moe"]), "-o", str(tmp_path / "o"), "--method", "bnb")
    # bnb writes no format whose runtime loads per-expert weights back: refused (unsupported), naming the method
    assert r.returncode == 3 and "--method bnb writes no format whose runtime loads per-expert" in r.stderr, r.stderr
    r = run_mtk("quantize", str(tiny_models["qwen2moe"]), "-o", str(tmp_path / "o"), "--format", "bitsandbytes")
    assert r.returncode == 2 and "use --method bnb" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_verification_catches_a_codebook_mtk_and_the_runtime_disagree_on(
    tiny_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtk.artifacts import quantized as check
    from mtk.errors import VerificationError
    from mtk.quantizers.engine import quantize
    from mtk.quantizers.formats import bitsandbytes as fmt

    src, out = tiny_models["llama"], tmp_path / "bnb"
    quantize(src, out, _cfg(), device="cpu")
    assert check.verify(out, src)["logits"]["kl_mean"] < 1e-4
    # Reading the nibbles the other way round (a plausible layout bug) must not pass.
    real = fmt.unpack
    swapped = lambda t, qc: real({**t, "weight": (t["weight"] << 4) | (t["weight"] >> 4)}, qc)  # noqa: E731
    monkeypatch.setattr(check, "_format", lambda p: ({}, dataclasses.replace(BNB, unpack=swapped)))
    with pytest.raises(VerificationError, match="disagrees with its own weights"):
        check.verify(out, src)


@pytest.mark.slow  # each artifact in its own process: ~20 s here
def test_bench_runs_the_checkpoint_as_a_user_loads_it(tiny_models: dict, bible_text: str, tmp_path: Path) -> None:
    from mtk.quantizers.engine import quantize

    src, out, text = tiny_models["llama"], tmp_path / "nf4", tmp_path / "text.txt"
    quantize(src, out, _cfg(), device="cpu")
    text.write_text(bible_text[200_000:230_000], encoding="utf-8")
    r = run_mtk(
        "--json", "bench", str(src), str(out), "--text", str(text), "--ctx", "128", "--windows", "2",
        "--gen-tokens", "4", "--device", "cpu", env={"MTK_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ref, nf4 = json.loads(r.stdout)["artifacts"]
    assert ref["is_reference"] and nf4["quantization"] == "bitsandbytes 4-bit nf4", nf4
    # Tiny random models have flat logits: NF4 moves them visibly but not wildly (a broken load gives KL > 1).
    assert 0 < nf4["kl_mean"] < 0.15 and abs(nf4["ppl"] / ref["ppl"] - 1) < 0.2, nf4
