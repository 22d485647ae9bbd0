"""The bench child: ``python -m mtk.bench.child JOB.json RESULT.json`` measures one artifact in its own process.

Running each artifact in a fresh interpreter makes ``rss_peak_bytes`` (the process's VmHWM; see peak_rss_bytes)
and ``vram_peak_bytes`` (``torch.cuda.max_memory_allocated``) the artifact's own, not the sum of everything
loaded before it. The job (written by mtk.bench.run) says:

- ``kind`` (hf | gguf | onnx), ``paths`` (the folder, or the GGUF's parts), ``device``, ``threads``;
- ``windows``: a ``.npy`` of int64 ``(count, ctx)`` token ids (see mtk.bench.scoring);
- ``gen_tokens``/``prompt_tokens``: greedy decode steps timed after a prompt cut from the first window;
- ``reference``: True for the reference run (float32 weights in transformers);
- ``cache``: ``{"mode": "write"|"read", "folder": ...}`` for the reference log-probabilities, or None.

The result file gets ``{"ok": true, ...measurements}`` or ``{"ok": false, "error": {"type", "message"}}``;
nothing is printed on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    On Linux ``VmHWM`` from /proc/self/status: ``getrusage``'s ``ru_maxrss`` survives ``execve`` and so
    reports the parent's peak when the parent was bigger (measured: 362 MB for a 56 MB llama.cpp child
    started from a parent holding torch). Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _score_windows(runner: Any, windows: np.ndarray, cache: dict[str, Any] | None) -> tuple[dict[str, Any], float]:
    """Perplexity (and KL/top-1 against the cache) over every window; also the seconds spent in the runtime."""
    from mtk.bench import refcache
    from mtk.bench.scoring import Totals, reference_top1, score_window, scored_count
    from mtk.errors import UnsupportedError

    count, ctx = windows.shape
    n = scored_count(ctx)
    totals, seconds = Totals(), 0.0
    reader = writer = None
    if cache and cache["mode"] == "read":
        reader = refcache.LogprobReader(Path(cache["folder"]))
        if reader.shape != (count, n, runner.vocab):
            raise UnsupportedError(
                f"logits have {runner.vocab} entries, the reference's {reader.shape[2]}: "
                "bench compares artifacts of one model with one vocabulary"
            )
    elif cache and cache["mode"] == "write":
        writer = refcache.LogprobWriter(Path(cache["folder"]), count, n, runner.vocab)
    out_logp = np.empty((n, runner.vocab), dtype=np.float16) if writer else None
    for i, window in enumerate(windows):
        start = time.perf_counter()
        logits = runner.logits(window)
        seconds += time.perf_counter() - start
        if logits.shape != (ctx, runner.vocab):
            raise UnsupportedError(f"the runtime returned logits {logits.shape}, expected {(ctx, runner.vocab)}")
        if writer is not None and out_logp is not None:
            # Each row block of out_logp is filled before it is read back as the (float16) reference.
            top1 = reference_top1(logits, ctx)
            score_window(logits, window, totals, ref_logp=out_logp, ref_top1=top1, out_logp=out_logp)
            writer.write(i, out_logp, top1)
        elif reader is not None:
            ref_logp, ref_top1 = reader.window(i)
            score_window(logits, window, totals, ref_logp=ref_logp, ref_top1=ref_top1)
        else:
            score_window(logits, window, totals)
        del logits
    result = totals.summary()
    if writer is not None:
        writer.finish({"ppl": result["ppl"], "nll_mean": result["nll_mean"], "vocab": runner.vocab})
    if reader is not None:
        reader.close()
    return result, seconds


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Load, score every window, time greedy decoding; see the module docstring for the job's fields."""
    from mtk.bench.runners import import_runtime, open_runner

    windows = np.load(job["windows"])
    count, ctx = windows.shape
    prompt = windows[0, : min(job["prompt_tokens"], ctx)]
    import_runtime(job["kind"], Path(job["paths"][0]))
    start = time.perf_counter()
    runner = open_runner(
        job["kind"],
        job["paths"],
        device=job["device"],
        threads=job["threads"],
        n_ctx=max(ctx, len(prompt) + job["gen_tokens"] + 1),
        reference=job["reference"],
    )
    load_s = time.perf_counter() - start
    scores, prefill_s = _score_windows(runner, windows, job["cache"])
    decode_s = runner.decode_seconds(prompt, job["gen_tokens"]) if job["gen_tokens"] > 0 else None
    result = {
        **scores,
        "runtime": runner.runtime,
        "vocab": runner.vocab,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "prefill_tps": count * ctx / prefill_s,
        "decode_s": decode_s,
        "decode_tps": job["gen_tokens"] / decode_s if decode_s else None,
        "vram_peak_bytes": runner.vram_peak_bytes(),
    }
    runner.close()
    result["rss_peak_bytes"] = peak_rss_bytes()
    return result


def main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    try:
        out: dict[str, Any] = {"ok": True, **measure(job)}
    except Exception as exc:  # reported to the parent, which raises it as the same mtk error class
        from mtk.errors import MtkError

        kind = type(exc).__name__ if isinstance(exc, MtkError) else "internal"
        out = {"ok": False, "error": {"type": kind, "message": f"{exc}", "traceback": traceback.format_exc()}}
        if kind == "internal":
            out["error"]["message"] = f"{type(exc).__name__}: {exc}"
    result_path.write_text(json.dumps(out), encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main(sys.argv[1:]))
