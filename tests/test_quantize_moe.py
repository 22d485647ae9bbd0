"""mtk quantize on mixture-of-experts models (qwen2moe): per-expert calibration, its token counts and fallbacks,
routed vs all, the refused formats, and checkpoints loaded back into transformers 5's fused experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_mtk
from fixtures_models import build_tiny_model

from mtk.quantizers.config import QuantizeConfig
from mtk.quantizers.engine import quantize

pytest.importorskip("compressed_tensors")

CT = "compressed-tensors"


def _float_routing(src: Path, calibration: Path, samples: int, seq_len: int) -> list[list[int]]:
    """Tokens each expert's router picks per layer, in the float model run by transformers itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtk.converters.calibration import load_calibration

    ids = load_calibration(calibration, AutoTokenizer.from_pretrained(src), samples, seq_len)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    n = model.config.num_experts
    counts = torch.zeros(len(model.model.layers), n, dtype=torch.long)

    def hook(_m: torch.nn.Module, _args: tuple, out: tuple, i: int) -> None:
        counts[i] += torch.bincount(out[2].reshape(-1), minlength=n)  # out: logits, weights, expert indices

    handles = [
        layer.mlp.gate.register_forward_hook(lambda m, a, o, i=i: hook(m, a, o, i))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        for row in ids:
            model(row[None])
    for h in handles:
        h.remove()
    return counts.tolist()


def test_unfused_experts_compute_what_transformers_fused_ones_do(tiny_models: dict) -> None:
    from transformers import AutoModelForCausalLM

    from mtk.converters.family import layer_plan
    from mtk.quantizers.layerwise import LayerwiseModel
    from mtk.quantizers.moe import ExpertLinears

    src = tiny_models["qwen2moe"]
    lw = LayerwiseModel(src, torch.device("cpu"), plan=layer_plan("qwen2_moe"))
    mine = lw.load_layer(1).mlp
    assert isinstance(mine.experts, ExpertLinears) and mine.experts.count == 4
    fused = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).model.layers[1].mlp
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        assert torch.allclose(mine(x), fused(x), atol=1e-5), (mine(x) - fused(x)).abs().max()
        mine.experts.calibrate_all = True  # every expert runs on every token; the output takes the routed ones
        assert torch.allclose(mine(x), fused(x), atol=1e-5)


