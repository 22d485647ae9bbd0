"""The Python API: one function per command, the same code path the CLI takes (``mtk/cli`` only parses and prints).

Each function takes the command's options as keyword arguments, raises mtk's errors (``mtk.errors``: each has
the CLI's exit code), and returns a frozen result (``mtk.results``) holding the object ``--json`` prints.
Importing this module (and ``mtk``) imports neither torch nor transformers: each function imports what its work
needs when it is called.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from mtk.errors import UsageError, VerificationError, error_for
from mtk.results import (
    BenchResult,
    ExportResult,
    ImatrixResult,
    ImportResult,
    InspectResult,
    OnnxExportResult,
    QuantizeResult,
    RunResult,
)

PathLike = str | Path
# (done, total, label): called as the work advances (the CLI draws a progress bar with it).
Progress = Callable[[int, int, str], None]
DeviceName = Literal["auto", "cpu", "cuda"]
# gguf-export --calibration's methods: GPTQ's error feedback on each type's own block grid.
CalibrationMethod = Literal["gptq"]


def inspect(path: PathLike, *, tensors: bool = False) -> InspectResult:
    """Summarise a GGUF (split too), safetensors or ONNX file or an HF folder, without loading weights."""
    from mtk.inspection import inspect as _inspect

    return InspectResult(_inspect(Path(path), tensors=tensors))


def gguf_import(
    gguf: PathLike,
    output: PathLike,
    *,
    dtype: Literal["auto", "bf16", "f16", "f32"] = "auto",
    device: DeviceName = "auto",
    verify: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """A GGUF (any part of a split one) to an HF checkpoint folder; ``verify`` (default: when llama-cpp-python is
    installed) compares it with llama.cpp before the folder is published, raising VerificationError beyond
    tolerance."""
    from mtk.artifacts.gguf import import_check
    from mtk.converters.gguf_to_hf import gguf_import as _import

    check = import_check(gguf, verify)
    result = _import(gguf, output, dtype=dtype, device=device, check=check, overwrite=overwrite, progress=progress)
    return ImportResult(result)


def gguf_export(
    source: PathLike,
    output: PathLike | None = None,
    *,
    type: str = "auto",  # noqa: A002 - the CLI's --type
    output_type: str | None = None,
    embedding_type: str | None = None,
    tensor_types: Sequence[str] = (),
    pure: bool = False,
    imatrix: PathLike | None = None,
    split_max_size: str | int | None = None,
    dry_run: bool = False,
    device: DeviceName = "auto",
    verify: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    calibration: PathLike | None = None,
    method: CalibrationMethod = "gptq",
    samples: int = 128,
    seq_len: int = 512,
    first_token_weight: float = 16.0,
) -> ExportResult:
    """An HF folder (or a GGUF, re-typed) to a GGUF. ``type`` is llama-quantize's file type name (``q4_k_m``);
    ``tensor_types`` are ``REGEX=TYPE`` overrides; ``split_max_size`` a size like ``"2G"`` or bytes. With
    ``dry_run`` nothing is written and the result holds the per-tensor plan.

    ``calibration`` (an HF source only): ``samples`` windows of ``seq_len`` tokens of that text give each block
    matrix's Hessian, and ``method`` (GPTQ) compensates rounding errors on the type's own block grids, keeping per
    tensor whichever of that and the plain encoding has the lower output error (the result's ``calibration``).
    Without ``imatrix`` the same activations give the importance weights. ``first_token_weight``: how much each
    window's first token (an attention sink) weighs in the Hessians (mtk.quantizers.gguf_calibration)."""
    from mtk.artifacts.gguf import export_check
    from mtk.converters.hf_to_gguf import gguf_export as _export
    from mtk.converters.hf_to_gguf import parse_size, plan_export

    source = Path(source)
    if method not in ("gptq",):
        raise UsageError(f"unknown calibration method {method!r}; known: gptq")
    if not first_token_weight > 0:
        raise UsageError(f"--first-token-weight must be positive, got {first_token_weight}")
    if calibration is not None and source.is_file():
        raise UsageError(f"{source}: --calibration needs an HF checkpoint folder (it runs the model), not a GGUF")
    has_imatrix = imatrix is not None or calibration is not None
    rules = _type_rules(source, type, output_type, embedding_type, tensor_types, pure, has_imatrix)
    try:
        max_bytes = parse_size(split_max_size) if isinstance(split_max_size, str) else split_max_size
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if dry_run:
        return ExportResult(plan_export(source, rules=rules, split_max_bytes=max_bytes))
    if output is None:
        raise UsageError("an output path is required (or a dry run)")
    matrix = _read_imatrix(imatrix)
    encoder = None
    if calibration is not None:
        from mtk.formats.atomic import check_target
        from mtk.quantizers.gguf_calibration import CalibratedEncoder, hessians_from_checkpoint

        check_target(Path(output), overwrite=overwrite)  # fail before the (long) collection, not after
        hessians = hessians_from_checkpoint(
            source, calibration, samples=samples, seq_len=seq_len, device=device, first_token_weight=first_token_weight
        )
        matrix = matrix if matrix is not None else hessians.imatrix()
        encoder = CalibratedEncoder(hessians)
    result = _export(
        source, output, rules=rules, split_max_bytes=max_bytes, device=device, check=export_check(source, verify),
        overwrite=overwrite, imatrix=matrix, matrix_encoder=encoder, progress=progress,
    )  # fmt: skip
    if encoder is not None:
        result["calibration"] = encoder.summary()
    return ExportResult(result)


def _type_rules(
    source: Path,
    type_: str,
    output_type: str | None,
    embedding_type: str | None,
    overrides: Sequence[str],
    pure: bool,
    has_imatrix: bool,
) -> Any:
    """TypeRules from the option strings; bad names or patterns are usage errors (exit 2)."""
    from mtk.converters import gguf_types as gt
    from mtk.converters.hf_to_gguf import auto_type

    def tensor(name: str | None) -> Any:
        if name is None:
            return None
        return auto_type(source) if name.strip().lower() == "auto" else gt.parse_tensor_type(name)

    try:
        target = auto_type(source) if type_.strip().lower() == "auto" else gt.parse_file_type(type_)
        return gt.TypeRules(
            target,
            output=tensor(output_type),
            embedding=tensor(embedding_type),
            pure=pure,
            overrides=tuple(gt.parse_override(o) for o in overrides),
            imatrix=has_imatrix,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _read_imatrix(path: PathLike | None) -> Any:
    if path is None:
        return None
    from mtk.converters.imatrix import read_imatrix

    if not Path(path).is_file():
        raise UsageError(f"{path}: imatrix file not found")
    return read_imatrix(Path(path))


def quantize(
    model: PathLike,
    output: PathLike,
    *,
    method: str = "gptq",
    bits: int | None = None,
    group_size: int | None = None,
    sym: bool | None = None,
    desc_act: bool = False,
    static_groups: bool = False,
    act_group_aware: bool | None = None,
    damp_percent: float = 0.01,
    calibration_dtype: str = "float32",
    bnb_quant_type: str = "nf4",
    bnb_double_quant: bool = False,
    format: str | None = None,  # noqa: A002 - the CLI's --format
    calibration: PathLike | None = None,
    samples: int = 128,
    seq_len: int = 512,
    moe_calibration: str = "routed",
    smoothing_strength: float = 0.5,
    signround_iters: int = 200,
    signround_lr: float = 0.0,
    signround_batch: int = 8,
    device: DeviceName = "auto",
    verify: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> QuantizeResult:
    """A registered method (GPTQ, AWQ, RTN, HQQ, FP8, SmoothQuant, bnb ...) on an HF checkpoint, layer by layer,
    written as ``format`` (gptq, awq, compressed-tensors, compressed-tensors-fp8, compressed-tensors-int8, fp8,
    torchao, bitsandbytes); ``bits``, ``sym`` and ``format`` default to the method's, ``group_size`` None to the
    method's at that width (128; bnb: 64 at 4 bits, -1 at 8; fp8 and smoothquant: -1); ``verify`` (default: when the
    format's loader is installed) loads it in transformers before it is published. Impossible combinations raise
    UsageError before any work. Mixture-of-experts models are written as compressed-tensors unless ``format`` says
    otherwise (gptq and awq are refused for them: UnsupportedError); ``moe_calibration`` ("routed" or "all")
    chooses the tokens each expert is calibrated on; ``calibration_dtype`` ("float32" or "bfloat16", GPTQ) the dtype
    the layers run in while calibrating; ``smoothing_strength`` is SmoothQuant's migration strength,
    ``signround_*`` SignRound's steps, learning rate (0: 1 / steps) and batch."""
    from mtk.artifacts import quantized
    from mtk.quantizers.config import QuantizeConfig
    from mtk.quantizers.engine import fit_format
    from mtk.quantizers.engine import quantize as _quantize

    try:
        cfg = QuantizeConfig(
            method=method, bits=bits, group_size=group_size, sym=sym, desc_act=desc_act, static_groups=static_groups,
            act_group_aware=act_group_aware, damp_percent=damp_percent, calibration_dtype=calibration_dtype,
            format=format, samples=samples,
            seq_len=seq_len, moe_calibration=moe_calibration, smoothing_strength=smoothing_strength,
            signround_iters=signround_iters, signround_lr=signround_lr, signround_batch=signround_batch,
            bnb_quant_type=bnb_quant_type, bnb_double_quant=bnb_double_quant,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = fit_format(cfg, model, explicit=format is not None)
    if verify is None:
        verify = quantized.runtime_available(str(cfg.format))
    check = (lambda tmp: quantized.verify(tmp, model)) if verify else None
    result = _quantize(
        model, output, cfg, calibration=calibration, device=device, overwrite=overwrite, progress=progress,
        check=check,
    )  # fmt: skip
    return QuantizeResult(result)


def export_onnx(
    model: PathLike,
    output: PathLike,
    *,
    task: str = "auto",
    dtype: Literal["fp32", "fp16"] = "fp32",
    opset: int = 18,
    quantize: Literal["int8", "int4"] | None = None,
    block_size: int = 32,
    optimize: bool = False,
    validate: bool = True,
    overwrite: bool = False,
) -> OnnxExportResult:
    """An HF checkpoint to an ONNX folder (torch.onnx dynamo), validated in onnxruntime unless ``validate`` is
    False (VerificationError beyond tolerance, and nothing is written)."""
    from mtk.artifacts.onnx import validate as validate_onnx
    from mtk.converters.hf_to_onnx import OnnxExportConfig
    from mtk.converters.hf_to_onnx import export_onnx as _export

    try:
        config = OnnxExportConfig(
            task=task, dtype=dtype, opset=opset, quantize=quantize, block_size=block_size,  # type: ignore[arg-type]
            optimize=optimize,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check = validate_onnx if validate else None
    return OnnxExportResult(_export(Path(model), Path(output), config, check=check, overwrite=overwrite))


def imatrix(
    model: PathLike,
    calibration: PathLike,
    output: PathLike,
    *,
    samples: int = 128,
    seq_len: int = 512,
    device: DeviceName = "auto",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ImatrixResult:
    """llama.cpp's importance matrix (GGUF) of an HF checkpoint on calibration text (.txt, .jsonl, .parquet)."""
    from mtk.converters.imatrix import imatrix_from_checkpoint
    from mtk.formats.atomic import check_target

    check_target(Path(output), overwrite=overwrite)  # fail before the (long) collection, not after
    matrix, summary = imatrix_from_checkpoint(
        model, calibration, samples=samples, seq_len=seq_len, device=device, progress=progress
    )
    matrix.write(Path(output), overwrite=overwrite)
    return ImatrixResult({**summary, "output": str(output)})


def bench(
    artifacts: Sequence[PathLike],
    text: PathLike,
    *,
    reference: PathLike | None = None,
    ctx: int = 512,
    windows: int = 8,
    gen_tokens: int = 128,
    fail_if: Sequence[str] = (),
    device: DeviceName = "auto",
    threads: int | None = None,
    json_path: PathLike | None = None,
    plot: PathLike | None = None,
    overwrite: bool = False,
    raise_on_gates: bool = False,
    progress: Progress | None = None,
) -> BenchResult:
    """Perplexity, KL, top-1, size and speed of HF, GGUF and ONNX artifacts on the same token windows, each in its
    own process. ``fail_if`` gates are evaluated into the result (``failed_gates``); with ``raise_on_gates`` a gate
    that holds raises VerificationError (after ``json_path``/``plot`` are written)."""
    from mtk.bench.gates import parse_gate
    from mtk.bench.run import BenchConfig
    from mtk.bench.run import bench as _bench
    from mtk.formats.atomic import atomic_file, check_target
    from mtk.runtime import resolve_device

    gates = [parse_gate(g) for g in fail_if]
    outputs = [Path(p) for p in (json_path, plot) if p is not None]
    for out in outputs:
        check_target(out, overwrite=overwrite)
    try:
        config = BenchConfig(
            ctx=ctx, windows=windows, gen_tokens=gen_tokens, device=resolve_device(device).type,
            **({"threads": threads} if threads is not None else {}),
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    paths = [Path(a) for a in artifacts]
    ref = Path(reference) if reference is not None else None
    result = _bench(paths, Path(text), reference=ref, config=config, gates=gates, progress=progress)
    if json_path is not None:
        with atomic_file(Path(json_path), overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        from mtk.bench.plot import write_plot

        title = f"{Path(result['text']['path']).name}: {result['windows']} x {result['ctx']} tokens"
        write_plot(result["artifacts"], Path(plot), title=title, overwrite=overwrite)
    out = BenchResult(result)
    if raise_on_gates and out.failed_gates:
        raise VerificationError(gate_failure_message(out))
    return out


def gate_failure_message(result: BenchResult) -> str:
    """One line naming the first gate that held and the artifacts it held for."""
    failures = [(g["expr"], f) for g in result["gates"] for f in g["failed"]]
    expr = failures[0][0]
    who = ", ".join(
        f["artifact"] + ("" if f["reason"] == "true" else f" ({f['reason']})") for e, f in failures if e == expr
    )
    more = f"; {len(failures)} failures in all" if len({e for e, _ in failures}) > 1 else ""
    return f"--fail-if {expr!r} holds for {who}{more}"


def run(
    recipe: PathLike,
    *,
    root: PathLike | None = None,
    store: PathLike | None = None,
    jobs: int = 1,
    force: Sequence[str] = (),
    dry_run: bool = False,
    executor: Literal["local", "ray"] = "local",
    address: str | None = None,
    check: bool = False,
) -> RunResult:
    """Run a recipe (``mtk.pipeline.recipe``): every step whose inputs changed, then ``manifest.json`` and the
    model cards under the output root (``root`` overrides the recipe's). Returns the manifest; with ``check``, a
    failed step raises its error class (by exit code) and failed gates VerificationError, after the manifest is
    written. ``dry_run`` returns the plan and runs nothing."""
    from mtk.pipeline.recipe import API_OPTIONS, load_recipe
    from mtk.pipeline.run import run_recipe

    API_OPTIONS.options = api_options()
    parsed = load_recipe(recipe, root=root)
    out = RunResult(
        run_recipe(
            parsed,
            store=Path(store) if store is not None else None,
            jobs=jobs,
            force=force,
            dry_run=dry_run,
            executor=executor,
            address=address,
        )  # fmt: skip
    )
    if check and not dry_run and out["exit_code"]:
        raise error_for(out["exit_code"])(out["error"])
    return out


def api_options() -> dict[str, frozenset[str]]:
    """The keyword-only arguments of the functions a recipe's steps run (a recipe's options must be among them)."""
    import inspect as _inspect

    funcs = {"gguf_export": gguf_export, "quantize": quantize, "export_onnx": export_onnx, "imatrix": imatrix}
    funcs["bench"] = bench
    return {
        name: frozenset(p for p, v in _inspect.signature(f).parameters.items() if v.kind is v.KEYWORD_ONLY)
        for name, f in funcs.items()
    }
