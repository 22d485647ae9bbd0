"""GPTQ (Frantar et al., 2022) for one Linear weight, given the Hessian of its layer-wise reconstruction loss.

Columns are quantized in an order (below); the rounding error of each column is spread over the columns not yet
quantized through the inverse Hessian's upper Cholesky factor, ``block_size`` columns at a time with a lazy update
of the rest (the paper's Algorithm 1).

Orders: natural; act-order (``desc_act``: all columns by decreasing Hessian diagonal, so groups are formed in that
order and ``g_idx`` is scattered); group-aware (``act_group_aware``, Gafni et al., CVPRW 2025 "Dual Precision
Quantization", GPTQModel's default): the groups stay the contiguous runs of ``group_size`` columns, columns are
taken by decreasing diagonal inside each group and the groups by decreasing largest diagonal. Most of act-order's
gain, with a natural ``g_idx`` that every kernel reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mtk.errors import MtkError
from mtk.quantizers.grid import fit_gptq, from_codes, to_codes
from mtk.quantizers.layerwise import _Stop, forward_all
from mtk.quantizers.linear import QuantizedLinear, round_to_nearest

if TYPE_CHECKING:
    from mtk.converters.family import LayerPlan
    from mtk.quantizers.config import QuantizeConfig


def hessian_update(h: torch.Tensor, x: torch.Tensor) -> int:
    """Add ``x^T x`` of activations ``(..., in)`` to ``h`` ``(in, in)`` in place; returns the row count."""
    x = x.reshape(-1, x.shape[-1]).to(h.dtype)
    h.addmm_(x.t(), x)
    return x.shape[0]


DAMP_TRIES = 6


class HessianError(MtkError):
    """The Hessian stays not positive definite even with the strongest dampening."""


def inverse_factor(h: torch.Tensor, damp_percent: float) -> tuple[torch.Tensor, int]:
    """Upper Cholesky factor of ``(H + damp I)^-1``, and how many times dampening had to grow tenfold until H was
    positive definite."""
    damp = damp_percent * torch.mean(torch.diag(h))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for tries in range(DAMP_TRIES):
        factor, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, tries
        damp = damp * 10
    raise HessianError("GPTQ: the layer's Hessian is not positive definite even with strong dampening")


def column_order(diag: torch.Tensor, group_size: int, *, desc_act: bool, act_group_aware: bool) -> torch.Tensor:
    """The order in which columns are quantized: ``perm[k]`` is the column quantized k-th (see the module doc).

    Sorts are stable, so equal diagonals keep their natural order and the result is deterministic.
    """
    cols = diag.numel()
    if desc_act:
        return torch.sort(diag, descending=True, stable=True).indices
    if not act_group_aware:
        return torch.arange(cols, device=diag.device)
    by_group = diag.reshape(-1, group_size)  # group_size divides cols (checked by the caller)
    values, inside = torch.sort(by_group, dim=1, descending=True, stable=True)
    groups = torch.sort(values[:, 0], descending=True, stable=True).indices
    base = torch.arange(by_group.shape[0], device=diag.device)[:, None] * group_size
    return (inside + base)[groups].reshape(-1)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    damp_percent: float,
    desc_act: bool = False,
    act_group_aware: bool = False,
    static_groups: bool = False,
    block_size: int = 128,
) -> QuantizedLinear:
    """Quantize ``weight`` ``(out, in)`` against ``hessian`` ``(in, in)`` (float32; neither is modified).

    ``g_idx`` numbers the groups in natural order unless ``desc_act`` (then in the order they were formed).
    """
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    cols = w.shape[1]
    gs = cols if group_size == -1 else group_size
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    static: list[tuple[torch.Tensor, torch.Tensor]] = []
    if static_groups:
        static = [fit_gptq(w[:, g : g + gs], bits, sym) for g in range(0, cols, gs)]
    perm = column_order(torch.diag(h), gs, desc_act=desc_act, act_group_aware=act_group_aware and not static_groups)
    natural_groups = not desc_act  # groups are contiguous runs of gs natural columns: number them by position
    w, h = w[:, perm], h[perm][:, perm]
    hinv, damped = inverse_factor(h, damp_percent)
    block = max(gs, block_size // gs * gs) if gs < cols else block_size
    codes = torch.zeros_like(w)
    fitted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    col_group = torch.empty(cols, dtype=torch.long, device=w.device)  # group of each (permuted) column
    scale = zero = torch.empty(0)
    g = 0
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if static_groups:
                g = int(perm[col]) // gs
                scale, zero = static[g]
            elif col % gs == 0:
                # The group's grid is fitted on its columns as they were when this block of columns started
                # (earlier blocks' updates in, this block's not), as the reference implementations do: on
                # SmolLM2 at 4 bits g64 this gave perplexity 36.33 where fitting on the columns updated by
                # this block's earlier errors gave 37.03 (docs/benchmarks.md).
                scale, zero = fit_gptq(w[:, col : col + gs], bits, sym)
                g = int(perm[col]) // gs if natural_groups else col // gs
                fitted[g] = (scale, zero)
            col_group[col] = g
            x = w1[:, i]
            q = to_codes(x[:, None], scale, zero, bits)[:, 0]
            codes[:, col] = q
            e = (x - from_codes(q[:, None], scale, zero)[:, 0]) / hinv1[i, i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)  # in place: no (out, block) temporary
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    grids = static if static_groups else [fitted[g] for g in range(len(fitted))]
    inv = torch.argsort(perm)
    return QuantizedLinear(
        codes=codes[:, inv],
        scale=torch.stack([s for s, _ in grids], dim=1),
        zero=torch.stack([z for _, z in grids], dim=1),
        g_idx=col_group[inv].to(torch.int32),
        fallback=f"dampening raised {10**damped}x: the Hessian was not positive definite" if damped else "",
    )


def _hessians(
    layer: nn.Module,
    subsets: list[tuple[str, ...]],
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    device: torch.device,
    stop: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``2/n X^T X`` of the input of each subset's first Linear (the subset shares that input), and its row count
    ``n`` (for a MoE expert: the tokens it was calibrated on, possibly none)."""
    hs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for subset in subsets:
        first = layer.get_submodule(subset[0])
        hs[subset[0]] = torch.zeros(first.in_features, first.in_features, device=device)
        counts[subset[0]] = 0

        def hook(_m: nn.Module, args: tuple[Any, ...], key: str = subset[0]) -> None:
            counts[key] += hessian_update(hs[key], args[0])
            if stop:
                raise _Stop

        handles.append(first.register_forward_pre_hook(hook))
    try:
        forward_all(layer, inputs, kwargs, device)
    finally:
        for h in handles:
            h.remove()
    return {k: h * (2 / max(counts[k], 1)) for k, h in hs.items()}, counts


