"""mtk inspect on real and tiny inputs, and clear one-line errors with exit code 4 for corrupt files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import run_mtk, run_mtk_process

from mtk.errors import InvalidFileError, UnsupportedError


def inspect_json(path: Path, *extra: str) -> dict:
    proc = run_mtk("--json", "inspect", str(path), *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_inspect_smollm2_gguf(smollm2_gguf: Path) -> None:
    report = inspect_json(smollm2_gguf)
    assert report["format"] == "gguf"
    assert report["architecture"] == "llama"
    assert report["tensor_count"] == 272
    assert report["types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert abs(report["parameters"] - 134.5e6) < 0.1e6
    assert report["metadata"]["llama.block_count"] == 30
    assert report["file_size"] == smollm2_gguf.stat().st_size
    # Q4_1 is 5 bits per weight, Q8_0 8.5, F32 32: the mix lands between 5 and 6.
    assert 5.0 < report["bits_per_weight"] < 6.0


def test_inspect_tensor_listing(smollm2_gguf: Path) -> None:
    report = inspect_json(smollm2_gguf, "--tensors")
    rows = {t["name"]: t for t in report["tensors"]}
    assert len(rows) == 272
    emb = rows["token_embd.weight"]
    assert emb["shape"] == [49152, 576] and emb["type"] == "Q8_0"
    assert emb["bytes"] == 49152 * 576 // 32 * 34  # 32 int8 + one f16 scale per block


def test_inspect_hf_folder_and_safetensors_file(tiny_models: dict[str, Path]) -> None:
    folder = tiny_models["llama"]
    report = inspect_json(folder)
    assert report["format"] == "hf" and report["architecture"] == "LlamaForCausalLM"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    n_params = sum(p.numel() for p in model.state_dict().values())
    # Tied embeddings: the state dict lists lm_head, the file does not.
    assert report["parameters"] == n_params - model.lm_head.weight.numel() * model.config.tie_word_embeddings
    assert report["types"] == {"F32": report["tensor_count"]}
    assert report["bits_per_weight"] == 32.0
    file_report = inspect_json(folder / "model.safetensors")
    assert file_report["format"] == "safetensors"
    assert file_report["tensor_count"] == report["tensor_count"]


def test_inspect_onnx(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny-matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    report = inspect_json(path)
    assert report["format"] == "onnx"
    assert report["parameters"] == 32 and report["types"] == {"FLOAT": 1}
    assert report["metadata"]["inputs"] == ["x"] and report["metadata"]["outputs"] == ["y"]


def _corrupt_gguf_offsets(src: Path, dst: Path) -> None:
    """Copy the header of a real GGUF and cut the file in the middle of the tensor data."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def _lying_safetensors(path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 * 1024 * 1024]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 100)


CORRUPT_CASES = {
    "truncated_header.gguf": lambda src, p: p.write_bytes(src.read_bytes()[:5000]),
    "offsets_past_end.gguf": _corrupt_gguf_offsets,
    "lying_header.safetensors": lambda src, p: _lying_safetensors(p),
    "random.gguf": lambda src, p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
    "random.safetensors": lambda src, p: p.write_bytes(np.random.default_rng(1).bytes(4096)),
    "random.onnx": lambda src, p: p.write_bytes(np.random.default_rng(2).bytes(4096)),
    "empty.gguf": lambda src, p: p.write_bytes(b""),
    "empty.safetensors": lambda src, p: p.write_bytes(b""),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_CASES))
def test_corrupt_input_is_one_line_exit_4(name: str, smollm2_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / name
    CORRUPT_CASES[name](smollm2_gguf, path)
    for command in (["inspect", str(path)], ["gguf-import", str(path), "-o", str(tmp_path / "out")]):
        if command[0] == "gguf-import" and not name.endswith(".gguf"):
            continue
        proc = run_mtk(*command)
        assert proc.returncode == InvalidFileError.exit_code, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mtk: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no partial output left beside it


def test_gguf_offset_past_end_is_named(smollm2_gguf: Path, tmp_path: Path) -> None:
    """A GGUF whose header is intact but whose last tensor points past the end names that tensor."""
    from mtk.formats.gguf_reader import open_gguf

    path = tmp_path / "cut.gguf"
    data = smollm2_gguf.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InvalidFileError, match="tensor .* ends at byte"):
        open_gguf(path)


def test_pickle_checkpoint_refused_without_flag(tmp_path: Path) -> None:
    import torch

    from mtk.formats.checkpoint import HFCheckpoint

    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsupportedError, match="allow_pickle=True"):
        HFCheckpoint(tmp_path)
    assert torch.equal(HFCheckpoint(tmp_path, allow_pickle=True).get("w"), torch.ones(2))
    proc = run_mtk("inspect", str(tmp_path / "pytorch_model.bin"))
    assert proc.returncode == UnsupportedError.exit_code


def test_missing_file_and_usage_errors(tmp_path: Path) -> None:
    proc = run_mtk("inspect", str(tmp_path / "nope.gguf"))
    assert proc.returncode == InvalidFileError.exit_code
    proc = run_mtk("inspect")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_mtk("no-such-command")
    assert proc.returncode == 2


def test_help_lists_only_working_commands() -> None:
    proc = run_mtk_process("--help")
    assert proc.returncode == 0
    assert "inspect" in proc.stdout and "gguf-import" in proc.stdout


def test_debug_variable_shows_traceback(tmp_path: Path) -> None:
    import os

    path = tmp_path / "e.gguf"
    path.write_bytes(b"")
    proc = run_mtk_process("inspect", str(path), env={**os.environ, "MTK_DEBUG": "1"})
    assert proc.returncode == InvalidFileError.exit_code
    assert "Traceback" in proc.stderr
