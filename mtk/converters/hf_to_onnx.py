"""HF checkpoint -> ONNX folder, exported with ``torch.onnx.export(dynamo=True)`` and checked in onnxruntime.

Tasks and their graphs (every dimension named here is dynamic):

- ``text-generation-with-past`` (default for causal LMs): inputs ``input_ids``, ``attention_mask``
  (batch, past + sequence), ``position_ids`` (int64) and ``past_key_values.{i}.key/value`` (batch, kv_heads,
  past, head_dim); outputs ``logits`` (batch, sequence, vocab) and ``present.{i}.key/value`` (batch,
  kv_heads, past + sequence, head_dim). An empty past (length 0) starts a sequence.
- ``text-generation``: the same without the cache.
- ``feature-extraction`` (encoders): ``input_ids``, ``attention_mask``[, ``token_type_ids``] ->
  ``last_hidden_state``[, ``pooler_output``].

The folder holds ``model.onnx`` (``model.onnx.data`` past 2 GB), ``mtk_onnx.json`` (see ``_manifest``),
``config.json`` and the tokenizer files. The export is written atomically: when its check fails
(``VerificationError``) nothing is published.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from mtk.converters.family import text_tower
from mtk.errors import InvalidFileError, UnsupportedError
from mtk.formats import onnx_passes
from mtk.formats.atomic import atomic_dir
from mtk.formats.checkpoint import TOKENIZER_FILES, refuse_pickles

Task = Literal["auto", "text-generation", "text-generation-with-past", "feature-extraction"]
OnnxDType = Literal["fp32", "fp16"]
Quantize = Literal["int8", "int4"]
# What an artifact's numbers are judged as (its tolerance): the quantization if any, else the dtype.
Kind = Literal["fp32", "fp16", "int8", "int4"]
BLOCK_SIZES = (32, 128)
MIN_OPSET = 18  # torch.onnx's dynamo exporter emits opset 18 and newer
# Copied verbatim beside model.onnx, when present in the source folder.
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


@dataclass(frozen=True)
class OnnxExportConfig:
    task: Task = "auto"
    dtype: OnnxDType = "fp32"
    opset: int = MIN_OPSET
    quantize: Quantize | None = None
    block_size: int = 32
    optimize: bool = False

    def __post_init__(self) -> None:
        if self.task not in get_args(Task):
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(get_args(Task))}")
        if self.dtype not in get_args(OnnxDType):
            raise ValueError(f"unknown dtype {self.dtype!r}; choose fp32 or fp16")
        if self.quantize is not None and self.quantize not in get_args(Quantize):
            raise ValueError(f"unknown quantization {self.quantize!r}; choose int8 or int4")
        if self.quantize is not None and self.dtype != "fp32":
            raise ValueError("--quantize applies to an fp32 export; leave --dtype at fp32")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block size {self.block_size} is not one of {BLOCK_SIZES}")
        if not MIN_OPSET <= self.opset <= 23:
            raise ValueError(f"opset {self.opset} is outside {MIN_OPSET}..23 (the dynamo exporter's range)")


class CausalLMWithPast(torch.nn.Module):
    """A causal LM over flat cache tensors: ``(ids, mask, positions, [k0, v0, k1, ...]) -> (logits, k0', v0', ...)``.

    Every layer gets a plain full-length ``DynamicLayer``: sliding-window layers (Gemma) keep the whole past
    too, and their window is applied by the attention mask, which transformers builds from positions. Only the
    first ``layers`` layers keep a cache: the others (Gemma 4's KV-sharing layers) reuse earlier layers' K/V.
    """

    def __init__(self, model: torch.nn.Module, layers: int, total: int):
        super().__init__()
        self.model, self.layers, self.total = model, layers, total

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        kv = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)] + [(None, None)] * (self.total - self.layers)
        cache = DynamicCache(kv)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, use_cache=True
        )
        present = [t for layer in out.cache.layers[: self.layers] for t in (layer.keys, layer.values)]
        return (out.logits, *present)


class CausalLM(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.logits


class Encoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        names = ("input_ids", "attention_mask", "token_type_ids")
        out = self.model(**dict(zip(names, inputs, strict=False)))
        return tuple(getattr(out, name) for name in self.outputs)


def resolve_task(config: Any, task: Task) -> Task:
    """``auto``: text-generation-with-past for a causal LM, else feature-extraction.

    A causal LM is a config transformers has a causal-LM class for that is not a bidirectional encoder
    (BERT-style configs say ``is_decoder=False``; decoder-only configs have no such field).
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    causal = type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and getattr(config, "is_decoder", True)
    # A multimodal model whose text tower mtk exports (Mistral3ForConditionalGeneration) is one too.
    causal = causal or text_tower((getattr(config, "architectures", None) or [""])[0]) is not None
    if task == "auto":
        if causal:
            return "text-generation-with-past"
        if type(config) in MODEL_MAPPING:
            return "feature-extraction"
        raise UnsupportedError(f"transformers has no model class for {config.model_type!r}")
    if task != "feature-extraction" and not causal:
        raise UnsupportedError(f"{config.model_type!r} is not a causal LM; use --task feature-extraction")
    return task


def _load(model_dir: Path, task: Task) -> Any:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from mtk.runtime import auto_model_class

    hf_logging.disable_progress_bar()
    model_type = str(json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("model_type"))
    auto = AutoModel if task == "feature-extraction" else auto_model_class(model_type)
    # Eager attention: it lowers to plain MatMul/Softmax, and Gemma 2 softcaps attention scores only there.
    model = auto.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    found = text_tower(type(model).__name__)
    return model if found is None else _text_model(model, found[0].hf_architecture)


def _text_model(model: Any, architecture: str) -> Any:
    """A multimodal model's text tower as its own causal LM (Gemma3ForConditionalGeneration -> Gemma3ForCausalLM),
    made of the same modules: the graph takes token ids, as the decoder LMs' graphs do."""
    from transformers import AutoModelForCausalLM

    config = model.config.get_text_config()
    config.architectures = [architecture]
    with torch.device("meta"):  # an empty shell: its decoder and head are the multimodal model's own
        text = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    setattr(text, text.base_model_prefix, model.get_decoder())  # e.g. Gemma3ForCausalLM.model
    text.set_output_embeddings(model.get_output_embeddings())
    if any(t.is_meta for t in (*text.parameters(), *text.buffers())):
        raise UnsupportedError(f"{type(model).__name__}: its text tower is not a decoder and a head")
    return text.eval()


def cached_layers(cache: Any) -> int:
    """How many layers keep a KV cache: all, or the first ones (Gemma 4's last layers reuse earlier K/V)."""
    held = [layer.keys is not None for layer in cache.layers]
    n = held.index(False) if False in held else len(held)
    if any(held[n:]):
        raise UnsupportedError("layers without a KV cache of their own before layers with one are not supported")
    return n


def _sample(model: Any, task: Task, layers: int) -> tuple[tuple[Any, ...], dict[str, Any], list[str], list[str]]:
    """Example inputs (batch 2, sequence 3, past 4: distinct sizes, so no dimension is specialised)."""
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past_sequence")
    ids = torch.randint(0, model.config.vocab_size, (2, 3))
    if task == "feature-extraction":
        names = ["input_ids", "attention_mask"]
        if getattr(model.config, "type_vocab_size", 0):
            names.append("token_type_ids")
        args = (ids, torch.ones_like(ids), torch.zeros_like(ids))[: len(names)]
        return args, {"inputs": tuple({0: batch, 1: seq} for _ in names)}, names, []
    mask = torch.ones(2, 3 + (4 if task == "text-generation-with-past" else 0), dtype=torch.int64)
    names = ["input_ids", "attention_mask", "position_ids"]
    if task == "text-generation":
        pos = torch.arange(3).expand(2, 3)
        shapes = {
            "input_ids": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: seq},
            "position_ids": {0: batch, 1: seq},
        }
        return (ids, mask, pos), shapes, names, ["logits"]
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, model.config.vocab_size, (2, 4)), use_cache=True).cache
    layers = cached_layers(cache)
    flat = [t.clone() for layer in cache.layers[:layers] for t in (layer.keys, layer.values)]
    pos = torch.arange(4, 7).expand(2, 3)
    shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
        "position_ids": {0: batch, 1: seq},
        "past": [{0: batch, 2: past}] * len(flat),
    }
    kv = [f"{i}.{k}" for i in range(layers) for k in ("key", "value")]
    return (
        (ids, mask, pos, flat),
        shapes,
        names + [f"past_key_values.{n}" for n in kv],
        ["logits"] + [f"present.{n}" for n in kv],
    )


