"""SignRound (Cheng et al., 2023; Intel's AutoRound): tuned rounding and clipping for one decoder layer.

Every Linear's weight ``W`` gets a rounding offset ``V`` (its shape, in [-0.5, 0.5], start 0) and per-group
coefficients ``a``, ``b`` (in [0, 1], start 1) on the group's min and max. The grid of a group is fitted on
``lo = min(w, 0) * a`` .. ``hi = max(w, 0) * b`` and each value is ``clamp(round(w / scale + V) + zero)``, rounding
with a straight-through gradient. Asymmetric: GPTQ's min-max fit (mtk.quantizers.grid), zero points >= 1.
Symmetric: AutoRound's full-range grid, ``scale = ±max(-lo, hi) / 2^(bits-1)`` with zero ``2^(bits-1)``, signed so
that the larger side lands on code 0, the one level a symmetric grid has beyond the other side (GPTQ's symmetric
grid leaves it unused: ``2 max|w| / (2^bits - 1)``). A negative scale is stored as it is: ``scale * (code - zero)``
is what every GPTQ/AWQ/compressed-tensors kernel computes. The layer's output with those
weights is compared with its float output (mean squared error) on a batch of calibration samples, and ``V``, ``a``,
``b`` take signed gradient steps (``p -= lr * sign(grad)``) with the learning rate decaying linearly from ``lr`` to 0
over ``iters`` steps; the parameters of the step with the lowest batch loss are kept. AutoRound's defaults: 200
steps, ``lr = 1 / iters``, batches of 8 samples (drawn in a shuffled order, a new permutation when one is used up).

Inputs and target (AutoRound's two streams): each layer trains on the outputs of the already quantized layers
before it, and its target is the float model's own hidden states at that layer (the float layer's outputs on the
float inputs), so a layer also makes up for what the earlier layers lost. Each step runs its batch as one forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from mtk.quantizers.grid import grouped, max_code
from mtk.quantizers.layerwise import layer_output
from mtk.quantizers.linear import QuantizedLinear

SEED = 0  # the batch order: deterministic bytes


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def tuned_grid(
    w: torch.Tensor, v: torch.Tensor, lo_coef: torch.Tensor, hi_coef: torch.Tensor, bits: int, group: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``(out * n, g)``, scale and zero ``(out * n,)`` of ``w`` ``(out, in)`` with offsets ``v`` and the
    coefficients ``(out, n)`` on each group's min and max (differentiable through straight-through rounding)."""
    maxq = max_code(bits)
    rows, offsets = grouped(w, group), grouped(v, group)
    lo = torch.clamp(rows.amin(dim=1), max=0) * lo_coef.reshape(-1)
    hi = torch.clamp(rows.amax(dim=1), min=0) * hi_coef.reshape(-1)
    if sym:  # AutoRound's full-range grid: the larger side on code 0 (value -2^(bits-1)), zero at 2^(bits-1)
        half = (maxq + 1) / 2
        larger = torch.maximum(-lo, hi)
        sign = torch.where(-lo > hi, 1.0, -1.0)  # a negative scale when the positive side is the larger one
        scale = sign * torch.clamp(larger / half, min=1e-5)
        zero = torch.full_like(scale, half)
    else:  # zero points >= 1, as the GPTQ v1 layout stores zero - 1 (grid.fit_gptq)
        scale = torch.clamp((hi - lo) / maxq, min=1e-5)
        zero = torch.clamp(_round_ste(-lo / scale), 1, maxq)
    codes = torch.clamp(_round_ste(rows / scale[:, None] + offsets) + zero[:, None], 0, maxq)
    return codes, scale, zero


