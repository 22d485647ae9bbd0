"""Bytes-level formats: GGUF reader/writer (split files too), safetensors streaming, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from mtk.errors import OutputError
from mtk.formats.atomic import atomic_dir, atomic_file
from mtk.formats.checkpoint import HFCheckpoint
from mtk.formats.gguf_reader import open_gguf
from mtk.formats.gguf_writer import (
    GGUFStreamWriter,
    PlannedGGUFTensor,
    split_metadata,
    split_name,
    split_tensors,
    write_gguf,
)
from mtk.formats.safetensors_io import SafetensorsFile, SafetensorsWriter

Q = gguf.GGMLQuantizationType


def test_reader_matches_gguf_py(smollm2_gguf: Path) -> None:
    ours = open_gguf(smollm2_gguf)
    ref = gguf.GGUFReader(smollm2_gguf)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert (a.qtype, a.offset, a.nbytes) == (b.tensor_type, b.data_offset, b.n_bytes)
        assert a.shape == tuple(int(d) for d in reversed(b.shape))
    for key, field in ref.fields.items():
        if not key.startswith("GGUF."):
            assert ours.metadata[key] == field.contents(), key
    t = ours.by_name["blk.0.attn_q.weight"]
    ref_t = next(r for r in ref.tensors if r.name == t.name)
    assert np.array_equal(ours.tensor_bytes(t).numpy(), np.asarray(ref_t.data).reshape(-1).view(np.uint8))


def test_writer_round_trip_through_gguf_py(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((4, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(rng.standard_normal((3, 64)).astype(np.float32), Q.Q8_0)
    meta = {
        "general.architecture": "llama",
        "general.name": "tiny ✓",
        "llama.block_count": 2,
        "llama.rope.freq_base": 10000.0,
        "tokenizer.ggml.tokens": ["a", "b", "ü"],
        "tokenizer.ggml.scores": [0.0, -1.5, -2.0],
        "tokenizer.ggml.token_type": [1, 1, 3],
        "tokenizer.ggml.add_bos_token": True,
    }
    path = tmp_path / "t.gguf"
    write_gguf(path, meta, {"a.weight": (Q.F32, w32), "b.weight": (Q.Q8_0, q8)})
    ref = gguf.GGUFReader(path)
    assert {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")} == meta
    assert ref.fields["llama.block_count"].types == [gguf.GGUFValueType.UINT32]
    assert ref.fields["tokenizer.ggml.token_type"].types[-1] == gguf.GGUFValueType.INT32
    np.testing.assert_array_equal(ref.tensors[0].data, w32)
    np.testing.assert_array_equal(np.asarray(ref.tensors[1].data), q8)
    assert ref.tensors[1].tensor_type == Q.Q8_0 and list(ref.tensors[1].shape) == [64, 3]


def test_writer_rejects_wrong_size_and_order(tmp_path: Path) -> None:
    plan = [PlannedGGUFTensor("a", Q.F32, (2, 4)), PlannedGGUFTensor("b", Q.F32, (4,))]
    with open(tmp_path / "x.gguf", "wb") as fp:
        w = GGUFStreamWriter(fp, {"general.architecture": "llama"}, plan)
        with pytest.raises(ValueError, match="expected tensor a"):
            w.write("b", torch.zeros(4))
        with pytest.raises(ValueError, match="bytes"):
            w.write("a", torch.zeros(3))
        w.write("a", torch.zeros(2, 4))
        with pytest.raises(ValueError, match="only 1 of 2"):
            w.finish()


def write_split(src: Path, dst: Path, max_bytes: int) -> list[Path]:
    """Re-write a GGUF as llama.cpp-style split parts with mtk's writer."""
    model = open_gguf(src)
    meta = {k: v for k, v in model.metadata.items()}
    plan = [PlannedGGUFTensor(t.name, t.qtype, t.shape) for t in model.tensors]
    parts = split_tensors(plan, max_bytes)
    paths = []
    for i, part in enumerate(parts):
        path = split_name(dst, i, len(parts))
        with open(path, "wb") as fp:
            w = GGUFStreamWriter(
                fp, split_metadata(meta, i, len(parts), len(plan)), part, value_types=model.value_types
            )
            for t in part:
                w.write(t.name, model.tensor_bytes(model.by_name[t.name]))
            w.finish()
        paths.append(path)
    return paths


def test_split_files_read_as_one_model(smollm2_gguf: Path, tmp_path: Path) -> None:
    paths = write_split(smollm2_gguf, tmp_path / "smol.gguf", 40 << 20)
    assert len(paths) == 3 and paths[1].name == "smol-00002-of-00003.gguf"
    whole, split = open_gguf(smollm2_gguf), open_gguf(paths[1])
    assert [t.name for t in split.tensors] == [t.name for t in whole.tensors]
    assert split.metadata["llama.block_count"] == 30 and len(split.files) == 3
    for name in ("token_embd.weight", "blk.29.ffn_down.weight", "output_norm.weight"):
        assert torch.equal(split.tensor_bytes(split.by_name[name]), whole.tensor_bytes(whole.by_name[name]))
    from mtk.inspection import inspect

    report = inspect(paths[0])
    assert report["tensor_count"] == 272 and report["metadata"]["split.count"] == 3
    assert report["types"] == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    paths[2].unlink()
    from mtk.errors import InvalidFileError

    with pytest.raises(InvalidFileError, match="missing part"):
        open_gguf(paths[0])


def test_safetensors_writer_shards_and_index(tmp_path: Path) -> None:
    tensors = {f"t{i}": torch.randn(100, 50, dtype=torch.float32) for i in range(5)}
    tensors["h"] = torch.randn(7).to(torch.bfloat16)
    plan = [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with SafetensorsWriter(tmp_path, plan, max_shard_bytes=45_000) as w:
        for n, t in tensors.items():
            w.write(n, t)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    from safetensors.torch import load_file

    loaded = {}
    for shard in sorted(set(index["weight_map"].values())):
        loaded.update(load_file(tmp_path / shard))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[n], t) for n, t in tensors.items())
    ckpt = HFCheckpoint(tmp_path)
    assert all(torch.equal(t, tensors[n]) for n, t in ckpt)


def test_safetensors_reader_matches_library(tiny_models: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    path = tiny_models["qwen2"] / "model.safetensors"
    ours = SafetensorsFile(path)
    ref = load_file(path)
    assert ours.tensors.keys() == ref.keys()
    assert all(torch.equal(ours.get(n), t) for n, t in ref.items())


def test_atomic_file_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    with pytest.raises(OutputError, match="--overwrite"), atomic_file(target):
        pass
    assert target.read_bytes() == b"whole"


def test_atomic_dir_keeps_old_output_until_new_is_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "a").write_text("new, half")
        raise KeyboardInterrupt
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
    assert (target / "a").read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) != "0o700"


def test_full_disk_is_an_output_error(tmp_path: Path) -> None:
    """Writing to /dev/full fails with ENOSPC: a one-line OutputError, and the temporary file is gone."""
    import errno

    target = tmp_path / "x.bin"
    with pytest.raises(OutputError, match="no space left"), atomic_file(target) as tmp:
        tmp.write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
