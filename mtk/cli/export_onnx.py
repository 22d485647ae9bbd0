"""``mtk export-onnx``: an HF checkpoint to an ONNX folder (torch.onnx dynamo), validated in onnxruntime."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mtk.cli.common import OutputDir, Overwrite, info, render


class TaskChoice(str, Enum):
    auto = "auto"
    text_generation = "text-generation"
    text_generation_with_past = "text-generation-with-past"
    feature_extraction = "feature-extraction"


class OnnxDTypeChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class QuantizeChoice(str, Enum):
    int8 = "int8"
    int4 = "int4"


def export_onnx_command(
    model: Annotated[Path, typer.Argument(help="The Hugging Face checkpoint folder (config.json, safetensors).")],
    output: OutputDir,
    task: Annotated[
        TaskChoice,
        typer.Option(help="Graph to export; auto: text-generation-with-past for causal LMs, else feature-extraction."),
    ] = TaskChoice.auto,
    dtype: Annotated[OnnxDTypeChoice, typer.Option(help="Weight and activation dtype of the graph.")] = (
        OnnxDTypeChoice.fp32
    ),
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer).")] = 18,
    quantize: Annotated[
        QuantizeChoice | None,
        typer.Option(help="int8: dynamic per-channel MatMul weights; int4: MatMulNBits weight-only blocks."),
    ] = None,
    block_size: Annotated[int, typer.Option(help="Block size of --quantize int4 (32 or 128).")] = 32,
    optimize: Annotated[
        bool, typer.Option("--optimize", help="Save onnxruntime's optimized graph (runs in onnxruntime only).")
    ] = False,
    validate: Annotated[
        bool,
        typer.Option("--validate/--no-validate", help="Compare onnxruntime with PyTorch: prefill and decode steps."),
    ] = True,
    overwrite: Overwrite = False,
) -> None:
    """Export a checkpoint to model.onnx with tokenizer files and mtk_onnx.json (inputs, outputs, cache layout).

    Examples: [b]mtk export-onnx smollm2-hf -o smollm2-onnx[/b] ·
    [b]mtk --json export-onnx smollm2-hf -o smollm2-int4 --quantize int4 --block-size 128 --optimize[/b] ·
    [b]mtk export-onnx bert-hf -o bert-onnx --task feature-extraction[/b]
    """
    from mtk.api import export_onnx

    info(f"exporting {model} ({task.value}) with torch.onnx (dynamo)")
    result = export_onnx(
        model, output, task=task.value, dtype=dtype.value, opset=opset,  # type: ignore[arg-type]
        quantize=quantize.value if quantize else None,  # type: ignore[arg-type]
        block_size=block_size, optimize=optimize, validate=validate, overwrite=overwrite,
    ).to_dict()  # fmt: skip
    v = result["validation"]
    if v and "logits" in v:
        m = v["logits"]
        info(
            f"validated in onnxruntime ({v['kind']}, prefill + {v['decode_steps']} decode steps): "
            f"top-1 {m['top1']:.3f}, mean KL {m['kl_mean']:.2e}, max |diff| {m['max_abs']:.3g}"
        )
    elif v:
        info(
            f"validated in onnxruntime ({v['kind']}): max |diff| "
            + ", ".join(f"{k} {d:.3g}" for k, d in v["max_abs"].items())
        )
    render(
        result,
        f"wrote {result['output']}: {result['architecture']}, {result['task']}, {result['dtype']}"
        f"{', ' + result['quantize'] if result['quantize'] else ''}, {result['bytes'] / 1e6:.1f} MB, "
        f"{result['seconds']:.1f} s",
    )
