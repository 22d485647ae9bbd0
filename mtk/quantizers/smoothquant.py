"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before W8A8 quantization.

For each Linear group fed by a norm (q/k/v after the attention norm, gate/up after the MLP norm: the ``prev`` of the
layer plan's scaling groups that is not a Linear), per input channel ``j``: ``s_j = max|X_j|^a / max|W_j|^(1-a)``
with ``max|X_j|`` over every calibration token and ``max|W_j|`` over the rows of all the group's Linears (a
channel whose weights are all zero keeps ``s_j = max|X_j|``, as llm-compressor); ``a`` is the smoothing strength
(the paper's and llm-compressor's default 0.5). The Linears' columns are multiplied by ``s`` and the norm's weight
divided by it, so the float model computes the same function while its Linear inputs lose their outlier channels,
which per-token int8 rounding then represents better. The weights are then rounded to nearest on a symmetric
8-bit grid per output channel.
"""

from __future__ import annotations

import torch
from torch import nn

from mtk.converters.family import LayerPlan
from mtk.quantizers.awq import apply_scales
from mtk.quantizers.linear import QuantizedLinear, round_to_nearest
from mtk.quantizers.plan import linear_names, scale_groups


def smoothing_scales(x_max: torch.Tensor, weights: list[torch.Tensor], strength: float) -> torch.Tensor:
    """``s`` ``(in,)`` from the inputs' per-channel max ``|x|`` and the weights ``(out_k, in)`` that read them."""
    w_max = torch.cat([w.abs().amax(dim=0, keepdim=True) for w in weights]).amax(dim=0).float()
    x_max = x_max.float()
    s = x_max.pow(strength) / w_max.pow(1 - strength)
    s = torch.where(w_max > 0, s, x_max)
    return torch.where(s > 0, s, torch.ones_like(s))  # a channel never active and never read: left alone


def smooth_layer(
    layer: nn.Module, plan: LayerPlan, x_max: dict[str, torch.Tensor], strength: float
) -> dict[str, torch.Tensor]:
    """Fold the smoothing scales into ``layer`` in place; ``x_max`` maps each group's first Linear to its inputs'
    per-channel max ``|x|``. Returns each smoothed norm's scales."""
    done = {}
    for g in scale_groups(plan):
        if isinstance(layer.get_submodule(g.prev), nn.Linear) or g.linears[0] not in x_max:
            continue  # a Linear -> Linear group (v -> o, up -> down): not SmoothQuant's, whose scales fold into norms
        weights = [layer.get_submodule(n).weight.data for n in g.linears]
        s = smoothing_scales(x_max[g.linears[0]], weights, strength).to(weights[0].dtype)
        apply_scales(layer, g, s, plan.norm_offset)
        done[g.prev] = s
    return done


def smoothquant_layer(
    layer: nn.Module, plan: LayerPlan, x_max: dict[str, torch.Tensor], strength: float
) -> dict[str, QuantizedLinear]:
    """Smooth, then round every Linear of ``layer`` to nearest, 8 bits symmetric per output channel."""
    smooth_layer(layer, plan, x_max, strength)
    return {name: round_to_nearest(layer.get_submodule(name).weight.data, 8, -1, True) for name in linear_names(plan)}
