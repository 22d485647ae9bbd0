"""The run's record: ``manifest.json`` (every artifact, how it was made, how it measured) and a model card per
artifact (``README.md`` with Hugging Face front matter and the bench table).

Timings and hosts are kept only under ``steps``: two runs of the same recipe on the same inputs, locally and on
Ray, give manifests that differ nowhere else.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.bench.gates import MissingMetric, parse_gate

if TYPE_CHECKING:
    from mtk.pipeline.run import Runner

SCHEMA = "mtk.run/1"
RUNTIMES = ("torch", "transformers", "gguf", "llama-cpp-python", "onnxruntime", "gptqmodel", "compressed-tensors")
BENCH_FIELDS = ("ppl", "kl_mean", "top1", "size_bytes", "bpw", "decode_tps", "prefill_tps")
LIBRARY = {"gguf-export": "gguf", "gguf-import": "transformers", "quantize": "transformers", "export-onnx": "onnx"}


def versions() -> dict[str, str | None]:
    from mtk.version import __version__

    found: dict[str, str | None] = {"mtk": __version__, "python": platform.python_version()}
    for dist in RUNTIMES:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def build(runner: Runner, exposed: Mapping[str, Path]) -> dict[str, Any]:
    recipe = runner.recipe
    rows = _bench_rows(runner, _bench_result(runner))
    global_gates = tuple(recipe.bench.get("fail_if", ()))
    artifacts = []
    for step in runner.steps:
        if step.artifact is None:
            continue
        entry = _artifact_entry(runner, step.name, exposed, rows, global_gates + step.artifact.fail_if)
        artifacts.append(entry)
    steps = [_step_entry(runner, s.name) for s in runner.steps]
    failed = [s for s in steps if s["status"] == "failed"]
    gate_failures = [(a["name"], g["expr"]) for a in artifacts for g in a["gates"] if g["failed"]]
    exit_code = failed[0]["exit_code"] if failed else (5 if gate_failures else 0)
    return {
        "schema": SCHEMA,
        "recipe": str(recipe.path),
        "root": str(recipe.root),
        "source": {
            "path": str(recipe.source),
            "name": recipe.name,
            "sha256": runner.fixed_hash["@source"],
            "base_model": recipe.base_model,
        },
        "versions": versions(),
        "status": "failed" if failed else ("gates failed" if gate_failures else "ok"),
        "exit_code": exit_code,
        "error": _error(failed, gate_failures),
        "artifacts": artifacts,
        "bench": _rel(recipe.root, exposed["bench"]) if "bench" in exposed else None,
        "steps": steps,
    }


def _error(failed: list[dict[str, Any]], gates: list[tuple[str, str]]) -> str | None:
    if failed:
        return f"step {failed[0]['name']!r} failed (exit {failed[0]['exit_code']}): {failed[0]['error']}"
    if gates:
        who = ", ".join(f"{name} ({expr})" for name, expr in gates)
        return f"gates failed: {who}"
    return None


def _rel(root: Path, path: Path) -> str:
    return os.path.relpath(path, root)


def _bench_rows(runner: Runner, bench: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Bench rows by step name (matched on the store path each artifact was measured at)."""
    if not bench:
        return {}
    by_path = {str(Path(r["path"]).resolve()): r for r in bench["artifacts"]}
    out = {}
    for name in [*runner.by_name["bench"].artifacts, runner.by_name["bench"].inputs["reference"]]:
        found = runner.input_of(name)
        if found is not None and str(found[0].resolve()) in by_path:
            out[name] = by_path[str(found[0].resolve())]
    return out


def _artifact_entry(
    runner: Runner, name: str, exposed: Mapping[str, Path], rows: Mapping[str, dict[str, Any]], gates: tuple[str, ...]
) -> dict[str, Any]:
    step, status = runner.by_name[name], runner.status[name]
    record = runner.records.get(name) if status == "done" else None
    result = (record or {}).get("result") or {}
    row = rows.get(name)
    ref = next((r for r in rows.values() if r.get("is_reference")), None)
    judged = [_judge(g, row, ref) for g in gates] if status == "done" else []
    return {
        "name": name,
        "command": step.command,
        "status": status if not any(g["failed"] for g in judged) else "gates failed",
        "path": _rel(runner.recipe.root, exposed[name]) if name in exposed else None,
        "sha256": record["sha256"] if record else None,
        "size_bytes": record["size_bytes"] if record else None,
        "bits_per_weight": row.get("bpw") if row else None,
        "bench": {k: row.get(k) for k in BENCH_FIELDS} if row else None,
        "verification": result.get("verification"),
        "gates": judged,
        "key": runner.keys.get(name),
        "mtk_command": record["command"] if record else None,
    }


