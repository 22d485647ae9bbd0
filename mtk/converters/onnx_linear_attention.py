"""Linear-attention layers (Qwen3.5's gated delta net) in an ONNX decoder: their states travel as cache tensors.

transformers runs a gated delta net's prefill in chunks (a Python loop over a count of chunks that depends on the
sequence length, and a triangular solve: torch.onnx can trace neither with a dynamic length) and its decode step
token by token. While tracing, :func:`traceable` puts a twin in each linear-attention module's place that
computes the same function from the same parameters: the causal depthwise conv over [conv state, new inputs],
and the delta rule one token at a time as a ``scan`` (an ONNX ``Scan`` over the new tokens). A prefill from
zero states is then the same computation as a decode step, in one graph. Per linear-attention layer ``i`` the
graph takes and returns two tensors instead of a key and a value:

- ``past_key_values.{i}.conv`` / ``present.{i}.conv``: (batch, conv_dim, kernel), the last ``kernel`` inputs of
  the conv (``conv_dim = 2 * key_heads * key_head_dim + value_heads * value_head_dim``); zeros start a sequence,
  as transformers pads the first conv window with zeros.
- ``past_key_values.{i}.recurrent`` / ``present.{i}.recurrent``: (batch, value_heads, key_head_dim,
  value_head_dim), the delta rule's state (float32 in the fp32 graph); zeros start a sequence.

Full-attention layers keep ``key``/``value`` of (batch, kv_heads, past, head_dim).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

LINEAR = "linear_attention"
STATES = ("conv", "recurrent")


def layer_types(config: Any) -> list[str] | None:
    """The decoder's layer types when some are linear attention (a hybrid model), else None."""
    types = list(getattr(config.get_text_config(decoder=True), "layer_types", None) or [])
    return types if LINEAR in types else None


def cache_names(types: list[str]) -> list[str]:
    """The cache tensors' name suffixes in graph order: ``{i}.key``/``{i}.value``, or ``{i}.conv``/``{i}.recurrent``."""
    return [f"{i}.{k}" for i, t in enumerate(types) for k in (STATES if t == LINEAR else ("key", "value"))]


def flat_cache(cache: Any, types: list[str]) -> list[torch.Tensor]:
    """A transformers hybrid cache (after a forward) as the graph's flat list of cache tensors."""
    out = []
    for layer, kind in zip(cache.layers, types, strict=True):
        pair = (layer.conv_states[0], layer.recurrent_states[0]) if kind == LINEAR else (layer.keys, layer.values)
        out += [t.clone() for t in pair]
    return out


def cache_layout(model: Any, types: list[str]) -> dict[str, Any]:
    """The manifest's ``cache`` fields for the linear-attention layers' states (shapes without the batch)."""
    text = model.config.get_text_config(decoder=True)
    conv = 2 * text.linear_num_key_heads * text.linear_key_head_dim
    conv += text.linear_num_value_heads * text.linear_value_head_dim
    return {
        "layer_types": types,
        "conv_shape": [conv, text.linear_conv_kernel_dim],
        "recurrent_shape": [text.linear_num_value_heads, text.linear_key_head_dim, text.linear_value_head_dim],
    }


class _States:
    """The linear-attention states of one traced forward: what the graph feeds in, what the twins return."""

    def __init__(self) -> None:
        self.past: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.present: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)  # as transformers' (and FLA's) l2norm


def delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule, one token at a time as a ``scan``: per step ``S = S * exp(g)``, then
    ``S += k (beta (v - S^T k))^T``, output ``S^T q``. Shapes: q, k (batch, n, heads, dk), v (batch, n, heads, dv),
    g, beta (batch, n, heads), state (batch, heads, dk, dv); returns the output (batch, n, heads, dv) and the
    last state."""
    from torch._higher_order_ops.scan import scan  # torch.onnx lowers it to an ONNX Scan

    def step(s: torch.Tensor, x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        q_t, k_t, v_t, g_t, b_t = x
        s = s * g_t.exp()[..., None, None]
        delta = (v_t - (s * k_t[..., None]).sum(dim=-2)) * b_t[..., None]
        s = s + k_t[..., None] * delta[..., None, :]
        return s, (s * q_t[..., None]).sum(dim=-2)

    last, out = scan(step, state, tuple(t.transpose(0, 1) for t in (q, k, v, g, beta)))
    return out.transpose(0, 1), last


class GatedDeltaNetTwin(torch.nn.Module):
    """transformers' Qwen3_5GatedDeltaNet, its states taken from and returned to ``states`` (see the module notes).

    The same parameters (``net``'s own modules), the same operations in the same precision as its forward.
    """

    def __init__(self, net: torch.nn.Module, states: _States, index: int) -> None:
        super().__init__()
        self.net, self.states, self.index = net, states, index

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
        from transformers.activations import ACT2FN

        net: Any = self.net
        conv_state, state = self.states.past.get(self.index) or self._zeros(hidden_states)
        if attention_mask is not None and attention_mask.ndim == 2:  # padding positions write nothing
            hidden_states = (hidden_states * attention_mask[:, :, None]).to(hidden_states.dtype)
        batch, n, _ = hidden_states.shape
        mixed = net.in_proj_qkv(hidden_states).transpose(1, 2)
        full = torch.cat([conv_state.to(mixed.dtype), mixed], dim=-1)  # (batch, conv_dim, kernel + n)
        conv = F.conv1d(full, net.conv1d.weight, groups=full.shape[1])[..., -n:]
        mixed = ACT2FN[net.activation](conv).transpose(1, 2)
        q, k, v = torch.split(mixed, [net.key_dim, net.key_dim, net.value_dim], dim=-1)
        per_k = net.num_v_heads // net.num_k_heads
        q = _l2norm(q.reshape(batch, n, -1, net.head_k_dim).float()).repeat_interleave(per_k, dim=2)
        k = _l2norm(k.reshape(batch, n, -1, net.head_k_dim).float()).repeat_interleave(per_k, dim=2)
        v = v.reshape(batch, n, -1, net.head_v_dim).float()
        beta = net.in_proj_b(hidden_states).sigmoid().float()
        g = -net.A_log.float().exp() * F.softplus(net.in_proj_a(hidden_states).float() + net.dt_bias)
        out, last = delta_rule(q * net.head_k_dim**-0.5, k, v, g, beta, state.float())
        self.states.present[self.index] = (full[..., -conv_state.shape[-1] :], last.to(state.dtype))
        z = net.in_proj_z(hidden_states).reshape(-1, net.head_v_dim)
        out = net.norm(out.to(hidden_states.dtype).reshape(-1, net.head_v_dim), z).reshape(batch, n, -1)
        return net.out_proj(out)

    def _zeros(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The states a sequence starts from (a graph without cache inputs: ``text-generation``)."""
        net: Any = self.net
        batch = hidden_states.shape[0]
        conv = hidden_states.new_zeros(batch, net.conv_dim, net.conv_kernel_size)
        return conv, hidden_states.new_zeros(
            batch, net.num_v_heads, net.head_k_dim, net.head_v_dim, dtype=torch.float32
        )


@contextmanager
def traceable(model: Any, types: list[str]) -> Iterator[_States]:
    """Each linear-attention layer's module replaced by its twin while tracing, then the model's own again."""
    states = _States()
    if LINEAR not in types:  # not a hybrid model (an encoder has no .model.layers at all)
        yield states
        return
    layers = model.model.layers
    originals = {i: layers[i].linear_attn for i, t in enumerate(types) if t == LINEAR}
    try:
        for i, net in originals.items():
            layers[i].linear_attn = GatedDeltaNetTwin(net, states, i)
        yield states
    finally:
        for i, net in originals.items():
            layers[i].linear_attn = net


class HybridCausalLMWithPast(torch.nn.Module):
    """``CausalLMWithPast`` for hybrid models: ``(ids, mask, positions, cache...) -> (logits, cache'...)`` with
    the cache tensors of :func:`cache_names` (the twins of :func:`traceable` must be in place)."""

    def __init__(self, model: torch.nn.Module, types: list[str], states: _States) -> None:
        super().__init__()
        self.model, self.types, self.states = model, types, states

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i, kind in enumerate(self.types):
            first, second = past[2 * i], past[2 * i + 1]
            if kind == LINEAR:
                self.states.past[i] = (first, second)
            else:
                cache.layers[i].update(first, second)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
        )
        present: list[torch.Tensor] = []
        for i, kind in enumerate(self.types):
            layer = cache.layers[i]
            present += list(self.states.present[i]) if kind == LINEAR else [layer.keys, layer.values]
        return (out.logits, *present)