class _TunedWeight(nn.Module):
    """The parametrization of a Linear's weight: its tuned-grid dequantized values."""

    def __init__(self, w: torch.Tensor, bits: int, group: int, sym: bool) -> None:
        super().__init__()
        out, cols = w.shape
        self.bits, self.group, self.sym = bits, cols if group == -1 else group, sym
        n = cols // self.group
        self.v = nn.Parameter(torch.zeros_like(w))
        self.lo = nn.Parameter(torch.ones(out, n, dtype=w.dtype, device=w.device))
        self.hi = nn.Parameter(torch.ones(out, n, dtype=w.dtype, device=w.device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, scale, zero = tuned_grid(w, self.v, self.lo, self.hi, self.bits, self.group, self.sym)
        return (scale[:, None] * (codes - zero[:, None])).reshape(w.shape)

    def clamp_(self) -> None:
        self.v.data.clamp_(-0.5, 0.5)
        self.lo.data.clamp_(0, 1)
        self.hi.data.clamp_(0, 1)

    def result(self, w: torch.Tensor) -> QuantizedLinear:
        with torch.no_grad():
            codes, scale, zero = tuned_grid(w, self.v, self.lo, self.hi, self.bits, self.group, self.sym)
        out, cols = w.shape
        g_idx = (torch.arange(cols, device=w.device) // self.group).to(torch.int32)
        return QuantizedLinear(codes.reshape(out, cols), scale.reshape(out, -1), zero.reshape(out, -1), g_idx)


def _descend(
    layer: nn.Module,
    tuned: dict[str, _TunedWeight],
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    kwargs: dict[str, Any],
    iters: int,
    lr: float,
    batch: int,
) -> tuple[float, float]:
    """``iters`` signed-gradient steps on the tuned parameters, the learning rate decaying linearly from ``lr`` to 0;
    leaves them at the step with the lowest batch loss. Returns the first and the lowest loss."""
    params = [p for t in tuned.values() for p in t.parameters()]
    gen = torch.Generator().manual_seed(SEED)
    order: list[int] = []
    first, best, best_state = None, float("inf"), [p.detach().clone() for p in params]
    for i in range(iters):
        if len(order) < batch:
            order += torch.randperm(len(xs), generator=gen).tolist()
        picked, order = order[:batch], order[batch:]
        x, y = torch.cat([xs[k] for k in picked]), torch.cat([ys[k] for k in picked])
        loss = torch.nn.functional.mse_loss(layer_output(layer, x, kwargs), y)
        value = float(loss.detach())
        first = value if first is None else first
        if value < best:  # the parameters this loss was measured with (before this step)
            best, best_state = value, [p.detach().clone() for p in params]
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * (1 - i / iters) * torch.sign(g))
        for t in tuned.values():
            t.clamp_()
    with torch.no_grad():
        for p, saved in zip(params, best_state, strict=True):
            p.copy_(saved)
    return float(first or 0.0), best


def signround_layer(
    layer: nn.Module,
    names: list[str],
    inputs: list[torch.Tensor],
    targets: list[torch.Tensor],
    kwargs: dict[str, Any],
    device: torch.device,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    iters: int,
    lr: float | None,
    batch: int,
) -> tuple[dict[str, QuantizedLinear], dict[str, float]]:
    """Tune and round the Linears ``names`` of ``layer`` on ``inputs`` against ``targets`` (one ``(1, L, hidden)``
    tensor per sample each); their weights are left holding the quantized values. Returns the results and the first
    and best batch losses."""
    xs = [x.to(device) for x in inputs]
    ys = [y.to(device) for y in targets]
    layer.requires_grad_(False)  # gradients for the tuned parameters only
    tuned: dict[str, _TunedWeight] = {}
    for name in names:
        lin = layer.get_submodule(name)
        tuned[name] = _TunedWeight(lin.weight.data.float(), bits, group_size, sym)
        parametrize.register_parametrization(lin, "weight", tuned[name], unsafe=True)
    try:
        first, best = _descend(layer, tuned, xs, ys, kwargs, iters, 1.0 / iters if lr is None else lr, batch)
        result = {}
        for name, t in tuned.items():
            lin = layer.get_submodule(name)
            w = lin.parametrizations.weight.original.data
            result[name] = t.result(w)
    finally:
        for name in tuned:
            parametrize.remove_parametrizations(layer.get_submodule(name), "weight", leave_parametrized=False)
    for name, q in result.items():
        layer.get_submodule(name).weight.data = q.dequantize().to(layer.get_submodule(name).weight.dtype)
    return result, {"first_loss": first, "best_loss": best}
