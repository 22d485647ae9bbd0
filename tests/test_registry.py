"""The plug-in registry: duplicates refused, unknown names listed, entry-point plug-ins picked up."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtk.converters.family import FAMILIES, family_for_gguf, family_for_hf
from mtk.errors import UnsupportedError
from mtk.quantizers import FORMATS, QUANTIZERS, format_of
from mtk.quantizers.config import QuantizeConfig
from mtk.registry import Registry


def test_duplicate_name_is_an_error() -> None:
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(2)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnsupportedError) as info:
        family_for_gguf("mamba")
    message = str(info.value)
    for arch in ("llama", "qwen2", "qwen2moe", "qwen3", "phi3", "gemma2", "gemma3"):
        assert arch in message
    with pytest.raises(UnsupportedError, match="MistralForCausalLM"):
        family_for_hf("BertModel")


def test_every_family_maps_names_both_ways() -> None:
    family_for_gguf("llama")
    for arch in FAMILIES.names():
        fam = FAMILIES.get(arch)
        for gguf_t, hf_t in fam.all_tensors().items():
            gguf_name = gguf_t.format(bid=3)
            hf_name = hf_t.format(bid=3, xid=5)
            assert fam.gguf_to_hf(gguf_name) is not None
            back, idx = fam.hf_to_gguf(hf_name)
            assert back == gguf_t and idx.get("bid", 3) == 3


PLUGIN = """
from dataclasses import replace
from mtk.converters.family import LLAMA_TENSORS, Family
from mtk.quantizers.formats.gptq import GPTQ
from mtk.quantizers.methods.rtn import RTN
TOY = Family("toyarch", "ToyForCausalLM", "llama", LLAMA_TENSORS)
TOYQ = replace(RTN, name="toyq", bits=(8,), default_format="toyfmt")
TOYFMT = replace(GPTQ, name="toyfmt", detect=lambda qc: qc.get("quant_method") == "toyfmt")
"""


def test_entry_point_plugins_are_picked_up(tmp_path: Path) -> None:
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mtk.converters]\ntoyarch = toy_plugin:TOY\n\n[mtk.quantizers]\ntoyq = toy_plugin:TOYQ\n\n"
        "[mtk.quantizers.formats]\ntoyfmt = toy_plugin:TOYFMT\n"
    )
    script = textwrap.dedent(
        """
        from mtk.converters.family import family_for_gguf, family_for_hf
        from mtk.quantizers import FORMATS, QUANTIZERS, format_of
        from mtk.quantizers.config import QuantizeConfig
        print(family_for_gguf("toyarch").hf_architecture, family_for_hf("ToyForCausalLM").gguf_arch)
        print(QUANTIZERS.names())
        cfg = QuantizeConfig(method="toyq", bits=8)
        print(cfg.method, cfg.format, cfg.bits, format_of({"quant_method": "toyfmt"}).name)
        """
    )
    path = os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])  # the plug-in, then this checkout
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": path})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == "ToyForCausalLM toyarch"
    assert sorted(ast.literal_eval(lines[1])) == sorted([*QUANTIZERS.names(), "toyq"])  # the built-ins and the plug-in
    # The plug-in method is a usable --method, with its own bits and default format (itself a plug-in).
    assert proc.returncode == 0 and lines[2] == "toyq toyfmt 8 toyfmt", proc.stderr


# --- quantization methods and checkpoint formats ---------------------------------------------------------


@pytest.mark.parametrize("method", QUANTIZERS.names())
def test_every_method_row_is_complete_and_its_config_round_trips(method: str) -> None:
    row = QUANTIZERS.get(method)
    assert row.name == method and row.default_format in FORMATS and row.bits
    assert all(f in FORMATS for f in row.formats or ())
    opts = row.options()
    assert row.options.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    cfg = QuantizeConfig(method=method)
    assert cfg.format == row.default_format and cfg.sym is row.default_sym
    assert cfg.needs_calibration is row.needs_calibration and isinstance(cfg.options, row.options)
    assert QuantizeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="supports bits"):
        QuantizeConfig(method=method, bits=5)


def test_gptq_config_validates_and_resolves_its_defaults() -> None:
    from mtk.quantizers.methods.gptq import GPTQConfig

    for bad in ({"damp_percent": 0.0}, {"damp_percent": 1.0}, {"act_group_aware": True, "desc_act": True}):
        with pytest.raises(ValueError):
            GPTQConfig(**bad)
    assert GPTQConfig().act_group_aware is True and GPTQConfig(static_groups=True).act_group_aware is False
    assert GPTQConfig.from_dict(GPTQConfig(desc_act=True).to_dict()) == GPTQConfig(desc_act=True)


# The formats whose grid is not "bits and group size" label what they are.
LABELS = {
    # bitsandbytes' config holds no group size (the block size is in each Linear's quant_state), but its codebook
    "bitsandbytes": "bitsandbytes 4-bit nf4",
    "compressed-tensors-fp8": "compressed-tensors e4m3 block64",
    "compressed-tensors-int8": "compressed-tensors int8 w8a8",
    "fp8": "fp8 e4m3 block64",
}


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_every_format_detects_its_own_config_and_labels_it(fmt: str) -> None:
    row = FORMATS.get(fmt)
    bits = 4 if 4 in row.bits else row.bits[0]
    # A method that writes it: its own (awq, bnb, fp8's formats), else RTN.
    method = next((m for m in QUANTIZERS.names() if fmt in (QUANTIZERS.get(m).formats or ())), "rtn")
    sizes = row.group_sizes.get(bits) or (64,)
    group = 64 if 64 in sizes else sizes[0]
    cfg = QuantizeConfig(method=method, bits=bits, group_size=group, format=fmt)
    qc = row.quantization_config(cfg)
    assert format_of(qc) is row and format_of(json.loads(json.dumps(qc))) is row
    assert [f for f in FORMATS.names() if FORMATS.get(f).detect(qc)] == [fmt]  # no other format claims it
    assert row.label(qc) == LABELS.get(fmt, f"{qc['quant_method']} {bits}-bit g64")
    assert row.tolerance(qc).kl_mean > 0 and isinstance(row.runtime_available(), bool)
    with pytest.raises(UnsupportedError, match="no checkpoint format"):
        format_of({"quant_method": "hqq"})


def test_quantizer_registries_import_no_torch() -> None:
    """The CLI builds --method/--format choices and help from the rows at start-up: they must stay light."""
    script = "import sys, mtk.quantizers, mtk.quantizers.config, mtk.cli.quantize; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_labels_of_configs_mtk_does_not_write() -> None:
    from mtk.quantizers.formats import label_of

    assert label_of({"quant_method": "hqq", "bits": 4}) == "hqq 4-bit"
    assert label_of({"quant_method": "awq", "w_bit": 4, "q_group_size": 128}) == "awq 4-bit g128"  # AutoAWQ's keys
    assert label_of({}) == "quantized"
    ct = FORMATS.get("compressed-tensors")
    per_channel = ct.quantization_config(QuantizeConfig(method="rtn", bits=8, group_size=-1, format=ct.name))
    assert label_of(per_channel) == "compressed-tensors 8-bit"  # no group size per channel
