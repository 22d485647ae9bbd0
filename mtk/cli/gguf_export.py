"""``mtk gguf-export``: an HF checkpoint (or a GGUF, re-typed) to a GGUF that llama.cpp runs, verified there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from mtk.api import CalibrationMethod
from mtk.cli.common import SETTINGS, Device, DeviceOpt, Overwrite, info, progress_bar, render, report_verification
from mtk.errors import UsageError
from mtk.kernels.types import rows

# The names are checked (case-insensitively) by mtk.converters.gguf_types, which the CLI imports only when
# a command runs; the help lists them from the table of types, which imports neither torch nor gguf.
_WRITTEN = list(rows(writes=True))
FILE_TYPE_HELP = (
    f"File type, llama-quantize's names: auto, {', '.join(name for row in _WRITTEN for name in row.file_types)} "
    f"({', '.join(f'{row.key} = {row.file_type}' for row in _WRITTEN if row.file_type)})."
)
TENSOR_TYPES = ", ".join(row.key for row in _WRITTEN)
METHODS = get_args(CalibrationMethod)


def gguf_export_command(
    source: Annotated[Path, typer.Argument(help="An HF checkpoint folder, or a .gguf file to re-type.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The .gguf to write (split parts get -0000i-of-0000n).")
    ] = None,
    type_: Annotated[str, typer.Option("--type", help=FILE_TYPE_HELP)] = "auto",
    output_type: Annotated[
        str | None, typer.Option(help=f"Type of output.weight (or of the tied embedding): {TENSOR_TYPES}.")
    ] = None,
    embedding_type: Annotated[str | None, typer.Option(help="Type of token_embd.weight.")] = None,
    tensor_type: Annotated[
        list[str] | None,
        typer.Option(
            "--tensor-type",
            help="REGEX=TYPE: tensors whose GGUF name matches REGEX (first match wins) get TYPE; repeatable, "
            "as llama-quantize's --tensor-type (e.g. 'attn_v=q8_0', 'blk\\.[0-3]\\.ffn_down=q6_k').",
        ),
    ] = None,
    pure: Annotated[bool, typer.Option("--pure", help="No per-tensor exceptions: every matrix gets --type.")] = False,
    imatrix: Annotated[
        Path | None, typer.Option("--imatrix", help="Importance matrix (mtk imatrix or llama-imatrix) for K/IQ4 types.")
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="Calibration text (.txt, .jsonl, .parquet; HF sources): each block matrix is encoded with GPTQ's "
            "error compensation on its type's own block grid, or plainly where that has the lower output error.",
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help=f"Calibration method: {', '.join(METHODS)}.", metavar=f"<{'|'.join(METHODS)}>")
    ] = "gptq",
    samples: Annotated[int, typer.Option(help="Calibration chunks to run (with --calibration).")] = 128,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration chunk.")] = 512,
    first_token_weight: Annotated[
        float, typer.Option(help="Weight of each chunk's first token (an attention sink) in the Hessians.")
    ] = 16.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the per-tensor plan, size and bits per weight; write nothing.")
    ] = False,
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
    """Write a GGUF: llama.cpp's file types and per-tensor rules, streaming, checked against the source in llama.cpp.

    Examples: [b]mtk gguf-export smollm2-hf -o smollm2.q4_k_m.gguf --type q4_k_m --imatrix smollm2.imatrix.gguf[/b] ·
    [b]mtk gguf-export smollm2-hf --type q3_k_m --tensor-type attn_v=q6_k --dry-run[/b] ·
    [b]mtk gguf-export model.f16.gguf -o model.q8_0.gguf --type q8_0 --split-max-size 2G[/b] ·
    [b]mtk gguf-export smollm2-hf -o smollm2.q4_k_m.gguf --type q4_k_m --calibration calib.txt --samples 32[/b]
    """
    from mtk.api import gguf_export

    options = dict(
        type=type_, output_type=output_type, embedding_type=embedding_type, tensor_types=tensor_type or [],
        pure=pure, imatrix=imatrix, split_max_size=split_max_size,
    )  # fmt: skip
    if dry_run:
        _render_plan(gguf_export(source, dry_run=True, **options).to_dict())  # type: ignore[arg-type]
        return
    if output is None:
        raise UsageError("--output/-o is required (or pass --dry-run)")
    calibrated = dict(
        calibration=calibration, method=method, samples=samples, seq_len=seq_len, first_token_weight=first_token_weight
    )
    with progress_bar("encoding") as bar:
        result = gguf_export(
            source, output, device=device.value, verify=verify, overwrite=overwrite, progress=bar.update,
            **options, **calibrated,  # type: ignore[arg-type]
        ).to_dict()  # fmt: skip
    if result.get("note"):
        info(f"note: {result['note']}")
    report_verification(result)
    if result.get("imatrix", {}).get("missing"):
        missing = result["imatrix"]["missing"]
        info(f"warning: the imatrix has no entry for {len(missing)} tensor(s), encoded without it: {missing[0]} ...")
    if result.get("skipped"):
        info(f"note: {result['skipped']}")
    if result.get("calibration"):
        kept = result["calibration"]["kept"]
        info(f"calibration: GPTQ kept for {kept['gptq']} matrices, the plain encoding for {kept['importance']}")
    types = ", ".join(f"{k}: {n}" for k, n in result["types"].items())
    render(
        result,
        f"wrote {result['output']}: {result['tensors']} tensors ({types}), {result['bytes']:,} bytes, "
        f"{result['bits_per_weight']:.2f} bits/weight, {result['seconds']:.1f} s",
    )


def _render_plan(plan: dict[str, Any]) -> None:
    """The dry run: a table of tensors on stdout, or the JSON object with --json."""
    if SETTINGS.json:
        render(plan)
        return
    from rich.table import Table

    from mtk.cli.common import stdout

    table = Table(title=f"{plan['input']} as {plan['file_type']} (dry run)", show_lines=False)
    for col, justify in (("tensor", "left"), ("shape", "left"), ("type", "left"), ("bytes", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in plan["plan"]:
        table.add_row(row["name"], "x".join(map(str, row["shape"])), row["type"], f"{row['bytes']:,}")
    if not SETTINGS.quiet:
        stdout.print(table)
    types = ", ".join(f"{k}: {n}" for k, n in plan["types"].items())
    render(
        plan,
        f"{plan['tensors']} tensors ({types}); {plan['parameters']:,} weights, {plan['bytes']:,} bytes in "
        f"{plan['files']} file(s), {plan['bits_per_weight']:.2f} bits/weight",
    )
