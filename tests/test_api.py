"""``import mtk``: the Python API the CLI uses. One call per function on a tiny llama, each result compared with
what the CLI's --json prints for the same options; results are frozen; errors are mtk's; no torch on import."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_mtk

import mtk
from mtk.results import Result

# Keys whose values differ between two runs of the same work.
TIMINGS = {"seconds", "convert_seconds", "load_s", "prefill_tps", "decode_tps", "rss_peak_bytes", "vram_peak_bytes"}


def _stable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _cli_json(*args: str) -> dict[str, Any]:
    done = run_mtk("--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_import_mtk_loads_no_torch() -> None:
    code = (
        "import sys, mtk; heavy = [m for m in ('torch', 'transformers', 'numpy', 'gguf', 'safetensors') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"import mtk imported {done.stdout.strip()}"


def test_every_command_has_an_api_function() -> None:
    from mtk.cli.app import app

    commands = {c.name for c in app.registered_commands}
    assert {name.replace("-", "_") for name in commands} <= set(mtk.__all__)


def test_api_results_are_the_cli_json(tiny_models: dict[str, Path], tmp_path: Path, bible_text: str) -> None:
    hf = tiny_models["llama"]
    calib = tmp_path / "calib.txt"
    calib.write_text(bible_text[:20_000], encoding="utf-8")

    r = mtk.inspect(hf)
    assert r.to_dict() == _cli_json("inspect", str(hf))
    assert r.architecture == "LlamaForCausalLM"

    plan = mtk.gguf_export(hf, type="q4_k_m", dry_run=True)
    assert plan.dry_run and plan.to_dict() == _cli_json("gguf-export", str(hf), "--type", "q4_k_m", "--dry-run")

    out = mtk.gguf_export(hf, tmp_path / "a.gguf", type="q8_0", verify=False)
    cli = _cli_json("gguf-export", str(hf), "-o", str(tmp_path / "b.gguf"), "--type", "q8_0", "--no-verify")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert _stable({**out.to_dict(), "output": None}) == _stable({**cli, "output": None})
    assert out.output == tmp_path / "a.gguf" and out.types["Q8_0"] > 0

    imp = mtk.gguf_import(tmp_path / "a.gguf", tmp_path / "hf-a", verify=False)
    assert imp.architecture == "LlamaForCausalLM" and (tmp_path / "hf-a" / "config.json").is_file()

    q = mtk.quantize(hf, tmp_path / "rtn", method="rtn", group_size=32, verify=False)
    assert q.method == "rtn" and q.format == "gptq" and q["bits"] == 4

    im = mtk.imatrix(hf, calib, tmp_path / "imatrix.gguf", samples=2, seq_len=32)
    assert im.chunks == 2 and (tmp_path / "imatrix.gguf").is_file()


def test_results_are_frozen(tiny_models: dict[str, Path]) -> None:
    r = mtk.inspect(tiny_models["llama"])
    assert isinstance(r, Result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.data = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.data["format"] = "x"  # type: ignore[index]
    plain = r.to_dict()
    plain["format"] = "changed"  # a copy: the result is unchanged
    assert r["format"] == "hf"
    json.dumps(r.to_dict())


def test_errors_are_mtks(tmp_path: Path) -> None:
    with pytest.raises(mtk.InvalidFileError):
        mtk.inspect(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 20)
    with pytest.raises(mtk.InvalidFileError):
        mtk.gguf_import(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
