"""``mtk gguf-import``: a GGUF model to a Hugging Face checkpoint folder, verified against llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtk.cli.common import (
    Device,
    DeviceOpt,
    DType,
    OutputDir,
    Overwrite,
    info,
    progress_bar,
    render,
    report_verification,
)


def gguf_import_command(
    model: Annotated[Path, typer.Argument(help="The .gguf file (for split models, any part).")],
    output: OutputDir,
    dtype: Annotated[
        DType,
        typer.Option(help="Weight dtype; auto keeps a float GGUF's type and uses f32 for quantized ones."),
    ] = DType.auto,
    device: DeviceOpt = Device.auto,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Compare with llama.cpp (default: on when llama-cpp-python is installed).",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Convert a GGUF file to config.json, safetensors shards and tokenizer files that transformers loads.

    Examples: [b]mtk gguf-import SmolLM2.Q4_1.gguf -o smollm2-hf[/b] ·
    [b]mtk --json gguf-import model-00001-of-00003.gguf -o model-hf --dtype bf16 --no-verify[/b]
    """
    from mtk.api import gguf_import

    with progress_bar("dequantizing") as bar:
        result = gguf_import(
            model, output, dtype=dtype.value, device=device.value, verify=verify, overwrite=overwrite,
            progress=bar.update,
        ).to_dict()  # fmt: skip
    report_verification(result)
    if result.get("skipped"):
        info(f"note: {result['skipped']}")
    render(
        result,
        f"wrote {result['output']}: {result['architecture']}, {result['tensors']} tensors, "
        f"{result['parameters'] / 1e6:.1f}M parameters, {result['dtype']}, {result['seconds']:.1f} s",
    )
