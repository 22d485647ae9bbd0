"""The artifact kinds (mtk.artifacts.kinds): each recognises its own files and only those; the llama.cpp wrapper
refuses a corrupt file with exit code 4; what the bench's GGUF and ONNX children import holds no torch; the checks
the commands hand the converters are on or off as asked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtk.artifacts import gguf, hf, llama_cpp, onnx, quantized
from mtk.artifacts.kinds import KINDS, detect
from mtk.converters.gguf_types import TYPE_NAMES, TypeRules
from mtk.converters.hf_to_gguf import gguf_export
from mtk.errors import InvalidFileError


@pytest.fixture(scope="module")
def samples(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One path of each kind (the quantized and ONNX folders hold only what recognising them reads)."""
    root = tmp_path_factory.mktemp("kinds")
    gguf_export(tiny_models["llama"], root / "m.gguf", rules=TypeRules(TYPE_NAMES["f32"]))
    q = root / "gptq"
    q.mkdir()
    qc = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (q / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qc}))
    (q / "model.safetensors").write_bytes(b"")
    o = root / "onnx"
    o.mkdir()
    (o / "config.json").write_text("{}")  # an ONNX folder carries the source's config.json too
    export = {"quantize": "int4", "block_size": 32}
    manifest = {"model": "model.onnx", "task": "text-generation-with-past", "export": export}
    (o / "mtk_onnx.json").write_text(json.dumps(manifest))
    (o / "model.onnx").write_bytes(b"")
    return {"gguf": root / "m.gguf", "hf": tiny_models["llama"], "quantized-hf": q, "onnx": o}


def test_each_path_is_exactly_one_kind(samples: dict[str, Path], tmp_path: Path) -> None:
    assert set(KINDS.names()) == set(samples)
    for name, path in samples.items():
        assert [k for k in KINDS.names() if KINDS.get(k).matches(path)] == [name], path
        assert detect(path) is KINDS.get(name)
    (tmp_path / "notes.txt").write_text("GGU")
    (tmp_path / "empty").mkdir()
    assert detect(tmp_path / "notes.txt") is None and detect(tmp_path / "empty") is None
    assert detect(tmp_path / "missing.gguf") is None


def test_descriptions(samples: dict[str, Path]) -> None:
    g = gguf.describe(samples["gguf"])
    assert (g.paths, g.quantization, g.quantized) == ((samples["gguf"],), "F32", False)
    assert gguf.count_params(samples["gguf"]) == hf.count_params(samples["hf"]) > 0
    assert hf.describe(samples["hf"]).weights == (samples["hf"] / "model.safetensors",)
    q = quantized.describe(samples["quantized-hf"])
    assert (q.quantization, q.quantized) == ("gptq 4-bit g128", True)
    o = onnx.describe(samples["onnx"])
    assert (o.quantization, o.quantized, o.task) == ("int4 g32", True, "text-generation-with-past")


def test_bench_gguf_child_loads_no_torch(samples: dict[str, Path]) -> None:
    """A GGUF bench child opens the file and scores a window through the runner without torch (its RSS is its
    own); the ONNX runtime wrapper imports none either."""
    pytest.importorskip("llama_cpp")
    code = (
        "import sys, numpy as np, mtk.bench.child, mtk.artifacts.onnx_runtime\n"
        "from mtk.bench.runners import open_runner\n"
        f"r = open_runner('gguf', [{str(samples['gguf'])!r}], device='cpu', threads=1, n_ctx=16, reference=False)\n"
        "assert r.logits(np.arange(8)).shape == (8, r.vocab)\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_llama_cpp_refuses_a_corrupt_file(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from mtk.artifacts.llama_cpp import LlamaCpp

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(InvalidFileError, match="llama.cpp cannot load") as err:
        LlamaCpp(bad)
    assert err.value.exit_code == 4


def test_checks_are_on_or_off_as_asked(samples: dict[str, Path]) -> None:
    assert gguf.import_check(samples["gguf"], verify=False) is None
    assert gguf.export_check(samples["hf"], verify=False) is None
    assert callable(gguf.import_check(samples["gguf"], verify=True))
    assert callable(gguf.export_check(samples["hf"], verify=True))
    default = gguf.import_check(samples["gguf"])
    assert (default is not None) == llama_cpp.available()
