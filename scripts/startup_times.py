"""Start-up time of each command: ``mtk CMD --help`` in a fresh interpreter (median of N), and which heavy
libraries the command's module imports before it runs (none should: each imports them when it works).

    python scripts/startup_times.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ("inspect", "gguf-import", "gguf-export", "quantize", "export-onnx", "imatrix", "bench")
HEAVY = ("torch", "transformers", "numpy", "gguf", "onnx", "onnxruntime", "llama_cpp", "gptqmodel", "torchao")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    probe = (
        "import sys; from mtk.cli.app import main\n"
        "try:\n    main([{cmd!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)"
    )
    print(f"{'command':<12} {'--help median s':>16}  heavy modules loaded")
    for cmd in ("(import mtk)", *COMMANDS):
        if cmd == "(import mtk)":
            report = f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
            code = "import sys, mtk; " + report
        else:
            code = probe.format(cmd=cmd, heavy=HEAVY)
        times, heavy = [], ""
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
            heavy = done.stderr.strip().rpartition("HEAVY=")[2]
        print(f"{cmd:<12} {statistics.median(times):>16.3f}  {heavy or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
