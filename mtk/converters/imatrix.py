"""Importance matrices (llama.cpp's imatrix): per-input-column sums of squared activations of each matrix.

What llama.cpp's ``llama-imatrix`` collects, and how mtk computes it: for every weight matrix of a block
(``blk.N.*``) the input activations ``x`` of each token that meets the matrix are squared and summed per
input column (``in_sum2``, float32 ``(n_mat, cols)``, ``n_mat`` = 1 for a dense matrix), and the tokens are
counted (``counts``, float32 ``(n_mat,)``). A quantizer weighs column ``j`` of the tensor by
``in_sum2[j] / counts`` (the mean squared activation); a matrix with count 0 gets weights 1.

mtk runs the Hugging Face model in transformers, one calibration sample (a chunk of ``seq_len`` tokens) at
a time, with forward pre-hooks on its matrix modules (``nn.Linear``, MoE routers); the hooks accumulate in
float64 on the activations' device, so memory holds the model, one chunk's activations and one vector per
matrix. Module names map to GGUF tensor names through the family tables (:mod:`mtk.converters.family`).
Mixture-of-experts layers (transformers' fused experts modules, gpt-oss's too) are accounted per expert, as
llama.cpp does for its 3-D expert tensors: ``in_sum2`` (n_expert, cols) and ``counts`` (n_expert,) of the
(token, chosen expert) pairs.

File format (llama.cpp's GGUF imatrix, tools/imatrix/imatrix.cpp ``save_imatrix``): metadata
``general.type = "imatrix"``, ``imatrix.datasets`` (array of strings), ``imatrix.chunk_count`` and
``imatrix.chunk_size`` (u32); for each matrix, sorted by name, F32 tensors ``<name>.in_sum2`` (ggml ne
``(cols, n_mat)``) and ``<name>.counts`` (ne ``(1, n_mat)``), trailing unit dimensions dropped as
``ggml_n_dims`` does.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gguf import GGMLQuantizationType

from mtk.errors import InvalidFileError, UnsupportedError, quoted

Q = GGMLQuantizationType
Progress = Callable[[int, int, str], None]
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"


@dataclass
class Imatrix:
    """In-memory imatrix: ``sums[name]`` float32 (n_mat, cols), ``counts[name]`` float32 (n_mat,)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def importance(self, name: str) -> torch.Tensor | None:
        """llama-quantize's importance of tensor ``name``: ``in_sum2 / counts`` per matrix, float32
        (n_mat, cols); ones for a matrix never reached (count 0); None when the file lacks the tensor."""
        if name not in self.sums:
            return None
        sums, counts = self.sums[name].float(), self.counts[name].float()
        seen = counts > 0
        out = torch.ones_like(sums)
        out[seen] = sums[seen] / counts[seen, None]
        return out

    def write(self, path: Path | str, *, overwrite: bool = False) -> None:
        """Write llama.cpp's GGUF imatrix file (see the module docstring), atomically."""
        from mtk.formats.atomic import atomic_file
        from mtk.formats.gguf_writer import GGUFStreamWriter, PlannedGGUFTensor

        meta = {
            "general.type": "imatrix",
            "imatrix.datasets": list(self.datasets),
            "imatrix.chunk_count": int(self.chunk_count),
            "imatrix.chunk_size": int(self.chunk_size),
        }
        tensors: list[tuple[str, torch.Tensor]] = []
        for name in sorted(self.sums):
            sums = self.sums[name].float().contiguous()
            counts = self.counts[name].float().reshape(-1, 1).contiguous()
            tensors += [(name + SUM_SUFFIX, sums), (name + COUNT_SUFFIX, counts)]
        plan = [PlannedGGUFTensor(n, Q.F32, _ggml_dims(tuple(t.shape))) for n, t in tensors]
        with atomic_file(Path(path), overwrite=overwrite) as tmp, open(tmp, "wb") as fp:
            writer = GGUFStreamWriter(fp, meta, plan)
            for n, t in tensors:
                writer.write(n, t)
            writer.finish()


