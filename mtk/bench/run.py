"""``mtk bench``: every artifact measured on the same token windows, each in its own child process.

Steps: classify the artifacts (mtk.bench.artifacts); pick the reference (``--reference``, else the first
unquantized HF artifact; it is benchmarked as the first row, in float32); tokenize the text once with the
reference's tokenizer (else the first HF, ONNX, then GGUF artifact's) and refuse any artifact whose own
tokenizer gives other ids; cut llama.cpp's perplexity windows (mtk.bench.scoring); compute the reference's
log-probabilities once into the on-disk cache (mtk.bench.refcache), or reuse them; run one child per
artifact (mtk.bench.child); add sizes, bits per weight and the ``--fail-if`` gates.

The result (``--json`` on stdout, ``--json OUT.json`` to a file), schema ``mtk.bench/1``:

- ``text``: ``path``, ``chars`` (the prefix of the file that was tokenized), ``tokens``, ``tokenizer`` (whose);
- ``ctx``, ``windows``, ``scored_per_window``, ``bos_id`` (BOS put first in each window, or null),
  ``gen_tokens``, ``prompt_tokens``, ``device``, ``threads``;
- ``reference``: null, or ``path``, ``cache`` (folder), ``cached`` (true when it was reused), ``n_params``;
- ``artifacts``: one row each, the reference first; see ``ROW_FIELDS``;
- ``gates``: one per ``--fail-if``: ``expr`` and ``failed`` (``[{"artifact", "reason"}]``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtk.bench import refcache
from mtk.bench.artifacts import Artifact, count_params, describe, detect, tokenize
from mtk.bench.gates import Gate, MissingMetric
from mtk.bench.scoring import make_windows, scored_count
from mtk.compare import first_difference
from mtk.errors import InvalidFileError, MtkError, UsageError

SCHEMA = "mtk.bench/1"
# Every row has these keys (None where not measured): units in the names; speeds in tokens per second.
ROW_FIELDS = (
    "name", "path", "kind", "quantization", "quantized", "is_reference", "runtime", "files", "size_bytes",
    "n_params", "bpw", "ppl", "nll_mean", "kl_mean", "kl_max", "kl_p99", "top1", "load_s", "prefill_s",
    "prefill_tps", "decode_s", "decode_tps", "rss_peak_bytes", "vram_peak_bytes", "vocab",
)  # fmt: skip
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BenchConfig:
    """Measurement settings; validated here so that the API and the CLI refuse the same values."""

    ctx: int = 512
    windows: int = 8
    gen_tokens: int = 128
    prompt_tokens: int = 32
    device: str = "cpu"
    threads: int = max(1, os.cpu_count() or 1)

    def __post_init__(self) -> None:
        if self.ctx < 8:
            raise ValueError(f"--ctx must be at least 8 tokens, got {self.ctx}")
        if self.windows < 1:
            raise ValueError(f"--windows must be at least 1, got {self.windows}")
        if self.gen_tokens < 0 or self.prompt_tokens < 1:
            raise ValueError("--gen-tokens must be >= 0 and the decode prompt at least one token")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidFileError(f"{path}: no such text file") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise InvalidFileError(f"{path}: not a UTF-8 text file ({exc})") from None


def _names(paths: Sequence[Path]) -> list[str]:
    """Short unique display names: the file or folder name, with parents added until they differ."""
    depth = 1
    while True:
        names = ["/".join(Path(p).resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def _pick_reference(artifacts: list[Artifact], reference: Path | None) -> Artifact | None:
    if reference is not None:
        ref = detect(reference)
        if ref.kind != "hf":
            raise UsageError(f"--reference {reference}: must be an HF folder (run in transformers), not {ref.kind}")
        if ref.quantized:
            raise UsageError(f"--reference {reference}: a quantized folder ({ref.quantization}); give the float model")
        return ref
    return next((a for a in artifacts if a.kind == "hf" and not a.quantized), None)


def _token_ids(
    artifacts: list[Artifact], tokenizer: Artifact, text: str, need: int
) -> tuple[str, list[int], int | None]:
    """The shortest prefix of ``text`` (grown 2x at a time) that has ``need`` tokens, its ids and BOS.

    Every other artifact's own tokenizer must give the same ids on that prefix."""
    chars = min(len(text), need * 6)
    while True:
        prefix = text[:chars]
        base = tokenize(tokenizer, prefix)
        if len(base.ids) >= need or chars == len(text):
            break
        chars = min(len(text), chars * 2)
    if len(base.ids) < need:
        raise UsageError(f"the text has {len(base.ids)} tokens; the windows need {need}: lower --windows or --ctx")
    for a in artifacts:
        if a.path == tokenizer.path:
            continue
        other = tokenize(a, prefix)
        diff = first_difference(base.ids, other.ids)
        if diff is not None or other.bos_id != base.bos_id:
            where = f"token {diff}" if diff is not None else "whether BOS is added"
            raise UsageError(
                f"{a.path} tokenizes the text differently from {tokenizer.path} (first difference: {where}); "
                "bench compares artifacts of one model, scored on the same token ids"
            )
    return prefix, base.ids, base.bos_id


