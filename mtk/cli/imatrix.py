"""``mtk imatrix``: llama.cpp's importance matrix of an HF checkpoint on calibration text, for K-quant exports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtk.cli.common import Device, DeviceOpt, Overwrite, progress_bar, render


def imatrix_command(
    source: Annotated[Path, typer.Argument(help="An HF checkpoint folder (e.g. from mtk gguf-import).")],
    calibration: Annotated[
        Path, typer.Option("--calibration", help="Calibration text: .txt, .jsonl (a 'text' field) or .parquet.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The imatrix .gguf to write (llama.cpp's format).")],
    samples: Annotated[int, typer.Option(help="Chunks of calibration text to run.")] = 128,
    seq_len: Annotated[int, typer.Option(help="Tokens per chunk (llama-imatrix's context size).")] = 512,
    device: DeviceOpt = Device.auto,
    overwrite: Overwrite = False,
) -> None:
    """Collect per-column mean squared activations of every block matrix, as llama.cpp's llama-imatrix.

    The file works with [b]mtk gguf-export --imatrix[/b] and with llama.cpp's [b]llama-quantize --imatrix[/b].
    Example: [b]mtk imatrix smollm2-hf --calibration calib.txt -o smollm2.imatrix.gguf --samples 32[/b]
    """
    from mtk.api import imatrix as collect

    with progress_bar("collecting") as bar:
        summary = collect(
            source, calibration, output, samples=samples, seq_len=seq_len, device=device.value, overwrite=overwrite,
            progress=bar.update,
        ).to_dict()  # fmt: skip
    render(
        summary,
        f"wrote {output}: {summary['tensors']} matrices, {summary['chunks']} chunks of {summary['chunk_size']} tokens",
    )
