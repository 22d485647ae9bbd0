"""Mixture-of-experts layers for the layer-wise quantizers: the fused experts of transformers 5 as Linears.

transformers 5 keeps a layer's routed experts in 3-D parameters (``ExpertPlan``: ``gate_up`` ``(E, 2 * inter,
hidden)``, ``down`` ``(E, hidden, inter)``); checkpoints and the quantized output keep one 2-D weight per expert.
While mtk quantizes, each fused module is replaced by :class:`ExpertLinears`, one ``nn.Linear`` per expert
projection named as in the checkpoint (``mlp.experts.3.gate_proj``), computing what the fused module computes.
So every Linear of a MoE layer is an ``nn.Linear`` the methods hook and rewrite as they do dense ones, and a hook
on an expert's Linear sees exactly the tokens routed to it.

Calibration ``routed`` (the default): each expert is calibrated on the tokens its router sends it. ``all``: every
expert also runs on every token of its layer while calibrating (as GPTQModel and llm-compressor can), so rarely
chosen experts get full statistics; the layer's output still combines the routed experts only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from mtk.converters.family import ExpertPlan, LayerPlan

MoeCalibration = Literal["routed", "all"]  # config.MOE_CALIBRATIONS


def expert_count(plan: LayerPlan, config: Any) -> int:
    """The number of routed experts per layer (0 for a dense plan)."""
    return 0 if plan.experts is None else int(getattr(config, plan.experts.count))


class _Expert(nn.Module):
    def __init__(self, names: tuple[str, str, str], hidden: int, inter: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.names = names
        gate, up, down = names
        self.add_module(gate, nn.Linear(hidden, inter, bias=False, dtype=dtype))
        self.add_module(up, nn.Linear(hidden, inter, bias=False, dtype=dtype))
        self.add_module(down, nn.Linear(inter, hidden, bias=False, dtype=dtype))

    def forward(self, x: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self.names)
        return down(act(gate(x)) * up(x))


class ExpertLinears(nn.Module):
    """A fused experts module as ``E`` submodules ``"0"``, ``"1"``, ... of three Linears each; same forward.

    The Linears take the fused weights unless those are on the meta device (the layer-wise engine fills them from
    the checkpoint's per-expert tensors). ``routed`` counts the tokens sent to each expert since the last
    ``reset``; ``calibrate_all`` runs every expert on every token (the output still takes the routed ones only).
    """

    def __init__(self, fused: nn.Module, plan: ExpertPlan) -> None:
        super().__init__()
        gate_up, down = getattr(fused, plan.gate_up), getattr(fused, plan.down)
        n, rows, hidden = gate_up.shape
        inter = rows // 2
        self.count = n
        self.act_fn = fused.act_fn
        for x in range(n):
            expert = _Expert(plan.linears, hidden, inter, gate_up.dtype)
            if not gate_up.is_meta:
                g, u, d = (getattr(expert, name).weight for name in plan.linears)
                with torch.no_grad():
                    g.copy_(gate_up[x, :inter])
                    u.copy_(gate_up[x, inter:])
                    d.copy_(down[x])
            self.add_module(str(x), expert)
        self.calibrate_all = False
        self.routed = [0] * n

    def reset(self) -> None:
        self.routed = [0] * self.count

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        for x in range(self.count):
            token, slot = torch.where(top_k_index == x)
            self.routed[x] += int(token.numel())
            expert = getattr(self, str(x))
            if self.calibrate_all:
                y = expert(hidden_states, self.act_fn)[token]
            elif token.numel():
                y = expert(hidden_states[token], self.act_fn)
            else:
                continue  # no call: an expert's hooks see only the tokens routed to it
            out.index_add_(0, token, (y * top_k_weights[token, slot, None]).to(out.dtype))
        return out


def unfuse(layer: nn.Module, plan: ExpertPlan) -> None:
    """Replace ``layer``'s fused experts module by :class:`ExpertLinears` (on the fused one's device, e.g. meta)."""
    parent_name, _, child = plan.module.rpartition(".")
    parent = layer.get_submodule(parent_name) if parent_name else layer
    fused = getattr(parent, child, None)
    if fused is None or isinstance(fused, ExpertLinears):
        return
    with torch.device(getattr(fused, plan.gate_up).device):
        setattr(parent, child, ExpertLinears(fused, plan))


def expert_modules(layer: nn.Module) -> list[ExpertLinears]:
    return [m for m in layer.modules() if isinstance(m, ExpertLinears)]


@contextlib.contextmanager
def calibrating(layer: nn.Module, mode: MoeCalibration) -> Iterator[list[ExpertLinears]]:
    """Count routed tokens from zero and, for ``all``, run every expert on every token, until the block ends."""
    modules = expert_modules(layer)
    for m in modules:
        m.reset()
        m.calibrate_all = mode == "all"
    try:
        yield modules
    finally:
        for m in modules:
            m.calibrate_all = False


def fused_weights(
    plan: LayerPlan, prefix: str, n_experts: int, weight: Callable[[str], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The fused 3-D parameters (full names) of one layer from its per-expert 2-D weights ``weight(name)``."""
    ep = plan.experts
    if ep is None:
        return {}
    gate, up, down = (f"{prefix}{ep.module}.{{x}}.{n}.weight" for n in ep.linears)
    gate_up = [torch.cat([weight(gate.format(x=x)), weight(up.format(x=x))]) for x in range(n_experts)]
    downs = [weight(down.format(x=x)) for x in range(n_experts)]
    return {
        f"{prefix}{ep.module}.{ep.gate_up}": torch.stack(gate_up),
        f"{prefix}{ep.module}.{ep.down}": torch.stack(downs),
    }