def _ggml_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop leading unit dimensions (trailing in ggml order), as ``ggml_n_dims`` when llama.cpp writes."""
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def read_imatrix(path: Path | str) -> Imatrix:
    """Read a GGUF imatrix file (mtk's or llama.cpp's). Raises InvalidFileError for anything else."""
    from mtk.formats.gguf_reader import open_gguf

    model = open_gguf(path)
    try:
        kind = model.metadata.get("general.type")
        if kind != "imatrix":
            raise InvalidFileError(f"{path}: not an imatrix GGUF (general.type is {kind!r})")
        out = Imatrix(
            datasets=list(model.metadata.get("imatrix.datasets", [])),
            chunk_count=int(model.metadata.get("imatrix.chunk_count", 0)),
            chunk_size=int(model.metadata.get("imatrix.chunk_size", 0)),
        )
        raw = {}
        for t in model.tensors:
            if t.qtype != Q.F32:
                raise InvalidFileError(f"{path}: imatrix tensor {quoted(t.name)} is {t.qtype.name}, not F32")
            raw[t.name] = model.tensor_bytes(t).view(torch.float32).clone()
        for name in raw:
            if not name.endswith(SUM_SUFFIX):
                continue
            base = name.removesuffix(SUM_SUFFIX)
            counts = raw.get(base + COUNT_SUFFIX)
            if counts is None or raw[name].numel() % counts.numel():
                raise InvalidFileError(f"{path}: {quoted(base)} has in_sum2 but no matching counts")
            out.sums[base] = raw[name].reshape(counts.numel(), -1)
            out.counts[base] = counts.reshape(-1)
        if not out.sums:
            raise InvalidFileError(f"{path}: the imatrix holds no tensors")
        return out
    finally:
        model.close()


# --- collection in transformers -----------------------------------------------------------------------------


class _Accumulator:
    """Forward pre-hook state for one matrix: float64 column sums of x*x and the token count."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        x = x.reshape(-1, x.shape[-1]).double()
        part = (x * x).sum(0)
        self.sums = part if self.sums is None else self.sums + part
        self.count += x.shape[0]


class _ExpertAccumulator:
    """Forward pre-hook state for a transformers fused-experts module (``gate_up_proj`` (E, 2F, H),
    ``down_proj`` (E, H, F), ``act_fn``; called with hidden states (T, H) and top-k expert ids (T, k)).

    As llama.cpp's MUL_MAT_ID accounting: each (token, chosen expert) pair adds the token's x*x to that
    expert's row of gate/up (which read the same input) and counts one for it; the down projection's input
    ``act(x W_gate^T) * (x W_up^T)`` is recomputed here from the expert's weights.
    """

    def __init__(self, n_expert: int, hidden: int, inner: int, device: torch.device) -> None:
        self.sums_in = torch.zeros(n_expert, hidden, dtype=torch.float64, device=device)
        self.sums_down = torch.zeros(n_expert, inner, dtype=torch.float64, device=device)
        self.counts = torch.zeros(n_expert, dtype=torch.float64, device=device)

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        hidden, top_k = args[0].detach(), args[1]
        for e in top_k.unique().tolist():
            if not 0 <= e < self.counts.shape[0]:
                continue  # transformers' padding id for dropped tokens
            x = hidden[(top_k == e).any(-1)]
            h = _down_input(module, e, x).double()
            xd = x.double()
            self.sums_in[e] += (xd * xd).sum(0)
            self.sums_down[e] += (h * h).sum(0)
            self.counts[e] += x.shape[0]