@contextmanager
def _traceable_experts(model: Any) -> Iterator[None]:
    """MoE experts as batched matmuls while tracing, then the model's own implementation again.

    transformers' default ``grouped_mm`` runs through a custom op that torch.onnx cannot translate; the
    reference the export is validated against keeps the default.
    """
    if not getattr(model, "_can_set_experts_implementation", lambda: False)():
        yield
        return
    original = model.get_experts_implementation()
    model.set_experts_implementation("batched_mm")
    try:
        yield
    finally:
        model.set_experts_implementation(original)


@contextmanager
def _family_tracing(model: Any) -> Iterator[None]:
    """The family's own tracing patch (``Family.onnx_tracing``), if the model's family has one."""
    from mtk.converters.family import all_families

    text = model.config.get_text_config(decoder=True)
    tracing = next((f.onnx_tracing for f in all_families() if text.model_type in f.model_types), None)
    if tracing is None:
        yield
        return
    with tracing(model):
        yield


def _export_graph(model: Any, task: Task, opset: int, dst: Path) -> dict[str, Any]:
    """Trace ``model`` for ``task`` into ``dst``; returns the manifest's graph fields."""
    text = model.config.get_text_config(decoder=True)
    layers = text.num_hidden_layers
    args, shapes, inputs, outputs = _sample(model, task, layers)
    if task == "feature-extraction":
        with torch.no_grad():
            out = model(*args)
        outputs = [n for n in ("last_hidden_state", "pooler_output") if getattr(out, n, None) is not None]
        module: torch.nn.Module = Encoder(model, outputs)
        shapes = {"inputs": shapes["inputs"]}
    elif task == "text-generation":
        module = CausalLM(model)
    else:
        module = CausalLMWithPast(model, len(args[3]) // 2, layers)
    with warnings.catch_warnings(), torch.no_grad(), _traceable_experts(model), _family_tracing(model):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamic_shapes=shapes,
            input_names=inputs,
            output_names=outputs,
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    _drop_stack_traces(program)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(dst), external_data=onnx_passes.needs_external_data(weight_bytes))
    graph: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
    if task == "text-generation-with-past":
        keys, values = args[3][::2], args[3][1::2]
        graph["cache"] = {"layers": len(keys), "kv_heads": keys[0].shape[1], "head_dim": keys[0].shape[3]}
        if len({tuple(k.shape) for k in keys}) > 1:  # Gemma 4: wider heads on the global layers
            graph["cache"]["shapes"] = [[k.shape[1], k.shape[3]] for k in keys]
        if values[0].shape[3] != keys[0].shape[3]:
            # DeepSeek caches its latent as keys (kv_lora_rank wide) and the shared RoPE key as values.
            graph["cache"]["value_head_dim"] = values[0].shape[3]
        graph["cache"]["dtype"] = "float32"
    return graph


