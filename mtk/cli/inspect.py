"""``mtk inspect PATH``: a summary of a GGUF, safetensors or ONNX file or an HF folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mtk.cli.common import SETTINGS, render, stdout


def inspect_command(
    path: Annotated[
        Path, typer.Argument(help="A .gguf (split parts too), .safetensors or .onnx file, or an HF folder.")
    ],
    tensors: Annotated[bool, typer.Option("--tensors", help="List every tensor: name, shape, type, bytes.")] = False,
) -> None:
    """Show architecture, key metadata, tensor and type counts, parameters, size and bits per weight.

    Examples: [b]mtk inspect model.gguf[/b] · [b]mtk --json inspect ./llama-hf --tensors[/b]
    """
    from mtk.api import inspect

    report = inspect(path, tensors=tensors).to_dict()
    if SETTINGS.json or SETTINGS.quiet:
        render(report)
        return
    table = Table(show_header=False, box=None)
    table.add_row("path", report["path"])
    table.add_row("format", report["format"])
    table.add_row("architecture", report["architecture"])
    for key, value in report["metadata"].items():
        table.add_row(key, str(value))
    table.add_row("tensors", str(report["tensor_count"]))
    table.add_row("types", ", ".join(f"{k}: {v}" for k, v in report["types"].items()))
    table.add_row("parameters", f"{report['parameters']:,} ({report['parameters'] / 1e6:.1f}M)")
    table.add_row("file size", f"{report['file_size']:,} bytes ({report['file_size'] / 2**20:.1f} MiB)")
    table.add_row("bits per weight", f"{report['bits_per_weight']:.3f}")
    stdout.print(table)
    if tensors:
        rows = Table("name", "shape", "type", "bytes")
        for t in report["tensors"]:
            rows.add_row(t["name"], "x".join(map(str, t["shape"])), t["type"], f"{t['bytes']:,}")
        stdout.print(rows)
