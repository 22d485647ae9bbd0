"""``mtk run``: a recipe's steps, each run once per change of its inputs, then the manifest and the model cards.

A step is skipped when the store holds its key (:mod:`mtk.pipeline.store`); ``force`` reruns named steps (and
so, when their output changes, what depends on them). A failed step keeps every other finished artifact; the
steps that need its output are marked ``skipped``. The result is the manifest (``manifest.json``); its
``exit_code`` is the first failed step's exit code, 5 when only gates failed, 0 otherwise.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtk.errors import UsageError
from mtk.pipeline import manifest as manifest_mod
from mtk.pipeline.execute import run_local, run_ray
from mtk.pipeline.plan import CALIBRATION, EVALUATION, SOURCE, Step, argv, build_steps
from mtk.pipeline.recipe import Recipe
from mtk.pipeline.store import Store, content_sha256, expose, size_of, step_key, write_json

Progress = Callable[[int, int, str], None]


class Runner:
    """The state of one run: each step's key, record (when finished) and status."""

    def __init__(self, recipe: Recipe, store: Store, force: Sequence[str], version: str) -> None:
        self.recipe, self.store, self.version = recipe, store, version
        self.steps = build_steps(recipe)
        self.by_name = {s.name: s for s in self.steps}
        unknown = sorted(set(force) - set(self.by_name))
        if unknown:
            raise UsageError(f"--force {unknown[0]!r}: no such step; steps: {', '.join(self.by_name)}")
        self.force = set(force)
        self.status: dict[str, str] = {s.name: "pending" for s in self.steps}
        self.keys: dict[str, str] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.cached: set[str] = set()
        self.fixed = {SOURCE: recipe.source, CALIBRATION: recipe.calibration, EVALUATION: recipe.evaluation}
        self.fixed_hash = {k: content_sha256(p, store.hashes) for k, p in self.fixed.items() if p is not None}

    # --- keys and paths ----------------------------------------------------------------------------------------
    def input_of(self, ref: str) -> tuple[Path, str] | None:
        """The path and content hash of an input: the source, a text, or a finished step's output."""
        if ref.startswith("@"):
            path = self.fixed[ref]
            return (path, self.fixed_hash[ref]) if path is not None else None
        record = self.records.get(ref)
        if record is None:
            return None
        return self.store.output(self.keys[ref], record), record["sha256"]

    def key(self, step: Step) -> str | None:
        """The step's key, once every input is known."""
        hashes = {}
        for role, ref in [*step.inputs.items(), *((f"artifact:{n}", n) for n in step.artifacts)]:
            found = self.input_of(ref)
            if found is None:
                return None
            hashes[role] = found[1]
        return step_key(step.command, {"options": step.options, "payload": step.payload}, hashes, self.version)

    def paths(self, step: Step) -> dict[str, Path]:
        out = {role: self.input_of(ref)[0] for role, ref in step.inputs.items()}  # type: ignore[index]
        return out | {n: self.input_of(n)[0] for n in step.artifacts}  # type: ignore[index]

    # --- scheduling --------------------------------------------------------------------------------------------
    def ready(self) -> list[str]:
        """Steps whose inputs are done, prepared to run; steps found in the store finish here."""
        names: list[str] = []
        progressed = True
        while progressed:
            progressed = False
            for step in self.steps:
                if self.status[step.name] != "pending":
                    continue
                states = [self.status[d] for d in step.deps]
                if any(s in ("failed", "skipped") for s in states):
                    self.status[step.name] = "skipped"
                    progressed = True
                elif all(s == "done" for s in states):
                    if self._prepare(step):
                        names.append(step.name)
                    else:
                        progressed = True  # found in the store: done, which may make others ready
        return list(dict.fromkeys(names))

    def _prepare(self, step: Step) -> bool:
        """Record a cached step as done (False), or write its spec to run (True)."""
        if step.name in self.specs:
            return True
        key = self.key(step)
        assert key is not None  # every input is done
        self.keys[step.name] = key
        record = self.store.record(key)
        if record is not None and step.name not in self.force:
            self.records[step.name], self.status[step.name] = record, "done"
            self.cached.add(step.name)
            return False
        work = self.store.partial(key)
        r = step.resources
        self.specs[step.name] = {
            "argv": argv(step, self.paths(step), work / "out" / step.payload),
            "work": str(work),
            "threads": r.threads,
            "memory_gb": r.memory_gb,
            "gpus": r.gpus,
            "retries": r.retries,
            "kill_once": _kill_once(step.name),
        }
        return True

    def done(self, name: str, outcome: dict[str, Any]) -> None:
        step, spec = self.by_name[name], self.specs[name]
        self.outcomes[name] = outcome
        work = Path(spec["work"])
        output = work / "out" / step.payload
        if outcome["exit_code"] != 0 or not output.exists():
            self.status[name] = "failed"
            return
        record = {
            "step": name,
            "key": self.keys[name],
            "command": self.display(name, spec["argv"], work),
            "output": step.payload,
            "sha256": content_sha256(output),
            "size_bytes": size_of(output),
            "result": outcome["result"],
        }
        self.store.commit(self.keys[name], work, record)
        self.records[name], self.status[name] = record, "done"

    def display(self, name: str, args: list[str], work: Path) -> str:
        """The command as the manifest shows it: paths in the store's final folder, relative to the output root."""
        final = str(self.store.step_dir(self.keys[name]))
        shown = []
        for a in args:
            a = a.replace(str(work), final)
            if os.path.isabs(a) and Path(a).is_relative_to(self.recipe.root):
                a = os.path.relpath(a, self.recipe.root)
            shown.append(a)
        return "mtk " + " ".join(_quote(a) for a in shown)


