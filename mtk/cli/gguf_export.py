"""``mtk gguf-export``: an HF checkpoint (or a GGUF, re-typed) to a GGUF that llama.cpp runs, verified there."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mtk.cli.common import Device, DeviceOpt, Overwrite, progress_bar, render, report_verification
from mtk.errors import UsageError


class GGUFType(str, Enum):
    auto = "auto"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"
    q4_0 = "q4_0"
    q4_1 = "q4_1"
    q5_0 = "q5_0"
    q5_1 = "q5_1"


TensorType = Annotated[GGUFType | None, typer.Option(help="Type for this tensor, overriding the rules.")]


def gguf_export_command(
    source: Annotated[Path, typer.Argument(help="An HF checkpoint folder, or a .gguf file to re-type.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The .gguf to write (split parts get -0000i-of-0000n).")
    ],
    type_: Annotated[GGUFType, typer.Option("--type", help="Target type of the weight matrices.")] = GGUFType.auto,
    output_type: Annotated[
        GGUFType | None, typer.Option(help="Type of output.weight (or of the tied embedding).")
    ] = None,
    embedding_type: Annotated[GGUFType | None, typer.Option(help="Type of token_embd.weight.")] = None,
    pure: Annotated[bool, typer.Option("--pure", help="No per-tensor exceptions: every matrix gets --type.")] = False,
    split_max_size: Annotated[
        str | None, typer.Option(help="Split into llama.cpp-compatible parts of at most this size (e.g. 2G).")
    ] = None,
    device: DeviceOpt = Device.auto,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify", help="Check in llama.cpp (default: on when llama-cpp-python is installed)."
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write a GGUF: llama.cpp's per-tensor type rules, streaming, and checked against the source in llama.cpp.

    Examples: [b]mtk gguf-export smollm2-hf -o smollm2.q8_0.gguf --type q8_0[/b] ·
    [b]mtk gguf-export model.f16.gguf -o model.q4_0.gguf --type q4_0 --split-max-size 2G[/b]
    """
    from mtk.converters.gguf_types import TYPE_NAMES, TypeRules
    from mtk.converters.hf_to_gguf import auto_type, gguf_export, parse_size

    def pick(t: GGUFType | None) -> object:
        if t is None:
            return None
        return auto_type(source) if t == GGUFType.auto else TYPE_NAMES[t.value]

    try:
        rules = TypeRules(pick(type_), pick(output_type), pick(embedding_type), pure)  # type: ignore[arg-type]
        max_bytes = parse_size(split_max_size) if split_max_size else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with progress_bar("encoding") as bar:
        result = gguf_export(
            source,
            output,
            rules=rules,
            split_max_bytes=max_bytes,
            device=device.value,
            verify=verify,
            overwrite=overwrite,
            progress=bar.update,
        )
    report_verification(result)
    types = ", ".join(f"{k}: {n}" for k, n in result["types"].items())
    render(
        result,
        f"wrote {result['output']}: {result['tensors']} tensors ({types}), {result['bytes']:,} bytes, "
        f"{result['seconds']:.1f} s",
    )
