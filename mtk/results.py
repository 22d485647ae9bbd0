"""What the Python API returns: one frozen result per command, holding exactly the object ``--json`` prints.

A result reads like a read-only mapping (``result["output"]``, ``result.get("verification")``), its main values
are typed properties, and :meth:`Result.to_dict` gives the plain JSON object back (a fresh copy each call).
Nested objects are frozen too: mappings become read-only views and lists tuples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Result(Mapping[str, Any]):
    """A command's result object (the ``--json`` schema of that command), read-only."""

    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _freeze(self.data))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def to_dict(self) -> dict[str, Any]:
        """The plain JSON object (dicts and lists), as ``--json`` prints it."""
        return _thaw(self.data)

    @property
    def verification(self) -> Mapping[str, Any] | None:
        """The runtime check's metrics, when the command verified its output."""
        return self.data.get("verification")


@dataclass(frozen=True)
class WrittenResult(Result):
    """A command that wrote one output (a folder or a file)."""

    @property
    def output(self) -> Path:
        return Path(self.data["output"])


@dataclass(frozen=True)
class InspectResult(Result):
    @property
    def format(self) -> str:
        return self.data["format"]

    @property
    def architecture(self) -> str:
        return self.data["architecture"]

    @property
    def parameters(self) -> int:
        return self.data["parameters"]

    @property
    def bits_per_weight(self) -> float:
        return self.data["bits_per_weight"]


@dataclass(frozen=True)
class ImportResult(WrittenResult):
    @property
    def architecture(self) -> str:
        return self.data["architecture"]

    @property
    def parameters(self) -> int:
        return self.data["parameters"]


@dataclass(frozen=True)
class ExportResult(Result):
    """gguf-export's result; a dry run (``dry_run`` True) has the per-tensor ``plan`` and no output."""

    @property
    def output(self) -> Path | None:
        return Path(self.data["output"]) if self.data.get("output") else None

    @property
    def dry_run(self) -> bool:
        return bool(self.data.get("dry_run"))

    @property
    def bits_per_weight(self) -> float:
        return self.data["bits_per_weight"]

    @property
    def types(self) -> Mapping[str, int]:
        return self.data["types"]


@dataclass(frozen=True)
class QuantizeResult(WrittenResult):
    @property
    def method(self) -> str:
        return self.data["method"]

    @property
    def format(self) -> str:
        return self.data["format"]


@dataclass(frozen=True)
class OnnxExportResult(WrittenResult):
    @property
    def validation(self) -> Mapping[str, Any] | None:
        return self.data.get("validation")


@dataclass(frozen=True)
class ImatrixResult(WrittenResult):
    @property
    def chunks(self) -> int:
        return self.data["chunks"]


@dataclass(frozen=True)
class BenchResult(Result):
    @property
    def artifacts(self) -> tuple[Mapping[str, Any], ...]:
        return self.data["artifacts"]

    @property
    def failed_gates(self) -> tuple[tuple[str, str], ...]:
        """(gate expression, artifact name) for every gate that held."""
        return tuple((g["expr"], f["artifact"]) for g in self.data.get("gates", ()) for f in g["failed"])


@dataclass(frozen=True)
class RunResult(Result):
    """``mtk run``: the manifest (or, for a dry run, the plan)."""

    @property
    def exit_code(self) -> int:
        return int(self.data.get("exit_code", 0))
