"""``mtk bench``: size, quality and speed of several artifacts of one model, in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mtk.cli.common import SETTINGS, Device, DeviceOpt, Overwrite, info, progress_bar, render, stdout
from mtk.errors import VerificationError


def bench_command(
    artifacts: Annotated[list[Path], typer.Argument(help="HF folders, .gguf files, mtk ONNX folders.")],
    text: Annotated[Path, typer.Option("--text", help="UTF-8 text to score (its first ctx x windows tokens).")],
    reference: Annotated[
        Path | None, typer.Option(help="HF folder whose logits KL/top-1 compare with (default: first unquantized HF).")
    ] = None,
    ctx: Annotated[int, typer.Option(help="Tokens per window (llama-perplexity's -c).")] = 512,
    windows: Annotated[int, typer.Option(help="Windows scored (llama-perplexity's --chunks).")] = 8,
    gen_tokens: Annotated[int, typer.Option(help="Greedy decode steps timed per artifact (0: skip).")] = 128,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result JSON to this file.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of size against perplexity.")] = None,
    fail_if: Annotated[
        list[str] | None, typer.Option("--fail-if", help="Exit 5 when this holds for an artifact (repeatable).")
    ] = None,
    device: DeviceOpt = Device.auto,
    threads: Annotated[int | None, typer.Option(help="CPU threads for every runtime (default: all cores).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Benchmark artifacts of one model on the same token windows, each in its own process.

    Per artifact: perplexity (llama.cpp's windows: second half of each ctx-token chunk), KL divergence and
    top-1 agreement against the reference's logits, size, bits per weight, load time, prefill and decode
    tokens/s, peak RSS (and peak VRAM on CUDA).

    Examples: [b]mtk bench smollm2-hf smollm2.q8_0.gguf smollm2-onnx --text bible.txt --plot bench.png[/b] ·
    [b]mtk bench hf q4.gguf --text t.txt --windows 4 --fail-if "ppl > 1.05 * ref" --fail-if "kl > 0.1"[/b]
    """
    from mtk.api import bench, gate_failure_message

    with progress_bar("bench") as bar:
        out = bench(
            artifacts, text, reference=reference, ctx=ctx, windows=windows, gen_tokens=gen_tokens,
            fail_if=fail_if or [], device=device.value, threads=threads, json_path=json_out, plot=plot,
            overwrite=overwrite, progress=bar.update,
        )  # fmt: skip
    result = out.to_dict()
    for written in (json_out, plot):
        if written is not None:
            info(f"wrote {written}")
    if SETTINGS.json:
        render(result)
    elif not SETTINGS.quiet:
        # Piped into a CI log, rich would squeeze the table into 80 columns; give it the width it needs.
        console = stdout if stdout.is_terminal else Console(width=240, soft_wrap=True)
        console.print(results_table(result))
    if out.failed_gates:
        raise VerificationError(gate_failure_message(out))


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def _kl(value: float | None) -> str:
    """KL spans 1e-7 (lossless) to 1 (broken): fixed decimals for the large, two significant digits below."""
    if value is None:
        return "—"
    return f"{value:.4f}" if value >= 0.01 else f"{value:.1e}"


def results_table(result: dict[str, Any]) -> Any:
    """A rich Table: one row per artifact, the reference first."""
    from rich.table import Table

    ref = next((r for r in result["artifacts"] if r["is_reference"]), None)
    vram = any(r["vram_peak_bytes"] for r in result["artifacts"])
    table = Table(
        title=f"mtk bench: {result['windows']} windows x {result['ctx']} tokens ({result['scored_per_window']} scored "
        f"each) of {Path(result['text']['path']).name}, device {result['device']}, {result['threads']} threads",
        title_justify="left",
    )
    columns = ["artifact", "runtime", "weights", "size MB", "bpw", "ppl", "Δppl", "KL", "top-1", "load s"]
    columns += ["prefill tok/s", "decode tok/s", "peak RSS MB"] + (["peak VRAM MB"] if vram else [])
    for c in columns:
        table.add_column(c, justify="left" if c in ("artifact", "runtime", "weights") else "right")
    for r in result["artifacts"]:
        delta = (r["ppl"] / ref["ppl"] - 1) * 100 if ref and r is not ref else None
        cells = [
            r["name"] + (" [dim](ref)[/dim]" if r["is_reference"] else ""),
            r["kind"],
            r["quantization"],
            _fmt(r["size_bytes"], ",.1f", 1e-6),
            _fmt(r["bpw"], ".2f"),
            _fmt(r["ppl"], ".4f"),
            "—" if delta is None else f"{delta:+.2f}%",
            _kl(r["kl_mean"]),
            _fmt(r["top1"], ".3f"),
            _fmt(r["load_s"], ".2f"),
            _fmt(r["prefill_tps"], ",.0f"),
            _fmt(r["decode_tps"], ",.1f"),
            _fmt(r["rss_peak_bytes"], ",.0f", 1e-6),
        ]
        table.add_row(*cells, *([_fmt(r["vram_peak_bytes"], ",.0f", 1e-6)] if vram else []))
    return table
