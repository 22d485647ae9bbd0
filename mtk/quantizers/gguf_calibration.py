"""gguf-export's calibration: per-matrix Hessians ``X^T X`` on calibration text, and the encoder that uses them.

Collected as :mod:`mtk.converters.imatrix` collects llama-imatrix's squared activations: the transformers model
runs one calibration window at a time, and a forward pre-hook on every block matrix (the modules
:func:`~mtk.converters.imatrix.matrix_gguf_names` finds, by GGUF tensor name) adds ``x^T x`` of its input
rows to a float32 ``(in, in)`` sum. The activations are those of the float model (each matrix is compensated
against its own inputs, not those the quantized earlier layers would give). The diagonal over the token count
is exactly the imatrix's mean squared activation, so the same pass gives the importance weights too.

The first token of each window weighs ``first_token_weight`` (16 by default) in the Hessians, not in that
diagonal. Most heads park their attention on the first position (an attention sink), so its values are read by
nearly every later token, and an error there spreads to them all; an unweighted Hessian counts it as one token of
``seq_len``. On SmolLM2-135M, Q4_0 everywhere (docs/benchmarks.md), GPTQ on the V projections alone raised the
perplexity from 8.41 (plain, importance-weighted) to 9.14 with weight 1 and lowered it to 8.26 with weight 16;
on every matrix 8.58 with weight 1, 7.64 with 16.

Memory: one ``in x in`` float32 per matrix (matrices that read the same input, such as Q/K/V, each hold a copy):
for SmolLM2-135M about 0.4 GiB. Fused-expert modules (MoE) are not collected: their tensors are encoded as
without calibration.

:class:`CalibratedEncoder` is what ``gguf-export --calibration`` hands the converter: for each tensor with a
Hessian it runs :func:`mtk.quantizers.gguf_gptq.gptq_or_plain` and reports which encoding it kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gguf import GGMLQuantizationType

from mtk.converters.imatrix import Imatrix, matrix_gguf_names, run_windows
from mtk.errors import UnsupportedError
from mtk.kernels.codes import CODE_BYTES
from mtk.quantizers.gguf_gptq import gptq_or_plain, output_error
from mtk.quantizers.gptq import hessian_update

Progress = Callable[[int, int, str], None]


FIRST_TOKEN_WEIGHT = 16.0


@dataclass
class Hessians:
    """``sums[name]``: float32 ``(in, in)`` sum of ``x^T x`` over the ``counts[name]`` input rows of the GGUF
    tensor ``name``, each window's first row weighted ``first_token_weight``; ``squares[name]`` the unweighted
    column sums of ``x*x`` (llama-imatrix's ``in_sum2``); ``windows`` x ``seq_len`` tokens of ``dataset`` ran."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    squares: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    dataset: str = ""
    windows: int = 0
    seq_len: int = 0
    first_token_weight: float = FIRST_TOKEN_WEIGHT

    def imatrix(self) -> Imatrix:
        """The importance matrix of the same activations, as llama-imatrix's (every token weighs one)."""
        out = Imatrix(datasets=[self.dataset] if self.dataset else [], chunk_count=self.windows)
        out.chunk_size = self.seq_len
        for name, sq in self.squares.items():
            out.sums[name] = sq.float()[None].cpu()
            out.counts[name] = torch.tensor([float(self.counts[name])])
        return out


class _Accumulator:
    """Forward pre-hook state of one matrix, whose input is ``(windows, tokens, in)``."""

    def __init__(self, first_token_weight: float) -> None:
        self.first = first_token_weight
        self.sum: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().float()
        if self.sum is None or self.squares is None:
            self.sum = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
            self.squares = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
        self.count += hessian_update(self.sum, x)
        self.squares += (x.double() ** 2).reshape(-1, x.shape[-1]).sum(0)
        if self.first != 1.0 and x.dim() >= 3:
            head = x[..., 0, :].reshape(-1, x.shape[-1])
            self.sum.addmm_(head.t(), head, alpha=self.first - 1.0)


def collect_hessians(
    model: torch.nn.Module,
    family: Any,
    windows: torch.Tensor,
    *,
    dataset: str = "",
    first_token_weight: float = FIRST_TOKEN_WEIGHT,
    progress: Progress | None = None,
) -> Hessians:
    """Run ``model`` (a transformers causal LM) on int64 ``windows`` (n, seq_len), one per forward, and return
    the Hessian of every block matrix, by GGUF tensor name (on CPU)."""
    names = matrix_gguf_names(model, family)
    if not names:
        raise UnsupportedError(f"no block matrices of {family.gguf_arch} found among the model's modules")
    modules = dict(model.named_modules())
    accs = {gguf_name: _Accumulator(first_token_weight) for gguf_name in names.values()}
    hooks = [modules[m].register_forward_pre_hook(accs[g]) for m, g in names.items()]
    run_windows(model, windows, hooks, progress)
    out = Hessians(
        dataset=dataset, windows=len(windows), seq_len=int(windows.shape[1]), first_token_weight=first_token_weight
    )
    for name, acc in accs.items():
        if acc.sum is not None and acc.squares is not None:
            if not bool(torch.isfinite(acc.sum).all()):
                raise UnsupportedError(f"non-finite activations in {name}: the model overflows on this data")
            out.sums[name], out.squares[name], out.counts[name] = acc.sum.cpu(), acc.squares.cpu(), acc.count
    return out


def hessians_from_checkpoint(
    model_dir: Path | str,
    calibration: Path | str,
    *,
    samples: int = 128,
    seq_len: int = 512,
    device: str = "auto",
    first_token_weight: float = FIRST_TOKEN_WEIGHT,
    progress: Progress | None = None,
) -> Hessians:
    """Load an HF checkpoint folder (float32), tokenize ``calibration`` with its tokenizer, collect the Hessians."""
    if not first_token_weight > 0:
        raise ValueError(f"first_token_weight must be positive, got {first_token_weight}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from mtk.converters.calibration import load_calibration
    from mtk.converters.family import family_for_hf
    from mtk.formats.checkpoint import HFCheckpoint
    from mtk.runtime import resolve_device

    model_dir = Path(model_dir)
    family = family_for_hf(HFCheckpoint(model_dir).architecture)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    windows = load_calibration(calibration, tokenizer, samples, seq_len)
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.to(resolve_device(device)).eval()
    name = Path(calibration).name
    return collect_hessians(
        model, family, windows, dataset=name, first_token_weight=first_token_weight, progress=progress
    )


@dataclass
class CalibratedEncoder:
    """Encodes the matrices ``hessians`` covers with GPTQ on their GGUF grid (or plainly, where that has the lower
    output error); ``report[name]`` says what each got. Called by the converter with a tensor's GGUF name, its
    float32 GGUF-layout weight, its type and its importance row (or None); returns None for a tensor it leaves to
    the ordinary encoder: no Hessian, not a matrix, a type without a code layout (F16, MXFP4 ...)."""

    hessians: Hessians
    damp_percent: float = 0.01
    report: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(
        self, name: str, weight: torch.Tensor, qtype: GGMLQuantizationType, importance: torch.Tensor | None
    ) -> torch.Tensor | None:
        h = self.hessians.sums.get(name)
        if h is None or weight.dim() != 2 or qtype.name not in CODE_BYTES or tuple(h.shape) != (weight.shape[1],) * 2:
            return None
        h = h.to(weight.device)
        choice = gptq_or_plain(weight, h, qtype, importance, damp_percent=self.damp_percent)
        # Relative to the output's own energy ||W X^T||^2, so tensors and models compare.
        scale = output_error(weight, torch.zeros_like(weight), h) or 1.0
        entry: dict[str, Any] = {
            "method": choice.method,
            "relative_output_error": {k: float(f"{v / scale:.6g}") for k, v in choice.errors.items()},
        }
        if choice.why:
            entry["why"] = choice.why
        self.report[name] = entry
        return choice.encoded.data

    def summary(self) -> dict[str, Any]:
        """The ``--json`` result's ``calibration`` object."""
        kept = {"gptq": 0, "importance": 0}
        for entry in self.report.values():
            kept[entry["method"]] += 1
        h = self.hessians
        return {
            "method": "gptq",
            "dataset": h.dataset,
            "samples": h.windows,
            "seq_len": h.seq_len,
            "first_token_weight": h.first_token_weight,
            "kept": kept,
            "tensors": dict(self.report),
        }