def _down_input(module: torch.nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """What expert ``e``'s down projection reads for tokens ``x`` (T, H): ``act(gate) * up``, or gpt-oss's
    clamped SwiGLU (its own ``_apply_gate``) of its biased, input-major, interleaved ``gate_up_proj`` (E, H, 2F)."""
    if _is_gpt_oss_experts(module):
        return module._apply_gate(x @ module.gate_up_proj[e] + module.gate_up_proj_bias[e])
    gate, up = torch.nn.functional.linear(x, module.gate_up_proj[e]).chunk(2, dim=-1)
    return module.act_fn(gate) * up


def _is_gpt_oss_experts(module: torch.nn.Module) -> bool:
    return hasattr(module, "_apply_gate") and hasattr(module, "gate_up_proj_bias")


def _is_fused_experts(module: torch.nn.Module) -> bool:
    w = getattr(module, "gate_up_proj", None)
    kind = hasattr(module, "act_fn") or _is_gpt_oss_experts(module)
    return isinstance(w, torch.nn.Parameter) and w.dim() == 3 and kind


def matrix_gguf_names(model: torch.nn.Module, family: Any) -> dict[str, str]:
    """Module name -> GGUF tensor name, for every module with a 2-D ``weight`` (nn.Linear, MoE routers)
    that is a matrix of a block (``blk.N.*``): what llama-imatrix collects by default (``output.weight``
    only with ``--process-output``; the token embedding is a lookup, not a product)."""
    out = {}
    for mod_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 2 or isinstance(module, torch.nn.Embedding):
            continue
        found = family.hf_to_gguf(f"{mod_name}.weight")
        if found is None or "xid" in found[1]:
            continue
        name = found[0].format(**found[1])
        if name.startswith("blk."):
            out[mod_name] = name
    return out


def _expert_names(family: Any, mod_name: str) -> tuple[str, str, str]:
    """GGUF names of a fused-experts module's gate, up and down tensors (from the family's expert table)."""
    bid = int(mod_name.split("layers.")[1].split(".")[0])
    by_role = {}
    # Per-expert tables, or the parts a family cuts from its fused tensors (gpt-oss).
    parts = [t for row in getattr(family, "derived", ()) for t in row.parts if t.endswith(".weight")]
    for template in (*family.expert_tensors, *parts):
        for role in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            if f".{role}." in template:
                by_role[role] = template.format(bid=bid)
    if len(by_role) != 3:
        raise UnsupportedError(f"{family.gguf_arch}: no gate/up/down expert tensors for {mod_name}")
    return by_role["ffn_gate_exps"], by_role["ffn_up_exps"], by_role["ffn_down_exps"]


def run_windows(
    model: torch.nn.Module, windows: torch.Tensor, hooks: list[Any], progress: Progress | None = None
) -> None:
    """Run ``model`` on int64 ``windows`` (n, seq_len), one window per forward, for its forward ``hooks`` (their
    handles), which are removed afterwards even when a forward fails."""
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for i, ids in enumerate(windows):
                model(ids[None].to(device), use_cache=False)
                if progress:
                    progress(i + 1, len(windows), f"chunk {i + 1}")
    finally:
        for hook in hooks:
            hook.remove()


def collect_imatrix(
    model: torch.nn.Module,
    family: Any,
    windows: torch.Tensor,
    *,
    dataset: str = "",
    progress: Progress | None = None,
) -> Imatrix:
    """Run ``model`` (a transformers causal LM) on int64 ``windows`` (n, seq_len), one window per forward,
    and return the imatrix of its block matrices; experts of MoE layers are accounted per expert."""
    names = matrix_gguf_names(model, family)
    if not names:
        raise UnsupportedError(f"no block matrices of {family.gguf_arch} found among the model's modules")
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    hooks, accs, experts = [], {}, {}
    for mod_name, gguf_name in names.items():
        accs[gguf_name] = _Accumulator()
        hooks.append(modules[mod_name].register_forward_pre_hook(accs[gguf_name]))
    for mod_name, module in modules.items():
        if _is_fused_experts(module):
            if len(inspect.signature(module.forward).parameters) < 2:
                # Llama 4's experts are called with router-scaled copies of every token, not with the routing.
                raise UnsupportedError(
                    f"{family.gguf_arch}: mtk imatrix does not account experts fed router-scaled inputs yet"
                )
            e, two_f, h = module.gate_up_proj.shape
            if _is_gpt_oss_experts(module):
                e, h, two_f = module.gate_up_proj.shape
            experts[_expert_names(family, mod_name)] = acc = _ExpertAccumulator(e, h, two_f // 2, device)
            hooks.append(module.register_forward_pre_hook(acc))
    if (family.expert_tensors or family.derived) and not experts:
        raise UnsupportedError(f"{family.gguf_arch}: the model's expert modules are not the fused kind mtk reads")
    run_windows(model, windows, hooks, progress)
    out = Imatrix(datasets=[dataset] if dataset else [], chunk_count=len(windows), chunk_size=windows.shape[1])
    for name, acc in accs.items():
        if acc.sums is not None:
            _store(out, name, acc.sums[None], torch.tensor([float(acc.count)]))
    for (gate, up, down), acc in experts.items():
        for name, sums in ((gate, acc.sums_in), (up, acc.sums_in), (down, acc.sums_down)):
            _store(out, name, sums, acc.counts)
    return out


def _store(out: Imatrix, name: str, sums: torch.Tensor, counts: torch.Tensor) -> None:
    sums = sums.float().cpu()
    if not bool(torch.isfinite(sums).all()):
        raise UnsupportedError(f"non-finite activations in {name}: the model overflows on this data")
    out.sums[name] = sums
    out.counts[name] = counts.float().cpu()


def imatrix_from_checkpoint(
    model_dir: Path | str,
    calibration: Path | str,
    *,
    samples: int = 128,
    seq_len: int = 512,
    device: str = "auto",
    progress: Progress | None = None,
) -> tuple[Imatrix, dict[str, Any]]:
    """Load an HF checkpoint folder (float32), tokenize ``calibration`` with its tokenizer and collect the
    imatrix; returns it and a summary for ``--json``."""
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
    imatrix = collect_imatrix(model, family, windows, dataset=Path(calibration).name, progress=progress)
    summary = {
        "input": str(model_dir),
        "calibration": str(calibration),
        "chunks": imatrix.chunk_count,
        "chunk_size": imatrix.chunk_size,
        "tokens": imatrix.chunk_count * imatrix.chunk_size,
        "tensors": len(imatrix.sums),
        "mean_sq_activation_range": _range(imatrix),
    }
    return imatrix, summary


def _range(imatrix: Imatrix) -> list[float]:
    means = [float((imatrix.sums[n] / imatrix.counts[n][:, None]).mean()) for n in imatrix.sums]
    return [min(means, default=math.nan), max(means, default=math.nan)]
