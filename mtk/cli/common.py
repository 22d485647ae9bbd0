"""What every command shares: global output settings, option aliases, result rendering, progress bars."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console


@dataclass
class OutputSettings:
    json: bool = False
    quiet: bool = False
    verbose: bool = False


SETTINGS = OutputSettings()
stderr = Console(stderr=True, soft_wrap=True)
stdout = Console(soft_wrap=True)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    f16 = "f16"
    f32 = "f32"


OutputDir = Annotated[Path, typer.Option("--output", "-o", help="Output folder (written atomically).")]
DeviceOpt = Annotated[Device, typer.Option(help="Where the weight math runs; auto picks CUDA when present.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


def render(result: dict[str, Any], human: str | None = None) -> None:
    """One JSON object on stdout with --json; otherwise the human text (unless --quiet)."""
    if SETTINGS.json:
        print(json.dumps(result, indent=2, default=str))
    elif not SETTINGS.quiet and human is not None:
        stdout.print(human, highlight=False)


def report_verification(result: dict[str, Any], runtime: str = "llama.cpp") -> None:
    """One status line for a result's ``verification`` block, when there is one."""
    v = result.get("verification")
    if v:
        m = v["logits"]
        info(
            f"verified against {runtime}: tokenizer identical on {v['tokenizer']['tokens']} probe tokens; "
            f"logits top-1 {m['top1']:.3f}, mean KL {m['kl_mean']:.2e}, max |diff| {m['max_abs']:.3g}"
        )


def info(message: str) -> None:
    """A status line on stderr (hidden by --quiet)."""
    if not SETTINGS.quiet:
        stderr.print(message, highlight=False)


class progress_bar:  # noqa: N801 - used like a function in a with-statement
    """A rich progress bar on stderr; ``update(done, total, label)`` is the library's progress callback."""

    def __init__(self, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[label]}"),
            console=stderr,
            # Off the terminal (a CI log) a transient bar draws nothing but leaves an empty line behind.
            disable=SETTINGS.quiet or not stderr.is_terminal,
            transient=True,
        )
        self._task = self._progress.add_task(description, total=None, label="")

    def __enter__(self) -> progress_bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, done: int, total: int, label: str) -> None:
        self._progress.update(self._task, completed=done, total=total, label=label)
