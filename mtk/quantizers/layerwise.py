"""A transformers model run one decoder layer at a time: only that layer and its activations are on the device.

The model is built on the meta device (no memory), its embedding and rotary modules are materialised from the
checkpoint, and one forward pass per calibration sample records the first layer's inputs and the keyword
arguments each layer receives (masks, rotary embeddings: per layer, since Gemma's sliding and global layers
get different ones). Each layer is then loaded from the checkpoint, used, and sent back to the meta device.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtk.converters.family import LayerPlan
from mtk.errors import InvalidFileError, UnsupportedError, quoted
from mtk.formats.checkpoint import HFCheckpoint


class _Stop(Exception):
    """Raised inside a forward pass once everything needed from it has been recorded."""


class _Recorder(nn.Module):
    def __init__(self, index: int, last: bool, store: dict[str, Any], template: nn.Module) -> None:
        super().__init__()
        self.index, self.last, self.store = index, last, store
        if hasattr(template, "attention_type"):
            self.attention_type = template.attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            raise UnsupportedError("decoder layers called with positional arguments are not supported")
        self.store["kwargs"].setdefault(self.index, kwargs)
        if self.index == 0:
            self.store["inputs"].append(hidden_states.detach().to("cpu"))
        if self.last:
            raise _Stop
        return hidden_states


def _gated_q(ckpt: HFCheckpoint) -> bool:
    """Whether the checkpoint's family has gated Q projections (twice the rows: Qwen3.5)."""
    from mtk.converters.family import family_for_model_type

    try:
        return family_for_model_type(str(ckpt.config.get("model_type"))).gated_q
    except UnsupportedError:
        return False


def to_device(value: Any, device: torch.device) -> Any:
    """Move the tensors of nested tuples, lists and dicts to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def layer_output(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def forward_all(layer: nn.Module, inputs: list[torch.Tensor], kwargs: dict[str, Any], device: torch.device) -> None:
    """Run every sample through ``layer`` for its hooks; a hook may stop a pass early with ``_Stop``."""
    with torch.no_grad():
        for x in inputs:
            with contextlib.suppress(_Stop):
                layer_output(layer, x.to(device), kwargs)


def next_inputs(
    layer: nn.Module, inputs: list[torch.Tensor], kwargs: dict[str, Any], device: torch.device
) -> list[torch.Tensor]:
    """The layer's outputs for every sample (on the CPU): the next layer's inputs."""
    with torch.no_grad():
        return [layer_output(layer, x.to(device), kwargs).to("cpu") for x in inputs]


class LayerwiseModel:
    """``model_dir``'s causal LM with decoder layers loaded on demand; see the module notes."""

    def __init__(
        self,
        model_dir: Path | str,
        device: torch.device,
        ckpt: HFCheckpoint | None = None,
        plan: LayerPlan | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """``dtype``: of the layers' weights and activations while calibrating (the checkpoint's are cast to it)."""
        from transformers import AutoModelForCausalLM

        self.ckpt = ckpt or HFCheckpoint(model_dir)
        self.device = device
        self.config = self.ckpt.transformers_config(gated_q=_gated_q(self.ckpt))
        try:
            with torch.device("meta"):
                self.model = AutoModelForCausalLM.from_config(self.config, dtype=dtype)
        # Values transformers loads but cannot build with: a negative width, an unknown activation, a padding id
        # past the vocabulary (torch asserts).
        except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidFileError(
                f"{self.ckpt.path}/config.json: no model can be built from it ({quoted(why, 120)})"
            ) from None
        self.decoder = self.model.get_decoder()
        self.layers: nn.ModuleList = self.decoder.layers
        self.plan = plan
        experts = plan.experts if plan is not None else None
        if experts is not None:  # per-expert Linears, named as the checkpoint's weights (mtk.quantizers.moe)
            from mtk.quantizers.moe import unfuse

            for layer in self.layers:
                unfuse(layer, experts)
        self.ckpt.check_shapes({self.checkpoint_name(n): tuple(p.shape) for n, p in self.model.named_parameters()})
        self.prefix = self._find_prefix()
        # What a method carries from one layer to the next besides the inputs (SignRound: the float model's own
        # hidden states), by the method's name.
        self.carry: dict[str, Any] = {}

    def _find_prefix(self) -> str:
        for name, _ in self.model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                if name in self.ckpt:
                    return name.removesuffix("embed_tokens.weight")
                break
        raise InvalidFileError(f"{self.ckpt.path}: no embed_tokens.weight tensor where transformers expects it")

    def checkpoint_name(self, name: str) -> str:
        """The checkpoint's name of a parameter of the module tree (they differ where ``ExpertPlan.stored`` says)."""
        from mtk.quantizers.plan import stored_name

        return stored_name(self.plan, name) if self.plan is not None else name

    def layer_prefix(self, i: int) -> str:
        return f"{self.prefix}layers.{i}."

    def materialize(self, module: nn.Module, prefix: str) -> None:
        """Allocate ``module`` on the device and fill it from the checkpoint (non-persistent buffers re-derived)."""
        module.to_empty(device=self.device)
        for sub in module.modules():
            self.model._init_weights(sub)  # rotary frequencies, embedding scales: computed, not stored
        with torch.no_grad():
            for name, p in module.named_parameters():
                key = self.checkpoint_name(prefix + name)
                if key not in self.ckpt:
                    raise UnsupportedError(f"{key}: not in the checkpoint (fused or renamed weights)")
                p.copy_(self.ckpt.get(key).to(p.dtype))
                self.ckpt.release(key)

    def load_layer(self, i: int) -> nn.Module:
        layer = self.layers[i]
        self.materialize(layer, self.layer_prefix(i))
        return layer

    def unload_layer(self, i: int) -> None:
        self.layers[i].to("meta")

    def capture(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], dict[int, dict[str, Any]]]:
        """First-layer inputs (one ``(1, L, hidden)`` CPU tensor per sample) and each layer's keyword arguments."""
        for name, child in self.decoder.named_children():
            if name != "layers":
                self.materialize(child, f"{self.prefix}{name}.")
        store: dict[str, Any] = {"inputs": [], "kwargs": {}}
        real = list(self.layers)
        n = len(real)
        for i in range(n):
            self.layers[i] = _Recorder(i, i == n - 1, store, real[i])
        try:
            with torch.no_grad():
                for row in ids:
                    with contextlib.suppress(_Stop):
                        self.decoder(input_ids=row[None].to(self.device), use_cache=False)
        finally:
            for i in range(n):
                self.layers[i] = real[i]
            for name, child in self.decoder.named_children():
                if name != "layers":
                    child.to("meta")
        return store["inputs"], store["kwargs"]
