"""A recipe as a graph of steps: import -> imatrix -> exports and quantizations -> bench, each an mtk command.

Each :class:`Step` names the command, its options (as the API names them), where its inputs come from (another
step, the source, a text) and what it writes. :func:`argv` turns a step into the exact ``mtk`` command line
that runs it, once its inputs' paths are known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtk.pipeline.recipe import Artifact, Recipe, Resources

# API argument -> CLI flag where the flag is not the argument's name in kebab case.
FLAGS = {"tensor_types": "--tensor-type", "fail_if": "--fail-if"}
# Boolean options whose CLI has a --no- form; other booleans are flags that are off unless given.
NEGATABLE = {"sym", "verify", "validate"}
SOURCE, CALIBRATION, EVALUATION = "@source", "@calibration", "@evaluation"


@dataclass(frozen=True)
class Step:
    """One node of the graph. ``inputs`` maps a role to a step name (or SOURCE / CALIBRATION / EVALUATION);
    ``artifacts`` lists the steps a bench measures; ``payload`` is the file or folder name the step writes."""

    name: str
    command: str
    options: Mapping[str, Any]
    inputs: Mapping[str, str]
    payload: str
    resources: Resources = field(default_factory=Resources)
    artifact: Artifact | None = None
    artifacts: tuple[str, ...] = ()

    @property
    def deps(self) -> tuple[str, ...]:
        named = [v for v in self.inputs.values() if not v.startswith("@")]
        return tuple(dict.fromkeys([*named, *self.artifacts]))


def build_steps(recipe: Recipe) -> list[Step]:
    """The recipe's steps in an order where every step follows its inputs."""
    steps: list[Step] = []
    hf = SOURCE
    if recipe.source_is_gguf:
        steps.append(Step("hf", "gguf-import", {}, {"source": SOURCE}, f"{recipe.name}-hf"))
        hf = "hf"
    if any(a.imatrix for a in recipe.artifacts):
        steps.append(
            Step(
                "imatrix",
                "imatrix",
                dict(recipe.imatrix),
                {"source": hf, "calibration": CALIBRATION},
                f"{recipe.name}.imatrix.gguf",
                recipe.imatrix_resources,
            )
        )
    for a in recipe.artifacts:
        inputs = {"source": hf}
        if a.imatrix:
            inputs["imatrix"] = "imatrix"
        if a.command == "quantize" and "calibration" not in a.options:
            inputs["calibration"] = CALIBRATION
        payload = f"{recipe.name}-{a.name}" + (".gguf" if a.command == "gguf-export" else "")
        steps.append(Step(a.name, a.command, dict(a.options), inputs, payload, a.resources, artifact=a))
    if recipe.evaluation is not None:
        options = {k: v for k, v in recipe.bench.items() if k != "fail_if"}  # gates are judged after, not by bench
        measured = tuple(s.name for s in steps if s.artifact is not None)
        inputs = {"text": EVALUATION, "reference": hf}
        steps.append(Step("bench", "bench", options, inputs, "bench.json", recipe.bench_resources, artifacts=measured))
    return steps


def argv(step: Step, paths: Mapping[str, Path], output: Path) -> list[str]:
    """The ``mtk`` command line (after ``mtk``) of ``step``, with its inputs at ``paths`` (role or step name ->
    path) and its output at ``output``."""
    head = ["--json", step.command]
    if step.command == "bench":
        measured = [str(paths[name]) for name in step.artifacts]
        head += [*measured, "--text", str(paths["text"]), "--reference", str(paths["reference"])]
        head += ["--json", str(output)]
        if step.options.get("plot"):
            head += ["--plot", str(output.parent / "bench.png")]
        return head + flags({k: v for k, v in step.options.items() if k != "plot"})
    else:
        head += [str(paths["source"]), "-o", str(output)]
        for role in ("imatrix", "calibration"):
            if role in paths:
                head += [f"--{role}", str(paths[role])]
    return head + flags(step.options)


def flags(options: Mapping[str, Any]) -> list[str]:
    """CLI flags for API-named options: lists repeat their flag, booleans are switches."""
    out: list[str] = []
    for key, value in options.items():
        flag = FLAGS.get(key, "--" + key.replace("_", "-"))
        if isinstance(value, bool):
            if value:
                out.append(flag)
            elif key in NEGATABLE:
                out.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, Sequence) and not isinstance(value, str):
            for v in value:
                out += [flag, str(v)]
        elif value is not None:
            out += [flag, str(value)]
    return out