@pytest.fixture(scope="module")
def written(tiny_models: dict, calibration: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """The tiny qwen2moe by GPTQ (CLI, routed calibration) and RTN (API), both verified: method -> (folder, result)."""
    import mtk

    root = tmp_path_factory.mktemp("moe")
    src = tiny_models["qwen2moe"]
    r = run_mtk(
        "--json", "quantize", str(src), "-o", str(root / "gptq"), "--method", "gptq", "--group-size", "32",
        "--calibration", str(calibration), "--samples", "8", "--seq-len", "64",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rtn = mtk.quantize(src, root / "rtn", method="rtn", group_size=32, device="cpu").to_dict()
    return {"gptq": (root / "gptq", json.loads(r.stdout)), "rtn": (root / "rtn", rtn)}


def test_gptq_calibrates_each_expert_on_its_routed_tokens(tiny_models: dict, calibration: Path, written: dict) -> None:
    from mtk.formats.checkpoint import HFCheckpoint

    src = tiny_models["qwen2moe"]
    out, result = written["gptq"]
    assert result["format"] == CT  # the MoE default
    experts = result["experts"]
    assert experts["count"] == 4 and experts["calibration"] == "routed" and result["fallbacks"] == []
    routed = experts["routed_tokens"]
    # Every token goes to num_experts_per_tok = 2 experts in each of the 2 layers.
    assert [sum(layer) for layer in routed] == [8 * 64 * 2] * 2, routed
    # Layer 0 routes on the quantized attention's output: close to the float model's routing, not equal.
    reference = _float_routing(src, calibration, 8, 64)
    for mine, ref in zip(routed[0], reference[0], strict=True):
        assert abs(mine - ref) <= 0.15 * ref + 8, (routed, reference)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert r"re:.*mlp\.gate$" in qc["ignore"] and r"re:.*mlp\.shared_expert_gate$" in qc["ignore"]
    ckpt = HFCheckpoint(out)
    names = set(ckpt.names())
    for x in range(4):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.1.mlp.experts.{x}.{proj}.weight_packed" in names
    assert ckpt.dtype("model.layers.1.mlp.gate.weight") == torch.float16  # the router stays float
    assert "model.layers.1.mlp.shared_expert_gate.weight" in names
    assert "model.layers.1.mlp.shared_expert.down_proj.weight_packed" in names
    v = result["verification"]
    # transformers dequantizes the per-expert weights into its fused experts (float16 rounding): what the files hold.
    assert v["logits"]["kl_mean"] < 1e-5 and v["logits"]["top1"] >= 0.95, v
    assert v["quality"]["kl_mean"] < 0.15, v["quality"]


def _starved(src: Path, dst: Path) -> Path:
    """``src`` with layer 0's router unable to pick expert 3 (top-1 routing, its row 0, expert 1's row = -expert 0's:
    max(l0, l1) = |l0| >= 0 = l3, so expert 3 never wins)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["num_experts_per_tok"] = 1
    (dst / "config.json").write_text(json.dumps(config))
    (weights,) = dst.glob("*.safetensors")
    state = load_file(weights)
    gate = state["model.layers.0.mlp.gate.weight"]
    gate[1] = -gate[0]
    gate[3] = 0
    save_file(state, weights, metadata={"format": "pt"})
    return dst


def _expert_weight(out: Path, name: str) -> torch.Tensor:
    from mtk.formats.checkpoint import HFCheckpoint
    from mtk.quantizers.compressed import unpack_compressed

    ckpt = HFCheckpoint(out)
    return unpack_compressed({k: ckpt.get(f"{name}.{k}") for k in ("weight_packed", "weight_scale", "weight_shape")}, 4)


@pytest.mark.parametrize("mode", ["routed", "all"])
def test_an_expert_no_token_reaches_falls_back_to_rtn_unless_all_tokens_calibrate_it(
    mode: str, tiny_models: dict, calibration: Path, tmp_path: Path
) -> None:
    from mtk.formats.checkpoint import HFCheckpoint
    from mtk.quantizers.grid import rtn

    src = _starved(tiny_models["qwen2moe"], tmp_path / "src")
    out = tmp_path / mode
    cfg = QuantizeConfig(method="gptq", group_size=32, samples=4, seq_len=64, format=CT, moe_calibration=mode)
    result = quantize(src, out, cfg, calibration=calibration, device="cpu")
    experts = result["experts"]
    assert experts["calibration"] == mode
    assert experts["routed_tokens"][0][3] == 0 and sum(experts["routed_tokens"][0]) == 4 * 64, experts
    assert min(experts["routed_tokens"][1]) > 0, experts
    starved = {f"mlp.experts.3.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    base = "model.layers.0.mlp.experts.3.gate_proj"
    source = HFCheckpoint(src).get(f"{base}.weight").float()
    codes, scale, zero = rtn(source, 4, 32, sym=True)
    rounded = scale.half().float().repeat_interleave(32, 1) * (codes - zero.repeat_interleave(32, 1))
    if mode == "routed":
        assert {(f["layer"], f["linear"]) for f in result["fallbacks"]} == {(0, n) for n in starved}, result
        assert all("no calibration tokens" in f["fallback"] for f in result["fallbacks"])
        # The fallback is plain round-to-nearest of the source weights, not GPTQ on an empty Hessian (zeros).
        assert torch.equal(_expert_weight(out, base), rounded)
    else:
        # Every expert saw every token of its layer: GPTQ everywhere, so expert 3 differs from round-to-nearest.
        assert result["fallbacks"] == []
        assert not torch.equal(_expert_weight(out, base), rounded)


def test_awq_scales_folded_into_the_norm_leave_routing_and_the_moe_block_unchanged(tiny_models: dict) -> None:
    """The router and the shared expert's gate read the scaled norm's output too: ``compensate`` gives them the
    scale, so in float the whole layer computes what it did."""
    from mtk.converters.family import layer_plan
    from mtk.quantizers.awq import apply_scales, scale_groups
    from mtk.quantizers.layerwise import LayerwiseModel

    plan = layer_plan("qwen2_moe")
    lw = LayerwiseModel(tiny_models["qwen2moe"], torch.device("cpu"), plan=plan)
    layer = lw.load_layer(0)
    groups = scale_groups(plan, 4)
    norm = next(g for g in groups if g.prev == "post_attention_layernorm")
    assert len(norm.linears) == 2 + 2 * 4 and norm.compensate == ("mlp.gate", "mlp.shared_expert_gate")
    assert sum(g.prev.startswith("mlp.experts.") for g in groups) == 4
    x = torch.randn(1, 9, 64)
    mlp_in = layer.post_attention_layernorm(x)
    with torch.no_grad():
        before = layer.mlp(mlp_in), layer.mlp.gate(mlp_in.reshape(-1, 64))[2]
        apply_scales(layer, norm, torch.rand(64) * 4 + 0.25, plan.norm_offset)
        mlp_in = layer.post_attention_layernorm(x)
        after = layer.mlp(mlp_in), layer.mlp.gate(mlp_in.reshape(-1, 64))[2]
    assert torch.equal(before[1], after[1])  # the same experts for every token
    assert torch.allclose(before[0], after[0], atol=1e-5)
    # Without compensation the router would see the scaled input (the check above can fail).
    layer.mlp.gate.weight.data /= 2 + torch.arange(64.0)
    assert not torch.equal(layer.mlp.gate(mlp_in.reshape(-1, 64))[2], before[1])


def test_a_degenerate_hessian_takes_more_dampening_then_rtn() -> None:
    from mtk.quantizers.gptq import HessianError, gptq_quantize

    torch.manual_seed(0)
    w = torch.randn(32, 32)
    indefinite = torch.eye(32) + 2 * torch.diag(torch.ones(31), 1) + 2 * torch.diag(torch.ones(31), -1)
    assert torch.linalg.eigvalsh(indefinite).min() < -1  # not positive definite at 1% dampening
    q = gptq_quantize(w, indefinite, bits=4, group_size=32, sym=True, damp_percent=0.01)
    assert q.fallback.startswith("dampening raised") and q.codes.max() <= 15
    with pytest.raises(HessianError):
        gptq_quantize(w, -torch.eye(32), bits=4, group_size=32, sym=True, damp_percent=0.01)


def test_rtn_writes_every_expert_and_the_runtime_loads_them(written: dict) -> None:
    _, result = written["rtn"]
    assert result["format"] == CT
    assert result["experts"] == {"count": 4, "calibration": None, "routed_tokens": [[], []]}
    assert result["fallbacks"] == []
    assert result["verification"]["logits"]["kl_mean"] < 1e-5, result["verification"]


def test_gptq_per_expert_beats_round_to_nearest_on_held_out_text(
    tiny_models: dict, written: dict, bible_text: str
) -> None:
    """In transformers, on 2048 tokens the calibration never saw (measured: mean KL 0.012 against RTN's 0.021)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtk.artifacts import quantized

    src = tiny_models["qwen2moe"]
    ids = torch.tensor(AutoTokenizer.from_pretrained(src)(bible_text[-60_000:])["input_ids"][:2048]).reshape(16, 128)
    with torch.no_grad():
        ref = torch.log_softmax(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(ids).logits, -1)
        kl = {}
        for method, (out, _) in written.items():
            logq = torch.log_softmax(quantized.load(out)(ids).logits.float(), -1)
            kl[method] = float((ref.exp() * (ref - logq)).sum(-1).mean())
    assert kl["gptq"] < 0.8 * kl["rtn"], kl


REFUSED = [
    (("--method", "rtn", "--format", "gptq"), 3, "mixture-of-experts model and the gptq format cannot hold"),
    (("--method", "rtn", "--format", "awq"), 3, "mixture-of-experts model and the awq format cannot hold"),
    (("--method", "rtn", "--no-sym"), 3, "cannot load asymmetric per-expert compressed-tensors weights"),
    (("--method", "awq", "--calibration", "x.txt"), 3, "AWQ's grid has a zero point, use --method gptq or rtn"),
    (("--method", "gptq", "--desc-act", "--calibration", "x.txt"), 2, "written as compressed-tensors (a mixture"),
    (("--method", "rtn", "--moe-calibration", "all"), 2, "rtn calibrates nothing"),
    (("--method", "rtn", "--moe-calibration", "some"), 2, "routed or all"),
]


@pytest.mark.parametrize(("options", "code", "message"), REFUSED, ids=[" ".join(o) for o, _, _ in REFUSED])
def test_refusals(options: tuple[str, ...], code: int, message: str, tiny_models: dict, tmp_path: Path) -> None:
    r = run_mtk("quantize", str(tiny_models["qwen2moe"]), "-o", str(tmp_path / "out"), *options)
    assert r.returncode == code and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_peak_memory_is_one_layer_with_its_experts_not_the_model(tmp_path: Path, calibration: Path) -> None:
    from test_memory import MiB, child_peak_mib

    wide = {
        "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 8, "num_experts": 16,
        "num_experts_per_tok": 2, "moe_intermediate_size": 256, "shared_expert_intermediate_size": 512,
    }  # fmt: skip
    models = {n: build_tiny_model("qwen2moe", tmp_path / f"m{n}", num_hidden_layers=n, **wide) for n in (1, 2, 8)}
    deltas = {}
    for n in (2, 8):
        deltas[n] = child_peak_mib(
            f"""
            import json, resource
            from mtk.quantizers.config import QuantizeConfig
            from mtk.quantizers.engine import quantize
            def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            cfg = QuantizeConfig(group_size=64, samples=2, seq_len=32, format="compressed-tensors")
            quantize({str(models[1])!r}, {str(tmp_path / "w")!r}, cfg, calibration={str(calibration)!r},
                     device="cpu", overwrite=True)
            base = peak()
            result = quantize({str(models[n])!r}, {str(tmp_path / "o")!r}, cfg, calibration={str(calibration)!r},
                              device="cpu", overwrite=True)
            assert result["experts"]["count"] == 16
            print(json.dumps({{"delta": peak() - base}}))
            """
        )["delta"]
    layer = 4 * (4 * 512 * 512 + 16 * 3 * 512 * 256 + 3 * 512 * 512) / MiB  # one float32 layer: 34 MiB
    grown = 6 * layer
    # Six more layers (~200 MiB of float32 weights, most of it experts) may cost no more than about one layer.
    assert deltas[8] - deltas[2] < 0.25 * grown, (deltas, grown)
