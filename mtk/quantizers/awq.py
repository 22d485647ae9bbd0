"""AWQ (Lin et al., 2023): activation-aware channel scales, then a clipping search, for one decoder layer.

For each scaling group (an operation feeding some Linears, see ``mtk.converters.family.LayerPlan``) the search tries
``s = mean|x|^a / mean|w_normalised|^(1-a)`` for ``a`` on a grid of ``n_grid`` points in [0, 1), folds ``s`` into
the Linears' input columns (``W diag(s)``) and the inverse into the previous operation, fake-quantizes, and keeps
the ``a`` whose inspected module output is closest (mean squared error) to the unquantized one. Then, per
Linear, the largest weight magnitude of each (output channel, group) is shrunk by up to ``max_shrink`` where that
lowers the group's output error on a sample of tokens. Finally the weights are rounded on AWQ's min-max grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mtk.converters.family import LayerPlan, ScaleGroup
from mtk.quantizers.grid import fit_awq, from_codes, grouped, to_codes
from mtk.quantizers.layerwise import layer_output
from mtk.quantizers.linear import QuantizedLinear
from mtk.quantizers.plan import scale_groups, stages

N_GRID = 20
MAX_SHRINK = 0.5
CLIP_TOKENS = 512
CLIP_CHANNELS = 256
# The scale search runs the inspected module N_GRID times; its loss is measured on the first samples up to
# this many tokens (whole samples: attention needs its sequences). The activation statistics use them all.
# On SmolLM2 (16 x 512 calibration tokens) 8192 gave perplexity 36.51 where 4096 gave 36.79 (GPTQModel, which
# scores on every token: 36.61); the cap bounds the search's cost for large calibration sets.
SEARCH_TOKENS = 8192


def fake_quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``w`` ``(out, in)`` rounded to AWQ's per-group grid and back (float32)."""
    rows = grouped(w.float(), group_size)
    scale, zero = fit_awq(rows, bits)
    return from_codes(to_codes(rows, scale, zero, bits), scale, zero).reshape(w.shape)


