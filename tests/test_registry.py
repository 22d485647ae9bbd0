"""The plug-in registry: duplicates refused, unknown names listed, entry-point plug-ins picked up."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtk.converters.family import FAMILIES, family_for_gguf, family_for_hf
from mtk.errors import UnsupportedError
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
from mtk.converters.family import LLAMA_TENSORS, Family
TOY = Family("toyarch", "ToyForCausalLM", "llama", LLAMA_TENSORS)
"""


def test_entry_point_plugins_are_picked_up(tmp_path: Path) -> None:
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mtk.converters]\ntoyarch = toy_plugin:TOY\n\n[mtk.quantizers]\ntoyq = toy_plugin:TOY\n"
    )
    script = textwrap.dedent(
        """
        from mtk.converters.family import family_for_gguf, family_for_hf
        from mtk.quantizers import QUANTIZERS
        print(family_for_gguf("toyarch").hf_architecture, family_for_hf("ToyForCausalLM").gguf_arch)
        print(QUANTIZERS.names())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert lines[0] == "ToyForCausalLM toyarch"
    assert sorted(ast.literal_eval(lines[1])) == ["awq", "gptq", "rtn", "toyq"]  # the built-ins and the plug-in
