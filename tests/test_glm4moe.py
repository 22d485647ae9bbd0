"""GLM-4.5's quirks beyond the family grids: its multi-token prediction layers (past num_hidden_layers, which
transformers drops) are skipped with a note, GLM-4.5's Q/K norms go both ways, and expert groups (which
llama.cpp's glm4moe ignores) are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from conftest import run_mtk
from fixtures_models import build_tiny_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from mtk.artifacts.gguf import export_check, import_check
from mtk.converters.gguf_to_hf import gguf_import
from mtk.converters.gguf_types import TypeRules
from mtk.converters.hf_to_gguf import gguf_export
from mtk.errors import UnsupportedError
from mtk.formats.gguf_reader import open_gguf

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make test`")
Q = gguf.GGMLQuantizationType


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_mtp_layers_are_skipped_with_a_note(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint holding GLM-4.5's MTP layer (model.layers.3 of 3 layers, as the Hub's hold layer 46 of 46)
    exports the same tensors, byte for byte, as one without it, and says what it left out."""
    src = tiny_models["glm4moe"]
    mtp = _copy(src, tmp_path / "mtp")
    state = load_file(src / "model.safetensors")
    extra = {
        "model.layers.3.eh_proj.weight": torch.randn(64, 128),
        "model.layers.3.enorm.weight": torch.ones(64),
        "model.layers.3.hnorm.weight": torch.ones(64),
        "model.layers.3.self_attn.q_proj.weight": torch.randn(128, 64),
    }
    save_file({**state, **extra}, mtp / "model.safetensors", metadata={"format": "pt"})
    rules = TypeRules(Q.F32)
    plain = gguf_export(src, tmp_path / "a.gguf", rules=rules)
    result = gguf_export(mtp, tmp_path / "b.gguf", rules=rules, check=export_check(mtp, True))
    assert "skipped" not in plain
    assert result["skipped"] == "skipped 4 tensors of layers past num_hidden_layers (num_nextn_predict_layers)"
    assert result["verification"]["logits"]["top1"] == 1.0
    a, b = open_gguf(tmp_path / "a.gguf"), open_gguf(tmp_path / "b.gguf")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert not any(t.name.startswith("blk.3.") for t in b.tensors)
    for t in a.tensors:
        assert torch.equal(a.tensor_bytes(t), b.tensor_bytes(b.by_name[t.name])), t.name
    proc = run_mtk("gguf-export", str(mtp), "-o", str(tmp_path / "c.gguf"), "--type", "f32", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert "note: skipped 4 tensors" in proc.stderr


def test_qk_norm_variant_round_trips(tmp_path: Path) -> None:
    """GLM-4.5 (355B) has per-head Q/K norms (use_qk_norm), Air has none: llama.cpp runs them, and gguf-import
    sets use_qk_norm from the GGUF's attn_q_norm and gives back every weight bit for bit."""
    src = build_tiny_model("glm4moe", tmp_path / "src", use_qk_norm=True)
    path = tmp_path / "m.gguf"
    result = gguf_export(src, path, rules=TypeRules(Q.F32), check=export_check(src, True))
    assert result["verification"]["logits"]["max_abs"] < 1e-4
    assert "blk.1.attn_q_norm.weight" in open_gguf(path).by_name
    out = tmp_path / "hf"
    back = gguf_import(path, out, check=import_check(path, True))
    assert back["verification"]["logits"]["top1"] == 1.0
    assert json.loads((out / "config.json").read_text())["use_qk_norm"] is True
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and any("q_norm" in k for k in a)
    for name, t in a.items():
        assert torch.equal(b[name], t), name


def test_expert_groups_are_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    grouped = _copy(tiny_models["glm4moe"], tmp_path / "grouped")
    config = json.loads((grouped / "config.json").read_text())
    (grouped / "config.json").write_text(json.dumps({**config, "n_group": 2, "topk_group": 1}))
    with pytest.raises(UnsupportedError, match="expert groups"):
        gguf_export(grouped, tmp_path / "g.gguf", rules=TypeRules(Q.F32))
    proc = run_mtk("gguf-export", str(grouped), "-o", str(tmp_path / "g.gguf"))
    assert proc.returncode == 3 and "expert groups" in proc.stderr
    assert not (tmp_path / "g.gguf").exists()


def test_quantize_refuses_glm4moe(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Its dense leading layers and MoE layers need two layer plans, which mtk quantize does not have yet."""
    proc = run_mtk("quantize", str(tiny_models["glm4moe"]), "-o", str(tmp_path / "q"), "--method", "rtn")
    assert proc.returncode == 3 and "glm4_moe" in proc.stderr, proc.stderr
    assert not (tmp_path / "q").exists()


def test_llama_cpp_mtp_block_is_left_out_on_import(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp's converter writes GLM-4.5's MTP layer as the last block (Air: block_count 47 of which
    nextn_predict_layers 1): gguf-import leaves it out, as transformers does, and gives back the source's weights."""
    import numpy as np

    from mtk.formats.gguf_writer import write_gguf

    src = tiny_models["glm4moe"]
    plain = tmp_path / "plain.gguf"
    gguf_export(src, plain, rules=TypeRules(Q.F32))
    model = open_gguf(plain)
    tensors = {t.name: (Q.F32, model.tensor_bytes(t).numpy().view(np.float32).reshape(t.shape)) for t in model.tensors}
    tensors.update({"blk.3." + n[6:]: v for n, v in tensors.items() if n.startswith("blk.2.")})
    rng = np.random.default_rng(0)
    tensors["blk.3.nextn.eh_proj.weight"] = (Q.F32, rng.standard_normal((64, 128), dtype=np.float32))
    tensors["blk.3.nextn.enorm.weight"] = (Q.F32, np.ones(64, dtype=np.float32))
    tensors["blk.3.nextn.hnorm.weight"] = (Q.F32, np.ones(64, dtype=np.float32))
    meta = {**model.metadata, "glm4moe.block_count": 4, "glm4moe.nextn_predict_layers": 1}
    mtp = tmp_path / "mtp.gguf"
    write_gguf(mtp, meta, tensors)
    out = tmp_path / "hf"
    result = gguf_import(mtp, out, check=import_check(mtp, True))
    assert result["skipped"] == "skipped the last 1 blocks (glm4moe.nextn_predict_layers)"
    v = result["verification"]["logits"]
    assert v["max_abs"] < 1e-4 and v["top1"] == 1.0, v
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_nextn_predict_layers"]) == (3, 0)
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    for name, t in a.items():
        assert torch.equal(b[name], t), name