def awq_codes(w: torch.Tensor, bits: int, group_size: int) -> QuantizedLinear:
    out, cols = w.shape
    rows = grouped(w.float(), group_size)
    scale, zero = fit_awq(rows, bits)
    codes = to_codes(rows, scale, zero, bits).reshape(out, cols)
    gs = cols if group_size == -1 else group_size
    g_idx = (torch.arange(cols, device=w.device) // gs).to(torch.int32)
    return QuantizedLinear(codes, scale.reshape(out, -1), zero.reshape(out, -1), g_idx)


def _output(module: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return module(x)
    # A MoE block flattens its tokens before its Linears see them: give it back a batch of one.
    out = module(x[None] if x.dim() == 2 else x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def search_scales(
    layer: nn.Module,
    group: ScaleGroup,
    xs: list[torch.Tensor],
    run_kwargs: Callable[[nn.Module], dict[str, Any]],
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """The best scale vector ``(in,)`` for ``group``; ``xs`` are the Linears' input batches ``(b, L, in)``."""
    linears = [layer.get_submodule(n) for n in group.linears]
    inspect = layer.get_submodule(group.inspect)
    kwargs = run_kwargs(inspect)
    originals = [lin.weight.data.clone() for lin in linears]
    w = torch.cat(originals, dim=0)
    gw = grouped(w.abs(), group_size)
    w_mean = (gw / (gw.amax(dim=1, keepdim=True) + 1e-6)).reshape(w.shape).mean(dim=0)
    count = sum(x.numel() // x.shape[-1] for x in xs)
    x_mean = sum(x.abs().reshape(-1, x.shape[-1]).sum(dim=0) for x in xs) / count
    per_sample = xs[0].numel() // xs[0].shape[-1]
    xs = xs[: max(1, SEARCH_TOKENS // per_sample)]
    with torch.no_grad():
        reference = [_output(inspect, x, kwargs) for x in xs]
        best_err, best = float("inf"), torch.ones_like(x_mean)
        for k in range(N_GRID):
            a = k / N_GRID
            s = (x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4)).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for lin, w0 in zip(linears, originals, strict=True):
                lin.weight.data = fake_quantize(w0 * s, bits, group_size) / s
            err = sum(
                float((_output(inspect, x, kwargs) - r).float().pow(2).sum())
                for x, r in zip(xs, reference, strict=True)
            )
            if err < best_err:
                best_err, best = err, s
        for lin, w0 in zip(linears, originals, strict=True):
            lin.weight.data = w0
    return best


def apply_scales(layer: nn.Module, group: ScaleGroup, s: torch.Tensor, norm_offset: float) -> None:
    """Fold ``s`` into the group: Linear input columns times ``s``, the previous operation's output over ``s`` (and
    the float modules that also read it, ``compensate``, times ``s``, so that they see what they did)."""
    prev = layer.get_submodule(group.prev)
    with torch.no_grad():
        if isinstance(prev, nn.Linear):
            rows = slice(prev.out_features // 2, None) if group.prev_rows == "second_half" else slice(None)
            prev.weight.data[rows] /= s[:, None]
            if prev.bias is not None:
                prev.bias.data[rows] /= s
        else:  # a norm: y = norm(x) * (offset + w)
            prev.weight.data = (norm_offset + prev.weight.data) / s - norm_offset
            if getattr(prev, "bias", None) is not None:
                prev.bias.data /= s
        for name in group.linears + group.compensate:
            layer.get_submodule(name).weight.data *= s


def sample_tokens(xs: list[torch.Tensor], n: int) -> torch.Tensor:
    """About ``n`` token rows ``(t, in)`` taken evenly from input batches ``(b, L, in)``."""
    rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])
    return rows[:: max(1, rows.shape[0] // n)]


def search_clip(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Per (output channel, group) clipping bounds ``(out, n_groups)`` for ``w`` given token rows ``x`` ``(t, in)``."""
    out, cols = w.shape
    gs = cols if group_size == -1 else group_size
    n = cols // gs
    xg = x.float().reshape(-1, n, gs).transpose(0, 1)  # (n, t, g)
    bounds = []
    for o in range(0, out, CLIP_CHANNELS):
        wg = w[o : o + CLIP_CHANNELS].float().reshape(-1, n, gs)  # (c, n, g)
        peak = wg.abs().amax(dim=-1, keepdim=True)  # (c, n, 1)
        reference = torch.bmm(xg, wg.permute(1, 2, 0))  # (n, t, c): each group's share of the outputs
        best_err = torch.full((n, wg.shape[0]), float("inf"), device=w.device)
        best = peak.clone()
        for k in range(int(MAX_SHRINK * N_GRID)):
            bound = peak * (1 - k / N_GRID)
            q = fake_quantize(torch.clamp(wg, -bound, bound).reshape(wg.shape[0], -1), bits, gs).reshape(wg.shape)
            err = (torch.bmm(xg, q.permute(1, 2, 0)) - reference).pow(2).mean(dim=1)  # (n, c)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better.t()[..., None], bound, best)
        bounds.append(best[..., 0])
    return torch.cat(bounds, dim=0)


def clip_weight(linear: nn.Linear, bounds: torch.Tensor, group_size: int) -> None:
    out, cols = linear.weight.shape
    gs = cols if group_size == -1 else group_size
    wg = linear.weight.data.reshape(out, cols // gs, gs)
    linear.weight.data = torch.clamp(wg, -bounds[..., None], bounds[..., None]).reshape(out, cols)


def awq_layer(
    layer: nn.Module,
    plan: LayerPlan,
    inputs: dict[str, list[torch.Tensor]],
    run_kwargs: Callable[[nn.Module], dict[str, Any]],
    bits: int,
    group_size: int,
    n_experts: int = 0,
) -> dict[str, QuantizedLinear]:
    """Scale, clip and round every Linear of ``layer``; ``inputs`` maps each subset's first Linear to its inputs.

    A MoE expert no calibration token reached has no inputs: its groups are skipped and its Linears rounded on
    AWQ's grid without clipping (the result says so in ``fallback``).
    """
    subsets = [s for stage in stages(plan, n_experts) for s in stage]
    groups = [g for g in scale_groups(plan, n_experts) if inputs[g.linears[0]] and _applicable(layer, g)]
    found = [(g, search_scales(layer, g, inputs[g.linears[0]], run_kwargs, bits, group_size)) for g in groups]
    for g, s in found:
        apply_scales(layer, g, s, plan.norm_offset)
        for first in {sub[0] for sub in subsets if sub[0] in g.linears}:
            # The Linears now see their input over s (new tensors: experts calibrated on all tokens share them).
            inputs[first] = [x / s for x in inputs[first]]
    result = {}
    for subset in subsets:
        xs = inputs[subset[0]]
        for name in subset:
            lin = layer.get_submodule(name)
            if name not in plan.no_clip and xs:
                bounds = search_clip(lin.weight.data, sample_tokens(xs, CLIP_TOKENS), bits, group_size)
                clip_weight(lin, bounds, group_size)
            result[name] = awq_codes(lin.weight.data, bits, group_size)
            if not xs:
                result[name].fallback = "no calibration tokens reached it: no scale or clipping search"
    return result


def layer_inputs(
    layer: nn.Module,
    plan: LayerPlan,
    inputs: list[torch.Tensor],
    kwargs: dict[str, Any],
    device: torch.device,
    n_experts: int = 0,
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    """The input of each subset's first Linear for every sample (MoE experts: the tokens they were given), and the
    layer's float outputs."""
    seen: dict[str, list[torch.Tensor]] = {s[0]: [] for stage in stages(plan, n_experts) for s in stage}
    handles = [
        layer.get_submodule(k).register_forward_pre_hook(lambda _m, args, key=k: seen[key].append(args[0].detach()))
        for k in seen
    ]
    outputs = []
    try:
        with torch.no_grad():
            for x in inputs:
                outputs.append(layer_output(layer, x.to(device), kwargs).to("cpu"))
    finally:
        for h in handles:
            h.remove()
    return seen, outputs


def _applicable(layer: nn.Module, group: ScaleGroup) -> bool:
    """A Linear-to-Linear group needs matching widths (not so under grouped-query attention's v -> o)."""
    prev = layer.get_submodule(group.prev)
    first = layer.get_submodule(group.linears[0])
    if isinstance(prev, nn.Linear):
        width = prev.out_features // 2 if group.prev_rows == "second_half" else prev.out_features
        return width == first.in_features
    return True
