"""A recipe: one TOML file naming a source checkpoint, texts, the artifacts to make and the gates they must pass.

::

    [source]
    path = "SmolLM2-135M-Instruct.Q4_1.gguf"   # an HF folder or a GGUF file, relative to the recipe
    name = "smollm2"                            # artifact names' prefix (default: the file's stem)
    base_model = "HuggingFaceTB/SmolLM2-135M-Instruct"   # the model cards' base_model (default: name)

    [texts]
    calibration = "calibration.txt"
    evaluation = "eval.txt"

    [output]
    root = "out"                                # default: the recipe's folder

    [imatrix]                                   # options of `mtk imatrix`, when an artifact asks for one
    samples = 32

    [bench]                                     # options of `mtk bench` over every artifact; gates for all
    windows = 8
    plot = true                                 # bench.png beside bench.json
    fail_if = ["ppl > 1.5 * ref"]

    [[artifact]]
    name = "q4_k_m"                             # the artifact's folder under the output root
    command = "gguf-export"                     # gguf-export, quantize or export-onnx
    type = "q4_k_m"                             # the command's options, named as its Python API's arguments
    imatrix = true                              # gguf-export: use the recipe's importance matrix
    fail_if = ["kl > 0.05"]                     # gates for this artifact only
    threads = 2                                 # resources the step needs (also memory_gb, gpus, retries)

Options are checked against the API function of the command (``mtk.api``): an unknown one is a UsageError
naming the valid ones, and each becomes the CLI flag of the same name (``group_size`` -> ``--group-size``).
``docs/recipe.schema.json`` is the JSON Schema of the same format.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtk.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# recipe command -> (the mtk.api function whose keyword arguments are its options, options the recipe sets itself)
COMMANDS: dict[str, tuple[str, frozenset[str]]] = {
    "gguf-export": ("gguf_export", frozenset({"source", "output", "imatrix", "dry_run", "overwrite", "progress"})),
    "quantize": ("quantize", frozenset({"source", "output", "overwrite", "progress"})),
    "export-onnx": ("export_onnx", frozenset({"source", "output", "overwrite"})),
}
# Options of the steps the recipe adds itself: [imatrix] and [bench].
SECTION_COMMANDS: dict[str, tuple[str, frozenset[str]]] = {
    "imatrix": ("imatrix", frozenset({"source", "output", "overwrite", "progress"})),
    "bench": (
        "bench",
        frozenset({"artifacts", "text", "reference", "json_path", "overwrite", "raise_on_gates", "progress"}),
    ),
}
RESOURCE_KEYS = ("threads", "memory_gb", "gpus", "retries")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Resources:
    """What one step needs while it runs: CPU threads, memory (GB, 0 = not declared), GPUs; retries on failure."""

    threads: int | None = None  # None: every CPU of the machine
    memory_gb: float = 0.0
    gpus: int = 0
    retries: int = 0

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be at least 1, got {self.threads}")
        if self.memory_gb < 0 or self.gpus < 0 or self.retries < 0:
            raise UsageError("memory_gb, gpus and retries cannot be negative")


@dataclass(frozen=True)
class Artifact:
    """One artifact of the recipe: a command, its options, its gates and resources."""

    name: str
    command: str
    options: Mapping[str, Any] = field(default_factory=dict)
    imatrix: bool = False
    fail_if: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe; paths are absolute (resolved against the recipe's folder)."""

    path: Path
    source: Path
    name: str
    base_model: str  # the model cards' base_model (a Hub id, when the recipe gives one)
    root: Path
    artifacts: tuple[Artifact, ...]
    calibration: Path | None = None
    evaluation: Path | None = None
    imatrix: Mapping[str, Any] = field(default_factory=dict)
    bench: Mapping[str, Any] = field(default_factory=dict)
    bench_resources: Resources = field(default_factory=Resources)
    imatrix_resources: Resources = field(default_factory=Resources)

    @property
    def source_is_gguf(self) -> bool:
        return self.source.is_file() and self.source.suffix.lower() == ".gguf"