def _run_child(job: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """Run mtk.bench.child on ``job``; re-raise its failure as the same mtk error class."""
    import mtk.errors as errors

    job_path, result_path = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
    job_path.write_text(json.dumps(job), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this same mtk
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if job["kind"] == "hf" and job["device"] == "cpu":
        env.setdefault("GPTQMODEL_CPU_WORKERS", str(job["threads"]))
    proc = subprocess.run(
        [sys.executable, "-m", "mtk.bench.child", str(job_path), str(result_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    if not result_path.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MtkError(f"benchmarking {job['paths'][0]} crashed (exit status {proc.returncode}): {tail}")
    out = json.loads(result_path.read_text(encoding="utf-8"))
    if not out.pop("ok"):
        err = out["error"]
        cls = getattr(errors, err["type"], None)
        if isinstance(cls, type) and issubclass(cls, MtkError):
            raise cls(f"{job['paths'][0]}: {err['message']}")
        # One line by default (the last frame says where); the child's whole traceback with MTK_DEBUG=1.
        frames = [ln.strip() for ln in err["traceback"].splitlines() if ln.strip().startswith("File ")]
        where = err["traceback"] if os.environ.get("MTK_DEBUG", "") not in ("", "0") else (frames or ["?"])[-1]
        raise MtkError(f"benchmarking {job['paths'][0]} failed: {err['message']} ({where})")
    return out


def bench(
    artifact_paths: Sequence[Path],
    text_path: Path,
    *,
    reference: Path | None = None,
    config: BenchConfig | None = None,
    gates: Sequence[Gate] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure every artifact on the same windows of ``text_path``; see the module docstring for the result.

    Gates are evaluated and reported in ``gates``; raising on failures is the caller's choice (the CLI
    exits with VerificationError's code after printing the table).
    """
    config = config or BenchConfig()
    if not artifact_paths:
        raise UsageError("give at least one artifact to benchmark")
    resolved = [Path(p).resolve() for p in artifact_paths]
    if len(set(resolved)) != len(resolved):
        raise UsageError("an artifact is listed twice")
    artifacts = [detect(p) for p in artifact_paths]
    ref = _pick_reference(artifacts, reference)
    if ref is not None and all(a.path.resolve() != ref.path.resolve() for a in artifacts):
        artifacts.insert(0, ref)  # the reference is always measured, as the first row
    elif ref is not None:
        artifacts.sort(key=lambda a: a.path.resolve() != ref.path.resolve())
    text = read_text(text_path)
    need = config.ctx * config.windows
    tokenizer = ref or next((a for a in artifacts if a.kind != "gguf"), artifacts[0])
    prefix, ids, bos_id = _token_ids(artifacts, tokenizer, text, need)
    windows = make_windows(ids, config.ctx, config.windows, bos_id)
    names = _names([a.path for a in artifacts])
    with tempfile.TemporaryDirectory(prefix="mtk-bench-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "windows.npy", windows)
        rows, ref_info = _measure_all(artifacts, names, ref, windows, config, workdir, progress)
    n_params = next((n for a in ([ref] if ref else artifacts) if (n := count_params(a)) is not None), None)
    for row in rows:
        row["n_params"] = n_params
        row["bpw"] = row["size_bytes"] * 8 / n_params if n_params else None
    if ref_info is not None:
        ref_info["n_params"] = n_params
    result = {
        "schema": SCHEMA,
        "text": {"path": str(text_path), "chars": len(prefix), "tokens": len(ids), "tokenizer": str(tokenizer.path)},
        "ctx": config.ctx,
        "windows": config.windows,
        "scored_per_window": scored_count(config.ctx),
        "bos_id": bos_id,
        "gen_tokens": config.gen_tokens,
        "prompt_tokens": min(config.prompt_tokens, config.ctx),
        "device": config.device,
        "threads": config.threads,
        "reference": ref_info,
        "artifacts": rows,
    }
    result["gates"] = evaluate_gates(gates, rows)
    return result


def _measure_all(
    artifacts: list[Artifact],
    names: list[str],
    ref: Artifact | None,
    windows: np.ndarray,
    config: BenchConfig,
    workdir: Path,
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One child per artifact, the reference first (writing the log-probability cache when it is missing)."""
    from mtk.formats.atomic import atomic_dir

    base = {
        "device": config.device,
        "threads": config.threads,
        "windows": str(workdir / "windows.npy"),
        "gen_tokens": config.gen_tokens,
        "prompt_tokens": config.prompt_tokens,
    }
    rows: list[dict[str, Any]] = []
    ref_info = None
    entry = None
    if ref is not None:
        entry = refcache.entry_path(refcache.cache_key(ref.path, windows, config.device))
        ref_info = {"path": str(ref.path), "cache": str(entry), "cached": refcache.read_meta(entry) is not None}
    for i, (a, name) in enumerate(zip(artifacts, names, strict=True)):
        if progress:
            progress(i, len(artifacts), name)
        is_ref = ref is not None and a.path.resolve() == ref.path.resolve()
        job = {**base, "kind": a.kind, "paths": [str(p) for p in a.paths], "reference": is_ref, "cache": None}
        if entry is not None and ref_info is not None and is_ref and not ref_info["cached"]:
            with atomic_dir(entry, overwrite=True) as folder:
                job["cache"] = {"mode": "write", "folder": str(folder)}
                measured = _run_child(job, workdir, f"a{i}")
        else:
            if entry is not None:
                job["cache"] = {"mode": "read", "folder": str(entry)}
            measured = _run_child(job, workdir, f"a{i}")
        rows.append(_row(a, name, is_ref, measured))
    if progress:
        progress(len(artifacts), len(artifacts), "done")
    return rows, ref_info


def _row(a: Artifact, name: str, is_ref: bool, measured: dict[str, Any]) -> dict[str, Any]:
    row = {**describe(a), **measured, "name": name, "is_reference": is_ref, "n_params": None, "bpw": None}
    if is_ref:
        row["quantization"] = "float32 (reference)"
    return {k: row.get(k) for k in ROW_FIELDS}


def evaluate_gates(gates: Sequence[Gate], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gate's failing artifacts, with why (the expression held, or a metric it needs is unknown)."""
    ref = next((r for r in rows if r["is_reference"]), None)
    out = []
    for gate in gates:
        failed = []
        for row in rows:
            try:
                if gate.fails(row, ref):
                    failed.append({"artifact": row["name"], "reason": "true"})
            except MissingMetric as exc:
                failed.append({"artifact": row["name"], "reason": f"cannot be evaluated: {exc}"})
        out.append({"expr": gate.text, "failed": failed})
    return out
