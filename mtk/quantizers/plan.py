"""A family's ``LayerPlan`` for one layer: its ``{xid}`` names (mixture-of-experts) expanded per expert.

Pure data, no torch: the engine, the methods and their math read the expanded names.
"""

from __future__ import annotations

import re

from mtk.converters.family import LayerPlan, ScaleGroup

XID = "{xid}"


def stages(plan: LayerPlan, n_experts: int = 0) -> list[list[tuple[str, ...]]]:
    """``plan.sequential`` as calibration stages: a group named with ``{xid}`` becomes one group per expert, all in
    one stage (the experts see the same layer input, each its own routed tokens); any other group is its own."""
    out = []
    for subset in plan.sequential:
        if any(XID in name for name in subset):
            out.append([tuple(name.replace(XID, str(x)) for name in subset) for x in range(n_experts)])
        else:
            out.append([subset])
    return out


def linear_names(plan: LayerPlan, n_experts: int = 0) -> list[str]:
    """The Linears a layer plan quantizes, in its true-sequential order (``n_experts`` for MoE layers)."""
    return [name for stage in stages(plan, n_experts) for subset in stage for name in subset]


def scale_groups(plan: LayerPlan, n_experts: int = 0) -> list[ScaleGroup]:
    """``plan.awq`` for a layer of ``n_experts``: a group whose ``prev`` is per expert (``{xid}``) becomes one group
    per expert; elsewhere a Linear named with ``{xid}`` stands for that Linear of every expert."""
    out = []
    for g in plan.awq:
        if XID in g.prev:
            for x in range(n_experts):
                out.append(
                    ScaleGroup(
                        g.prev.replace(XID, str(x)),
                        tuple(n.replace(XID, str(x)) for n in g.linears),
                        g.inspect.replace(XID, str(x)),
                        g.prev_rows,
                        g.compensate,
                    )
                )
        else:
            linears = [n.replace(XID, str(x)) for n in g.linears for x in (range(n_experts) if XID in n else [0])]
            out.append(ScaleGroup(g.prev, tuple(linears), g.inspect, g.prev_rows, g.compensate))
    return out


def stored_name(plan: LayerPlan, name: str) -> str:
    """The checkpoint's name of a parameter named by transformers' module tree (``ExpertPlan.stored``)."""
    for module, stored in plan.experts.stored if plan.experts is not None else ():
        name = re.sub(rf"(^|\.)(layers\.\d+\.){re.escape(module)}", rf"\g<1>\g<2>{stored}", name, count=1)
    return name