def load_recipe(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> Recipe:
    """Read and check a recipe file; ``root`` replaces its output root."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"recipe {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"recipe {path} is not valid TOML: {exc}") from None
    return parse_recipe(data, path, root=Path(root) if root is not None else None)


def parse_recipe(data: Mapping[str, Any], path: Path, *, root: Path | None = None) -> Recipe:
    """A recipe from its TOML tables (``path``: the recipe file, which relative paths are relative to)."""
    base = path.resolve().parent
    _only(data, {"source", "texts", "output", "imatrix", "bench", "artifact"}, "the recipe")
    source = _table(data, "source")
    _only(source, {"path", "name", "distribution", "base_model"}, "[source]")
    if "path" not in source:
        raise UsageError("[source] needs a path (an HF folder or a GGUF file)")
    src = _source_path(base, source)
    name = str(source.get("name", src.stem if src.is_file() else src.name))
    base_model = str(source.get("base_model", name))
    texts = _table(data, "texts")
    _only(texts, {"calibration", "evaluation"}, "[texts]")
    output = _table(data, "output")
    _only(output, {"root"}, "[output]")
    out_root = root.resolve() if root is not None else (base / str(output.get("root", "."))).resolve()
    imatrix, imatrix_res = _section(data, "imatrix")
    bench, bench_res = _section(data, "bench")
    raw = data.get("artifact", [])
    if not isinstance(raw, list) or not raw:
        raise UsageError("the recipe lists no [[artifact]]")
    artifacts = tuple(_artifact(a, i) for i, a in enumerate(raw))
    names = [a.name for a in artifacts]
    for reserved in ("hf", "imatrix", "bench"):
        if reserved in names:
            raise UsageError(f"artifact name {reserved!r} is the recipe's own step; choose another")
    if len(set(names)) != len(names):
        raise UsageError(f"artifact names must be distinct: {', '.join(names)}")
    recipe = Recipe(
        path=path.resolve(),
        source=src,
        name=name,
        base_model=base_model,
        root=out_root,
        artifacts=artifacts,
        calibration=_file(base, texts.get("calibration"), "calibration text"),
        evaluation=_file(base, texts.get("evaluation"), "evaluation text"),
        imatrix=imatrix,
        bench=bench,
        bench_resources=bench_res,
        imatrix_resources=imatrix_res,
    )
    _check_texts(recipe)
    return recipe


def _source_path(base: Path, source: Mapping[str, Any]) -> Path:
    """``path`` relative to the recipe, or inside an installed distribution's files (``distribution``)."""
    rel = str(source["path"])
    if "distribution" in source:
        try:
            dist = importlib.metadata.distribution(str(source["distribution"]))
        except importlib.metadata.PackageNotFoundError:
            raise UsageError(f"[source] distribution {source['distribution']!r} is not installed") from None
        src = Path(str(dist.locate_file(rel)))
    else:
        src = base / rel
    if not src.exists():
        raise UsageError(f"[source] path {src} does not exist")
    return src.resolve()


def _file(base: Path, value: Any, what: str) -> Path | None:
    if value is None:
        return None
    p = (base / str(value)).resolve()
    if not p.is_file():
        raise UsageError(f"the {what} {p} does not exist")
    return p


def _check_texts(recipe: Recipe) -> None:
    needs_calibration = any(a.command == "quantize" and "calibration" not in a.options for a in recipe.artifacts)
    if (needs_calibration or any(a.imatrix for a in recipe.artifacts)) and recipe.calibration is None:
        raise UsageError("quantize and imatrix steps need [texts] calibration")
    if recipe.evaluation is None and (recipe.bench or any(a.fail_if for a in recipe.artifacts)):
        raise UsageError("[bench] and fail_if gates need [texts] evaluation")


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise UsageError(f"[{key}] must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(allowed))}")


def _section(data: Mapping[str, Any], key: str) -> tuple[dict[str, Any], Resources]:
    table = dict(_table(data, key))
    resources = _resources(table, f"[{key}]")
    func, own = SECTION_COMMANDS[key]
    _check_options(table, func, own, f"[{key}]")
    if key == "bench":
        table["fail_if"] = _gates(table.get("fail_if", ()), f"[{key}]")
        if not isinstance(table.get("plot", False), bool):
            raise UsageError("[bench] plot is true or false (true: bench.png beside bench.json)")
    return table, resources


def _resources(table: dict[str, Any], where: str) -> Resources:
    values = {k: table.pop(k) for k in RESOURCE_KEYS if k in table}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UsageError(f"{where}: {k} must be a number")
    try:
        return Resources(**values)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def _artifact(raw: Any, index: int) -> Artifact:
    where = f"[[artifact]] #{index + 1}"
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where} must be a table")
    table = dict(raw)
    name = table.pop("name", None)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UsageError(f"{where}: name must be letters, digits, '.', '_' or '-', got {name!r}")
    where = f"[[artifact]] {name!r}"
    command = table.pop("command", None)
    if command not in COMMANDS:
        raise UsageError(f"{where}: command must be one of {', '.join(COMMANDS)}, got {command!r}")
    imatrix = table.pop("imatrix", False)
    if not isinstance(imatrix, bool) or (imatrix and command != "gguf-export"):
        raise UsageError(f"{where}: imatrix = true is for gguf-export artifacts")
    fail_if = _gates(table.pop("fail_if", ()), where)
    resources = _resources(table, where)
    func, own = COMMANDS[command]
    _check_options(table, func, own, where)
    return Artifact(name, command, table, imatrix, fail_if, resources)


def _gates(value: Any, where: str) -> tuple[str, ...]:
    from mtk.bench.gates import parse_gate

    gates = (value,) if isinstance(value, str) else value
    if not isinstance(gates, (list, tuple)) or not all(isinstance(g, str) for g in gates):
        raise UsageError(f"{where}: fail_if must be a list of expressions")
    for g in gates:
        parse_gate(g)  # a UsageError naming the bad expression
    return tuple(gates)


def _check_options(options: Mapping[str, Any], func: str, own: frozenset[str], where: str) -> None:
    """Every option a keyword argument of ``mtk.api.<func>`` that the recipe does not set itself."""
    valid = sorted(set(API_OPTIONS.get()[func]) - own)
    for key, value in options.items():
        if key not in valid:
            raise UsageError(f"{where}: unknown option {key!r}; valid: {', '.join(valid)}")
        if isinstance(value, Mapping):
            raise UsageError(f"{where}: option {key!r} cannot be a table")


class _ApiOptions:
    """The keyword-only arguments of each API function a step calls, given by ``mtk.api`` (a floor above)."""

    def __init__(self) -> None:
        self.options: Mapping[str, frozenset[str]] | None = None

    def get(self) -> Mapping[str, frozenset[str]]:
        if self.options is None:
            raise RuntimeError("mtk.api.run sets the API's options before reading a recipe")
        return self.options


API_OPTIONS = _ApiOptions()