def _drop_stack_traces(program: Any) -> None:
    """torch.onnx stores each node's Python stack trace, with this machine's absolute paths, in the node's
    metadata: the same export then gives other bytes from another checkout or virtual environment. Drop it (the
    other metadata, the FX node and module names, does not depend on where things are installed)."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(program.model.graph):
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)


def _post_process(src: Path, dst: Path, config: OnnxExportConfig, external: bool) -> list[str]:
    """Apply the dtype, quantization and optimization passes from ``src`` to ``dst``; the steps done.

    The last pass writes ``dst`` itself, so an external-data sidecar is named after ``dst``.
    """
    passes: list[tuple[str, Callable[[Path, Path], None]]] = []
    if config.dtype == "fp16":
        passes.append(("fp16", partial(onnx_passes.to_float16, external_data=external)))
    if config.quantize == "int8":
        passes.append(
            ("int8 dynamic (per-channel MatMul weights)", partial(onnx_passes.quantize_int8, external_data=external))
        )
    if config.quantize == "int4":
        int4 = partial(onnx_passes.quantize_int4, block_size=config.block_size, external_data=external)
        passes.append((f"int4 MatMulNBits (block {config.block_size}, symmetric)", int4))
    if config.optimize:
        passes.append(
            ("onnxruntime graph optimization (extended)", partial(onnx_passes.optimize, external_data=external))
        )
    if not passes:  # same file name, so an external-data sidecar keeps its recorded location
        os.replace(src, dst)
        if (data := src.with_name(f"{src.name}.data")).exists():
            os.replace(data, dst.with_name(f"{dst.name}.data"))
    current = src
    for i, (_, apply) in enumerate(passes):
        target = dst if i == len(passes) - 1 else src.with_name(f"step{i}.onnx")
        apply(current, target)
        current = target
    return [name for name, _ in passes]


# The check (``mtk.artifacts.onnx.validate``): the folder, the PyTorch fp32 model it was traced from (already
# loaded: the reference), the kind, and the graph file to run in it (None: the manifest's). Defined down here:
# the exported graph records the source lines of the wrappers above, so they keep their line numbers.
OnnxCheck = Callable[[Path, Any, Kind, str | None], dict[str, Any]]


def export_onnx(
    model_dir: Path | str,
    output: Path | str,
    config: OnnxExportConfig | None = None,
    *,
    check: OnnxCheck | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the HF checkpoint in ``model_dir`` to the ONNX folder ``output``; the result dict (``--json``).

    ``check`` runs on the complete temporary folder (its return is the result's ``validation``); for a lossy
    or optimized export it first runs on the traced fp32 graph, to the fp32 bound (``validation.conversion``),
    so that a conversion bug cannot hide in quantization error. Raises UnsupportedError for a model the task
    does not fit or the exporter cannot trace; what ``check`` raises (VerificationError) publishes nothing.
    """
    from transformers import AutoConfig

    config = config or OnnxExportConfig()
    model_dir, output = Path(model_dir), Path(output)
    if not (model_dir / "config.json").is_file():
        raise InvalidFileError(f"{model_dir} is not a Hugging Face checkpoint folder (no config.json)")
    refuse_pickles(model_dir)  # transformers would unpickle them unasked
    start = time.perf_counter()
    task = resolve_task(AutoConfig.from_pretrained(str(model_dir)), config.task)
    model = _load(model_dir, task)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        scratch = tmp / ".fp32"
        scratch.mkdir()
        try:
            graph = _export_graph(model, task, config.opset, scratch / "model.onnx")
        except OSError:
            raise  # a full disk or no access while saving: the output's fault (exit 7), not the model's
        except Exception as exc:  # the exporter raises many kinds; name the model in one line
            raise UnsupportedError(f"torch.onnx could not export {model.config.model_type}: {exc}") from exc
        external = (scratch / "model.onnx.data").exists()
        for name in SIDE_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        if text_tower(AutoConfig.from_pretrained(str(model_dir)).architectures[0]) is not None:
            model.config.to_json_file(tmp / "config.json")  # a multimodal source's text tower: its own config
        validated = check is not None
        _write_manifest(tmp, _manifest(model, task, config, graph, [], external, validated))
        kind = kind_of(config)
        validation: dict[str, Any] | None = None
        if check is not None and (kind != "fp32" or config.optimize):
            # The traced fp32 graph first, to the fp32 bound: a conversion bug cannot hide in quantization error.
            conversion = check(tmp, model, "fp32", ".fp32/model.onnx")
        steps = _post_process(scratch / "model.onnx", tmp / "model.onnx", config, external)
        shutil.rmtree(scratch)
        if "cache" in graph and config.dtype == "fp16":
            graph["cache"]["dtype"] = "float16"
        _write_manifest(tmp, _manifest(model, task, config, graph, steps, external, validated))
        if check is not None:
            validation = check(tmp, model, kind, None)
            if kind != "fp32" or config.optimize:
                validation["conversion"] = conversion
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith("model.onnx"))
    return {
        "output": str(output),
        "architecture": model.config.model_type,
        "task": task,
        "dtype": config.dtype,
        "quantize": config.quantize,
        "optimized": config.optimize,
        "opset": config.opset,
        "external_data": external,
        "bytes": size,
        "steps": steps,
        "validation": validation,
        "seconds": time.perf_counter() - start,
    }


def kind_of(config: OnnxExportConfig) -> Kind:
    """What the artifact's numbers are judged as: the quantization if any, else the dtype."""
    return config.quantize or config.dtype


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "mtk_onnx.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _manifest(
    model: Any,
    task: Task,
    config: OnnxExportConfig,
    graph: dict[str, Any],
    steps: list[str],
    external: bool,
    validated: bool,
) -> dict[str, Any]:
    """``mtk_onnx.json``: what a runtime needs to drive the graph without reading config.json; ``export``
    records the options (``validate``: whether the export was checked in onnxruntime)."""
    return {
        "format": "mtk-onnx/1",
        "model": "model.onnx",
        "external_data": "model.onnx.data" if external else None,
        "task": task,
        "architecture": model.config.model_type,
        "vocab_size": model.config.get_text_config(decoder=True).vocab_size,
        **graph,
        "export": {**asdict(config), "validate": validated, "steps": steps, "torch": torch.__version__},
    }