def _quote(arg: str) -> str:
    return shlex.quote(arg)


def _kill_once(step: str) -> str | None:
    """MTK_RUN_KILL_ONCE=STEP=MARKER: the tests' fault injection (kill the worker running STEP, once)."""
    value = os.environ.get("MTK_RUN_KILL_ONCE", "")
    name, sep, marker = value.partition("=")
    return marker if sep and name == step else None


def run_recipe(
    recipe: Recipe,
    *,
    store: Path | None = None,
    jobs: int = 1,
    force: Sequence[str] = (),
    dry_run: bool = False,
    executor: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Run (or with ``dry_run`` only plan) a recipe; returns the manifest (or the plan)."""
    from mtk.version import __version__

    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if executor not in ("local", "ray"):
        raise UsageError(f"--executor must be local or ray, got {executor!r}")
    store_root = (store or recipe.root / ".mtk-store").resolve()
    runner = Runner(recipe, Store(store_root), force, __version__)
    if dry_run:
        return plan_only(runner)
    recipe.root.mkdir(parents=True, exist_ok=True)
    try:
        if executor == "ray":
            run_ray(runner.specs, runner.ready, runner.done, address)
        else:
            run_local(runner.specs, runner.ready, runner.done, jobs)
    finally:
        runner.store.hashes.save()
        for name, spec in runner.specs.items():
            if runner.status[name] != "done":
                shutil.rmtree(spec["work"], ignore_errors=True)
    exposed = expose_all(runner)
    result = manifest_mod.build(runner, exposed)
    write_json(recipe.root / "manifest.json", result)
    manifest_mod.write_cards(runner, result)
    return result


def plan_only(runner: Runner) -> dict[str, Any]:
    """What a run would do: each step, whether the store already holds it, and its command where known."""
    steps = []
    for step in runner.steps:
        known = all(runner.status.get(d) == "done" for d in step.deps)
        key = runner.key(step) if known else None
        record = runner.store.record(key) if key else None
        cached = record is not None and step.name not in runner.force
        if cached:
            runner.keys[step.name], runner.records[step.name], runner.status[step.name] = key, record, "done"
        steps.append({"name": step.name, "command": step.command, "deps": list(step.deps), "cached": cached})
    return {"schema": "mtk.run.plan/1", "recipe": str(runner.recipe.path), "steps": steps}


def expose_all(runner: Runner) -> dict[str, Path]:
    """Each finished artifact (and the imported checkpoint) at ``<root>/<name>``; bench.json at the root."""
    out: dict[str, Path] = {}
    for step in runner.steps:
        if runner.status[step.name] != "done":
            continue
        payload = runner.store.output(runner.keys[step.name], runner.records[step.name])
        if step.command == "bench":
            for written in (payload, payload.parent / "bench.png"):
                if written.exists():
                    shutil.copyfile(written, runner.recipe.root / written.name)
            out[step.name] = runner.recipe.root / "bench.json"
        else:
            out[step.name] = expose(payload, runner.recipe.root / step.name, step.payload)
    return out
