"""scripts/gpu_check.py runs on the CPU in the suite (small sizes), so that it cannot rot before a GPU comes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mtk.kernels import types

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def test_gpu_check_runs_every_section_on_the_cpu(tiny_models: dict[str, Path], bible_text: str, tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(bible_text[:60000], encoding="utf-8")
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--model", str(tiny_models["llama"])]
    proc = subprocess.run([*cmd, "--text", str(text), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["ok"] and report["device"] == "cpu" and report["card"].startswith("CPU")
    assert [r["type"] for r in report["dequant"]] == [row.name for row in types.rows(reads=True)]
    assert [r["type"] for r in report["encoders"]] == [row.name for row in types.rows(writes=True)]
    assert all(r["ok"] and r["mweights_per_s"] > 0 for r in report["dequant"] + report["encoders"])
    assert [r["method"] for r in report["quantize"]] == ["gptq", "awq", "rtn"]
    assert report["bench"]["ppl"] > 1 and report["imatrix"]["seconds"] > 0
    rows = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| encoders | Q4_K | True |" in rows and "| bench | ppl" in rows
