"""``mtk quantize``: GPTQ, AWQ or RTN on an HF checkpoint, written for transformers/GPTQModel/vLLM loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtk.cli.common import Device, DeviceOpt, OutputDir, Overwrite, info, progress_bar, render
from mtk.errors import UsageError


def quantize_command(
    model: Annotated[Path, typer.Argument(help="The HF checkpoint folder (safetensors).")],
    output: OutputDir,
    method: Annotated[str, typer.Option(help="gptq, awq or rtn (round to nearest, no calibration).")] = "gptq",
    bits: Annotated[
        int, typer.Option(help="Weight bits: 2, 3, 4, 8 (GPTQ, RTN); 4 (AWQ); 4 or 8 for compressed-tensors.")
    ] = 4,
    group_size: Annotated[int, typer.Option(help="Input columns per scale; -1: one scale per output channel.")] = 128,
    sym: Annotated[
        bool | None, typer.Option("--sym/--no-sym", help="Symmetric grid (default: yes for GPTQ/RTN, no for AWQ).")
    ] = None,
    desc_act: Annotated[
        bool, typer.Option("--desc-act", help="GPTQ act-order: columns by decreasing Hessian.")
    ] = False,
    static_groups: Annotated[
        bool, typer.Option("--static-groups", help="With --desc-act: fix group scales first (sorted g_idx).")
    ] = False,
    act_group_aware: Annotated[
        bool | None,
        typer.Option(
            "--act-group-aware/--no-act-group-aware",
            help="GPTQ group-aware reordering (natural g_idx); default on unless --desc-act or --static-groups.",
        ),
    ] = None,
    damp_percent: Annotated[
        float, typer.Option(help="GPTQ Hessian dampening, a fraction of its mean diagonal.")
    ] = 0.01,
    calibration: Annotated[
        Path | None, typer.Option(help='Calibration text: .txt, .jsonl (a "text" field) or .parquet.')
    ] = None,
    samples: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="gptq (AutoGPTQ/GPTQModel v1), awq (AutoAWQ GEMM) or compressed-tensors (llm-compressor's "
            "pack-quantized, vLLM's native format).",
        ),
    ] = None,
    device: DeviceOpt = Device.auto,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Load it in transformers and compare (default: when the format's loader is installed: "
            "gptqmodel, or compressed-tensors).",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Quantize the decoder's Linear layers layer by layer; only one layer is on the device at a time.

    Examples: [b]mtk quantize smollm2-hf -o smollm2-gptq --method gptq --group-size 64 --calibration wiki.txt[/b] ·
    [b]mtk quantize smollm2-hf -o smollm2-awq --method awq --group-size 64 --calibration data.jsonl --samples 64[/b] ·
    [b]mtk quantize llama-hf -o llama-rtn --method rtn --bits 8[/b] ·
    [b]mtk quantize smollm2-hf -o smollm2-w4a16 --group-size 64 --calibration wiki.txt --format compressed-tensors[/b]
    """
    from mtk.quantizers.check import runtime_available, verify_quantized
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.engine import quantize

    try:
        cfg = QuantizeConfig(
            method=method, bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
            static_groups=static_groups, act_group_aware=act_group_aware, damp_percent=damp_percent,
            format=format_, samples=samples, seq_len=seq_len,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if verify is None:
        verify = runtime_available(cfg.format.value)  # type: ignore[union-attr]
    check = (lambda tmp: verify_quantized(tmp, model)) if verify else None
    with progress_bar(f"{cfg.method.value} {cfg.bits}-bit") as bar:
        result = quantize(
            model, output, cfg, calibration=calibration, device=device.value, overwrite=overwrite,
            progress=bar.update, check=check,
        )  # fmt: skip
    v = result.get("verification")
    if v:
        m, q = v["logits"], v["quality"]
        info(
            f"verified in transformers: top-1 {m['top1']:.3f}, mean KL {m['kl_mean']:.2e} against its own weights; "
            f"against the source: top-1 {q['top1']:.3f}, mean KL {q['kl_mean']:.3g}"
        )
    render(
        result,
        f"wrote {result['output']}: {result['method']} {result['bits']}-bit, group {result['group_size']}, "
        f"{result['format']} format, {result['layers']} layers, {result['seconds']:.1f} s",
    )
