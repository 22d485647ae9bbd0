"""Running the steps: each is one ``mtk`` command in its own process, on this machine or as a Ray task.

:func:`execute` runs one prepared step (a plain dict, so that Ray can ship it) and returns its outcome. The local
executor starts ready steps while their declared threads, memory and GPUs fit the machine and ``jobs`` allows;
the Ray executor hands each step to the cluster as a task with the same resource request and lets Ray place it,
retrying a task whose worker died ``retries`` times. Steps write into the store's ``.partial`` folders, which
must be on a file system every node sees.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtk.errors import EnvironmentProblem, UsageError

# Exit codes that say the input or the options are wrong: running the step again cannot help.
FINAL_CODES = {0, 2, 3, 4, 5, 7, 130, 143}


@dataclass(frozen=True)
class Capacity:
    """What this machine offers the steps: CPU threads, memory in GB and GPUs."""

    threads: int
    memory_gb: float
    gpus: int

    @classmethod
    def here(cls) -> Capacity:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return cls(os.cpu_count() or 1, pages * size / 1e9, _gpu_count())


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def execute(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one step: ``spec`` has ``argv`` (after ``mtk``), ``work`` (its .partial folder), ``threads``,
    ``retries`` (local retries of a crash) and optionally ``kill_once`` (a marker path: the tests' way to kill
    the worker in the middle of a step, once). Returns exit code, the command's JSON result, seconds, host."""
    work = Path(spec["work"])
    env = dict(os.environ)
    if spec.get("threads"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(spec["threads"])
    start = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        with open(work / "log.txt", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mtk", *spec["argv"]], stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )
            _maybe_die(spec, proc)
            stdout, _ = proc.communicate()
        if proc.returncode in FINAL_CODES or attempts > int(spec.get("retries", 0)):
            break
    try:
        result = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        result = None
    log_tail = (work / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
    return {
        "exit_code": proc.returncode,
        "result": result,
        "error": log_tail[0] if proc.returncode and log_tail else None,
        "seconds": round(time.monotonic() - start, 3),
        "host": platform.node(),
        "attempts": attempts,
    }


def _maybe_die(spec: Mapping[str, Any], proc: subprocess.Popen[str]) -> None:
    marker = spec.get("kill_once")
    if not marker or Path(marker).exists():
        return
    Path(marker).write_text("killed once\n", encoding="utf-8")
    time.sleep(0.5)  # in the middle of the step
    proc.kill()
    os.kill(os.getpid(), signal.SIGKILL)


Done = Callable[[str, dict[str, Any]], None]


def run_local(specs: Mapping[str, dict[str, Any]], ready: Callable[[], list[str]], done: Done, jobs: int) -> None:
    """Start steps from ``ready()`` (names whose inputs are done) while they fit; ``done`` gets each outcome and
    may make more steps ready."""
    cap = Capacity.here()
    running: dict[Future[dict[str, Any]], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while True:
            for name in ready():
                if name in running.values() or len(running) >= jobs:
                    continue
                if running and not _fits(specs[name], [specs[n] for n in running.values()], cap):
                    continue
                specs[name]["started"] = True
                running[pool.submit(execute, specs[name])] = name
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done(running.pop(future), future.result())


def _fits(spec: Mapping[str, Any], others: list[Mapping[str, Any]], cap: Capacity) -> bool:
    """Whether ``spec`` fits beside the running ``others`` (a step alone always runs)."""
    threads = sum(s["threads"] or cap.threads for s in [*others, spec])
    memory = sum(s["memory_gb"] for s in [*others, spec])
    gpus = sum(s["gpus"] for s in [*others, spec])
    return threads <= cap.threads and memory <= cap.memory_gb and gpus <= max(cap.gpus, spec["gpus"])


def run_ray(
    specs: Mapping[str, dict[str, Any]], ready: Callable[[], list[str]], done: Done, address: str | None
) -> None:
    """The same graph as Ray tasks on an existing cluster (``address``; a local one when None and none is up)."""
    try:
        import ray
    except ImportError:
        raise EnvironmentProblem("--executor ray needs Ray: pip install 'mtk[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError) as exc:
            raise UsageError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None
    remote = ray.remote(execute)
    running: dict[Any, str] = {}
    submitted: set[str] = set()
    while True:
        for name in ready():
            if name in submitted:
                continue
            spec = specs[name]
            options: dict[str, Any] = {"num_cpus": spec["threads"] or 1, "max_retries": spec["retries"]}
            if spec["gpus"]:
                options["num_gpus"] = spec["gpus"]
            if spec["memory_gb"]:
                options["memory"] = int(spec["memory_gb"] * 1e9)
            running[remote.options(**options).remote(spec)] = name
            submitted.add(name)
        if not running:
            return
        finished, _ = ray.wait(list(running), num_returns=1)
        for ref in finished:
            name = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # the task failed past its retries (a worker that kept dying)
                outcome = {"exit_code": 1, "result": None, "error": f"Ray task failed: {type(exc).__name__}"}
                outcome |= {"seconds": None, "host": None, "attempts": spec_attempts(specs[name])}
            done(name, outcome)


def spec_attempts(spec: Mapping[str, Any]) -> int:
    return int(spec["retries"]) + 1
