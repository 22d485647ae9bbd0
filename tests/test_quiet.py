"""stderr carries mtk's own lines only: nothing from torch, torchao, transformers or GPTQModel unless --verbose.

Each command runs in a fresh interpreter through the console module (as CI would), with verification on, so the
libraries that verification imports (transformers' quantizer table pulls torchao in; llama.cpp; onnxruntime;
GPTQModel) are all loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_mtk_process

# What mtk itself writes on stderr: its status lines and its error line.
MTK_LINES = re.compile(r"^(verified |validated |exporting |warning: |mtk: error: )")
# What the libraries wrote there before (torch's glog-style prefix, torchao, Python warnings, transformers notes).
THIRD_PARTY = re.compile(r"^([WIE]\d{4} |Failed to load|\[transformers\]|.*Warning: |\s+warnings\.warn|INFO |WARN )")


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_verifying_commands_print_only_mtk_lines(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = str(tiny_models["llama"])
    runs = {
        "gguf-export": ("gguf-export", model, "-o", str(tmp_path / "m.gguf"), "--type", "q8_0"),
        "quantize": ("quantize", model, "-o", str(tmp_path / "q"), "--method", "rtn", "--group-size", "32"),
        # compressed-tensors' loader draws tqdm bars with an explicit disable=False (see quiet.py, compressed_tensors)
        "quantize fp8": ("quantize", model, "-o", str(tmp_path / "fp8"), "--method", "fp8"),
        "export-onnx": ("export-onnx", model, "-o", str(tmp_path / "onnx")),
    }
    for name, args in runs.items():
        done = run_mtk_process(*args)
        assert done.returncode == 0, done.stderr
        lines = _lines(done.stderr)
        foreign = [line for line in lines if not MTK_LINES.match(line)]
        assert not foreign, f"{name}: third-party lines on stderr: {foreign[:3]}"
        assert any(line.startswith(("verified", "validated")) for line in lines), f"{name}: {lines}"


@pytest.mark.slow
def test_verbose_lets_the_libraries_speak(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The same run with --verbose shows the lines the default hides (so the first test can fail)."""
    done = run_mtk_process(
        "--verbose", "quantize", str(tiny_models["llama"]), "-o", str(tmp_path / "q"), "--method", "rtn",
        "--group-size", "32",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert any(THIRD_PARTY.match(line) for line in _lines(done.stderr)), done.stderr[-2000:]
