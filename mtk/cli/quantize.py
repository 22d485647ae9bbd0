"""``mtk quantize``: GPTQ, AWQ, RTN, HQQ or bnb on an HF checkpoint, written for transformers/GPTQModel/vLLM and
bitsandbytes loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from mtk.cli.common import Device, DeviceOpt, OutputDir, Overwrite, info, progress_bar, render
from mtk.quantizers import FORMATS, QUANTIZERS
from mtk.quantizers.config import MOE_CALIBRATIONS, allowed
from mtk.quantizers.methods import DEFAULT_GROUP_SIZE
from mtk.quantizers.methods.bnb import QUANT_TYPES
from mtk.quantizers.methods.gptq import CalibrationDtype


def _method_help() -> str:
    rows = [QUANTIZERS.get(n) for n in QUANTIZERS.names()]
    return "; ".join(f"{m.name} ({m.summary})" for m in rows) + "."


def _bits_help() -> str:
    methods = [QUANTIZERS.get(n) for n in QUANTIZERS.names()]
    by_bits: dict[tuple[int, ...], list[str]] = {}
    for m in methods:
        by_bits.setdefault(m.bits, []).append(m.name)
    parts = [f"{', '.join(map(str, bits))} ({', '.join(names)})" for bits, names in by_bits.items()]
    formats = [FORMATS.get(n) for n in FORMATS.names()]
    held = [f"{allowed(f.bits)} ({f.name})" for f in formats]
    defaults = ", ".join(f"{m.name} {m.default_bits}" for m in methods)
    return f"Weight bits: {'; '.join(parts)}. The formats hold {'; '.join(held)}. Default: {defaults}."


def _group_help() -> str:
    parts = []
    for name in FORMATS.names():
        fmt = FORMATS.get(name)
        limits = [f"{allowed(sizes)} at {bits} bits" for bits, sizes in fmt.group_sizes.items()]
        parts.append(f"{name}: {'; '.join(limits) if limits else 'any'}")
    defaults = []
    for name in QUANTIZERS.names():
        own = QUANTIZERS.get(name).default_group_sizes
        if own:
            defaults.append(f"{name}: " + ", ".join(f"{g} at {b} bits" for b, g in own.items()))
    return (
        "Input columns per scale, a multiple of 16; -1: one scale per output channel. Default: "
        f"{DEFAULT_GROUP_SIZE}{'; ' if defaults else ''}{'; '.join(defaults)}. What each format's runtime "
        f"loads: {'; '.join(parts)}."
    )


def _format_help() -> str:
    rows = [FORMATS.get(n) for n in FORMATS.names()]
    defaults = ", ".join(f"{m} -> {QUANTIZERS.get(m).default_format}" for m in QUANTIZERS.names())
    moe = ", ".join(f.name for f in rows if f.moe is not None)
    return (
        "; ".join(f"{f.name} ({f.summary}, loaded by {f.runtime})" for f in rows)
        + f". Default: {defaults}; mixture-of-experts models: {moe} only."
    )


def quantize_command(
    model: Annotated[Path, typer.Argument(help="The HF checkpoint folder (safetensors).")],
    output: OutputDir,
    method: Annotated[str, typer.Option(help=_method_help(), metavar=f"<{'|'.join(QUANTIZERS.names())}>")] = "gptq",
    bits: Annotated[int | None, typer.Option(help=_bits_help(), show_default=False)] = None,
    group_size: Annotated[int | None, typer.Option(help=_group_help(), show_default=False)] = None,
    sym: Annotated[bool | None, typer.Option("--sym/--no-sym", help="Symmetric grid (default: the method's).")] = None,
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
    calibration_dtype: Annotated[
        str,
        typer.Option(
            help="GPTQ: the dtype the layers run in while calibrating; bfloat16 reproduces GPTQModel on CPU.",
            metavar=f"<{'|'.join(get_args(CalibrationDtype))}>",
        ),
    ] = "float32",
    bnb_quant_type: Annotated[
        str,
        typer.Option(
            help="bnb at 4 bits: the codebook, NF4 (QLoRA's normal quantiles) or FP4.",
            metavar=f"<{'|'.join(QUANT_TYPES)}>",
        ),
    ] = "nf4",
    bnb_double_quant: Annotated[
        bool, typer.Option("--bnb-double-quant", help="bnb at 4 bits: also quantize the block absmax in 8 bits.")
    ] = False,
    calibration: Annotated[
        Path | None, typer.Option(help='Calibration text: .txt, .jsonl (a "text" field) or .parquet.')
    ] = None,
    samples: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 512,
    moe_calibration: Annotated[
        str,
        typer.Option(
            help="Mixture-of-experts models: calibrate each expert on the tokens routed to it, or on all tokens "
            "of its layer.",
            metavar=f"<{'|'.join(MOE_CALIBRATIONS)}>",
        ),
    ] = "routed",
    smoothing_strength: Annotated[
        float, typer.Option(help="SmoothQuant's migration strength a in s = max|X|^a / max|W|^(1-a).")
    ] = 0.5,
    signround_iters: Annotated[int, typer.Option(help="SignRound's signed-gradient steps per layer.")] = 200,
    signround_lr: Annotated[float, typer.Option(help="SignRound's learning rate (0: 1 / steps).")] = 0.0,
    signround_batch: Annotated[int, typer.Option(help="SignRound's calibration samples per step.")] = 8,
    format_: Annotated[
        str | None,
        typer.Option("--format", help=_format_help(), metavar=f"<{'|'.join(FORMATS.names())}>"),
    ] = None,
    device: DeviceOpt = Device.auto,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Load it in its format's runtime and compare (default: when that runtime is installed).",
        ),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Quantize the decoder's Linear layers layer by layer; only one layer is on the device at a time.

    Examples: [b]mtk quantize smollm2-hf -o smollm2-gptq --method gptq --group-size 64 --calibration wiki.txt[/b] ·
    [b]mtk quantize smollm2-hf -o smollm2-awq --method awq --group-size 64 --calibration data.jsonl --samples 64[/b] ·
    [b]mtk quantize llama-hf -o llama-rtn --method rtn --bits 8[/b] ·
    [b]mtk quantize smollm2-hf -o smollm2-w4a16 --group-size 64 --calibration wiki.txt --format compressed-tensors[/b] ·
    [b]mtk quantize smollm2-hf -o smollm2-nf4 --method bnb --bnb-double-quant[/b] ·
    [b]mtk quantize llama-hf -o llama-fp8 --method fp8[/b] (FP8 W8A8, per channel) ·
    [b]mtk quantize llama-hf -o llama-w8a8 --method smoothquant --calibration wiki.txt[/b] (INT8 W8A8)
    """
    from mtk.api import quantize

    with progress_bar(f"{method} {bits}-bit" if bits else method) as bar:
        result = quantize(
            model, output, method=method, bits=bits, group_size=group_size, sym=sym, desc_act=desc_act,
            static_groups=static_groups, act_group_aware=act_group_aware, damp_percent=damp_percent,
            calibration_dtype=calibration_dtype, bnb_quant_type=bnb_quant_type, bnb_double_quant=bnb_double_quant,
            format=format_,
            calibration=calibration, samples=samples, seq_len=seq_len, moe_calibration=moe_calibration,
            smoothing_strength=smoothing_strength, signround_iters=signround_iters, signround_lr=signround_lr,
            signround_batch=signround_batch, device=device.value, verify=verify, overwrite=overwrite,
            progress=bar.update,
        ).to_dict()  # fmt: skip
    if result.get("note"):
        info(f"note: {result['note']}")
    v = result.get("verification")
    if v:
        m, q = v["logits"], v["quality"]
        info(
            f"verified in transformers: top-1 {m['top1']:.3f}, mean KL {m['kl_mean']:.2e} against its own weights; "
            f"against the source: top-1 {q['top1']:.3f}, mean KL {q['kl_mean']:.3g}"
        )
    fallbacks = result.get("fallbacks") or []
    if fallbacks:
        first = fallbacks[0]
        info(
            f"{len(fallbacks)} Linear(s) took a fallback (all in --json), e.g. layer {first['layer']} "
            f"{first['linear']}: {first['fallback']}"
        )
    render(
        result,
        f"wrote {result['output']}: {result['method']} {result['bits']}-bit, group {result['group_size']}, "
        f"{result['format']} format, {result['layers']} layers, {result['seconds']:.1f} s",
    )
