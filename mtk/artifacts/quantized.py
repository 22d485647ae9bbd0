"""Quantized Hugging Face folders (GPTQ, AWQ, compressed-tensors, bitsandbytes: ``quantization_config`` in
config.json), run in transformers through their checkpoint format's integration.

Loading is the checkpoint format's (``CheckpointFormat.load``: transformers with GPTQModel's kernels for GPTQ and
AWQ, with compressed-tensors or bitsandbytes for theirs); this module recognises and labels the folders and
verifies them. Packed weights hold several parameters per stored element, so no parameter count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtk.artifacts import hf
from mtk.artifacts.base import ArtifactKind, Description, no_count
from mtk.compare import PROMPTS, logit_metrics
from mtk.errors import VerificationError


def matches(path: Path) -> bool:
    return hf.is_folder(path) and bool(hf.read_config(path).get("quantization_config"))


def label(q: dict[str, Any]) -> str:
    """``gptq 4-bit g128``: the method, bits and group size of a ``quantization_config`` (its format's label)."""
    from mtk.quantizers.formats import label_of

    return label_of(q)


def describe(path: Path) -> Description:
    config = hf.read_config(path)
    weights = hf.weight_files(path)
    return Description((path,), weights, label(config["quantization_config"]), True)


def runtime_available(fmt: str) -> bool:
    """Whether the loader of checkpoint format ``fmt`` (a ``FORMATS`` name) is installed."""
    from mtk.quantizers.formats import FORMATS

    return FORMATS.get(fmt).runtime_available()


def _format(path: Path | str) -> tuple[dict[str, Any], Any]:
    """The folder's ``quantization_config`` and its registered format."""
    from mtk.quantizers.formats import format_of

    qc = hf.read_config(Path(path))["quantization_config"]
    return qc, format_of(qc)


def load(path: Path | str) -> Any:
    """The checkpoint through its format's runtime, on the CPU (``AutoModelForCausalLM.from_pretrained``)."""
    return _format(path)[1].load(Path(path))


def hold_file_weights(model: Any, path: Path | str) -> Any:
    """Overwrite the float ``model`` (the source architecture) with exactly the weights stored in ``path``."""
    import torch

    from mtk.converters.family import all_families
    from mtk.formats.checkpoint import HFCheckpoint
    from mtk.quantizers.plan import stored_name

    qc, fmt = _format(path)
    ckpt = HFCheckpoint(path)
    names = set(ckpt.names())
    model_type = model.config.model_type
    plan = next((f.layer_plan for f in all_families() if model_type in f.model_types), None)

    def weight(name: str) -> torch.Tensor:
        """The files' weight of a module-tree name (MoE blocks may be stored under another name)."""
        name = stored_name(plan, name) if plan is not None else name
        base = name.removesuffix(".weight")
        if fmt.is_packed(base, names):
            return fmt.unpack({k: ckpt.get(f"{base}.{k}") for k in fmt.packed_keys if f"{base}.{k}" in names}, qc)
        return ckpt.get(name)

    fused = _fused_experts(model, plan, weight)
    state = model.state_dict()
    packed = []  # module names of the quantized Linears
    with torch.no_grad():
        for name, tensor in state.items():
            stored = stored_name(plan, name) if plan is not None else name
            if name in fused:
                tensor.copy_(fused.pop(name)())
            elif stored in names or fmt.is_packed(stored.removesuffix(".weight"), names):
                tensor.copy_(weight(name).to(tensor.dtype))
                if fmt.is_packed(stored.removesuffix(".weight"), names):
                    packed.append(name.removesuffix(".weight"))
    if fmt.activations is not None:  # W8A8: their inputs rounded as the runtime rounds them
        qdq = fmt.activations(qc)
        for name in packed:
            model.get_submodule(name).register_forward_pre_hook(lambda _m, args: (qdq(args[0]), *args[1:]))
    return model


def _fused_experts(model: Any, plan: Any, weight: Any) -> dict[str, Any]:
    """MoE models: each fused 3-D experts parameter of transformers 5 (full name) -> a function stacking it from
    the files' per-expert weights (``weight(name)``); empty for dense models."""
    from mtk.quantizers.moe import expert_count, fused_weights

    if plan is None or plan.experts is None:
        return {}
    ep, n = plan.experts, expert_count(plan, model.config)
    out = {}
    for name, _ in model.named_parameters():
        if name.endswith(f".{ep.module}.{ep.gate_up}"):
            prefix = name.removesuffix(f"{ep.module}.{ep.gate_up}")
            for key in (f"{prefix}{ep.module}.{ep.gate_up}", f"{prefix}{ep.module}.{ep.down}"):
                out[key] = lambda p=prefix, k=key: fused_weights(plan, p, n, weight)[k]
    return out


def _file_model(source_model: Any, path: Path | str) -> Any:
    """The float model to hold the files' weights: the source model, or a causal LM of the checkpoint's own config
    when that is another architecture (a multimodal source quantized as its text tower)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(hf.read_config(Path(path)))
    if type(source_model).__name__ in config.get("architectures", []):
        return source_model
    config.pop("quantization_config")
    text = AutoConfig.for_model(config.pop("model_type"), **config)
    return AutoModelForCausalLM.from_config(text, dtype=torch.float32).eval()


def _logits(model: Any, prompts: list[list[int]]) -> Any:
    import torch

    return torch.cat([hf.logits(model, ids) for ids in prompts])


def verify(path: Path | str, source: Path | str) -> dict[str, Any]:
    """The checkpoint in its runtime against its own weights (checked) and the source (reported as ``quality``).

    - Conversion: the checkpoint as its runtime loads it (packed weights, GPTQModel kernels or compressed-tensors'
      decompression) against a float model holding exactly the weights the files define (unpacked in torch by
      mtk). This isolates packing, layout and config errors from quantization error, and fails
      (VerificationError) beyond the format's tolerance (``CheckpointFormat.tolerance``).
    - Quality: against the unquantized source model, for the caller (or a test) to bound.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    runtime = _logits(load(path), prompts)
    model = hf.load(source)
    src = _logits(model, prompts)
    held = _logits(hold_file_weights(_file_model(model, path), path), prompts)  # now with the files' weights
    metrics = logit_metrics(held, runtime)
    qc, fmt = _format(path)
    tolerance = fmt.tolerance(qc)
    failures = tolerance.failures(metrics)
    if failures:
        raise VerificationError(
            "quantized checkpoint in transformers disagrees with its own weights: " + "; ".join(failures)
        )
    return {"logits": metrics, "tolerance": tolerance.__dict__, "quality": logit_metrics(src, runtime)}


KIND = ArtifactKind(
    name="quantized-hf",
    container="hf",
    runtime="transformers",
    matches=matches,
    describe=describe,
    tokenize=hf.tokenize,
    count_params=no_count,
)