def _quantize_subset(
    layer: nn.Module, subset: tuple[str, ...], h: torch.Tensor, rows: int, cfg: QuantizeConfig
) -> dict[str, QuantizedLinear]:
    """GPTQ each Linear of ``subset`` against ``h``; round to nearest where no row reached it or its Hessian stays
    degenerate under dampening (a MoE expert few or no tokens were routed to)."""
    opts = cfg.options  # methods.gptq.GPTQConfig
    out = {}
    for name in subset:
        lin = layer.get_submodule(name)
        w = lin.weight.data
        q = None
        why = "no calibration tokens reached it: rounded to nearest"
        if rows:
            try:
                q = gptq_quantize(
                    w,
                    h,
                    bits=cfg.bits,
                    group_size=cfg.group_size,
                    sym=bool(cfg.sym),
                    damp_percent=opts.damp_percent,
                    desc_act=opts.desc_act,
                    act_group_aware=bool(opts.act_group_aware),
                    static_groups=opts.static_groups,
                )
            except HessianError:
                why = f"Hessian of {rows} tokens not positive definite under dampening: rounded to nearest"
        if q is None:
            q = round_to_nearest(w, cfg.bits, cfg.group_size, bool(cfg.sym), why)
        lin.weight.data = q.dequantize().to(lin.weight.dtype)
        out[name] = q
    return out


def gptq_layer(
    layer: nn.Module,
    plan: LayerPlan,
    cfg: QuantizeConfig,
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    device: torch.device,
    n_experts: int = 0,
) -> tuple[dict[str, QuantizedLinear], list[int] | None]:
    """GPTQ every Linear of ``layer``; true-sequential: each stage is calibrated after the earlier ones. Returns the
    results and, for a MoE layer, the calibration tokens routed to each expert.

    Each Linear's weight is replaced by its quantized values, so later stages see the quantized earlier ones.
    """
    from mtk.quantizers.moe import calibrating
    from mtk.quantizers.plan import XID, stages

    result: dict[str, QuantizedLinear] = {}
    routed = None
    plan_stages = stages(plan, n_experts)
    rounds = plan_stages if cfg.options.true_sequential else [[s for stage in plan_stages for s in stage]]
    experts_first = {s[0].replace(XID, "0") for s in plan.sequential if XID in s[0]}
    for subsets in rounds:
        with calibrating(layer, cfg.moe_calibration) as experts:
            # A stage of many subsets (the experts) runs the whole layer; one subset stops at its first Linear.
            hs, counts = _hessians(layer, subsets, inputs, kwargs, device, stop=len(subsets) == 1)
            if routed is None and experts and any(s[0] in experts_first for s in subsets):
                routed = [n for m in experts for n in m.routed]
        for subset in subsets:
            result.update(_quantize_subset(layer, subset, hs[subset[0]], counts[subset[0]], cfg))
    return result, routed