def _judge(text: str, row: Mapping[str, Any] | None, ref: Mapping[str, Any] | None) -> dict[str, Any]:
    """A gate against the artifact's bench row: failed when it holds, or when it cannot be evaluated."""
    if row is None:
        return {"expr": text, "failed": True, "reason": "no bench row for this artifact"}
    try:
        held = parse_gate(text).fails(row, ref)
    except MissingMetric as exc:
        return {"expr": text, "failed": True, "reason": f"cannot be evaluated: {exc}"}
    return {"expr": text, "failed": held, "reason": "true" if held else None}


def _step_entry(runner: Runner, name: str) -> dict[str, Any]:
    outcome = runner.outcomes.get(name, {})
    return {
        "name": name,
        "command": runner.by_name[name].command,
        "status": runner.status[name],
        "cached": name in runner.cached,
        "key": runner.keys.get(name),
        "exit_code": outcome.get("exit_code", 0 if runner.status[name] == "done" else None),
        "error": outcome.get("error"),
        "attempts": outcome.get("attempts", 0),
        "seconds": outcome.get("seconds"),
        "host": outcome.get("host"),
    }


def write_cards(runner: Runner, manifest: Mapping[str, Any]) -> None:
    """README.md in each artifact's folder: front matter, what made it, the bench table, its gates."""
    ref = next((r for r in _bench_rows(runner, _bench_result(runner)).values() if r.get("is_reference")), None)
    for entry in manifest["artifacts"]:
        if entry["path"] is None:
            continue
        folder = runner.recipe.root / entry["name"]
        text = card(entry, manifest, ref)
        tmp = folder / ".README.md.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / "README.md")


def _bench_result(runner: Runner) -> Mapping[str, Any] | None:
    return runner.records.get("bench", {}).get("result") if runner.status.get("bench") == "done" else None


def card(entry: Mapping[str, Any], manifest: Mapping[str, Any], ref: Mapping[str, Any] | None) -> str:
    library = LIBRARY.get(entry["command"], "transformers")
    tags = ["mtk", library, *_tags(entry)]
    lines = [
        "---",
        f"base_model: {manifest['source']['base_model']}",
        f"library_name: {library}",
        "tags:",
        *(f"- {t}" for t in dict.fromkeys(tags)),
        "quantized_by: mtk",
        "---",
        "",
        f"# {manifest['source']['name']} — {entry['name']}",
        "",
        f"Made by `mtk run` (mtk {manifest['versions']['mtk']}) from `{manifest['source']['base_model']}`.",
        "",
        "```bash",
        str(entry["mtk_command"]),
        "```",
        "",
        f"sha256 of the artifact: `{entry['sha256']}` ({entry['size_bytes']:,} bytes).",
    ]
    if entry["bench"]:
        lines += ["", "| metric | this artifact | reference |", "|---|---|---|"]
        for key in ("ppl", "kl_mean", "top1", "bpw", "size_bytes"):
            mine, theirs = entry["bench"].get(key), (ref or {}).get(key)
            lines.append(f"| {key} | {_fmt(mine)} | {_fmt(theirs)} |")
    if entry["gates"]:
        lines += [
            "",
            "Gates: " + "; ".join(f"`{g['expr']}` {'FAILED' if g['failed'] else 'passed'}" for g in entry["gates"]),
        ]
    return "\n".join(lines) + "\n"


def _tags(entry: Mapping[str, Any]) -> list[str]:
    command = entry["mtk_command"] or ""
    words = command.split()
    found = []
    for flag in ("--type", "--method", "--format", "--quantize"):
        if flag in words and words.index(flag) + 1 < len(words):
            found.append(words[words.index(flag) + 1])
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


__all__ = ["build", "card", "versions", "write_cards"]
