"""``--fail-if`` gates: a small expression language over one artifact's metrics, parsed with ``ast`` and
evaluated by walking a whitelist of nodes (never ``eval``).

Grammar (Python syntax, these nodes only): numbers; metric names (``METRICS``); ``ref`` (the reference's
value of the metric named on the same comparison's left side) or ``ref.METRIC``; ``+ - * /``, unary ``-``;
comparisons ``< <= > >= == !=`` (chains too); ``and``, ``or``, ``not``; parentheses.

Examples: ``ppl > 1.05 * ref`` · ``kl > 0.05 or top1 < 0.9`` · ``decode_tps < 0.5 * ref and size_mb > 100``.

A gate is evaluated for every artifact; it *fails* the artifact when it is true. A gate that needs a metric
an artifact lacks (no reference, so no KL; ``--gen-tokens 0``, so no decode speed) fails too: a CI gate
that cannot be checked must not pass silently.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtk.errors import UsageError

# gate name -> (result field, scale): sizes in MB (10^6 bytes) read better in a gate than bytes.
METRICS: dict[str, tuple[str, float]] = {
    "ppl": ("ppl", 1.0),
    "nll": ("nll_mean", 1.0),
    "kl": ("kl_mean", 1.0),
    "kl_max": ("kl_max", 1.0),
    "kl_p99": ("kl_p99", 1.0),
    "top1": ("top1", 1.0),
    "size_mb": ("size_bytes", 1e-6),
    "size": ("size_bytes", 1e-6),
    "bpw": ("bpw", 1.0),
    "load_s": ("load_s", 1.0),
    "prefill_tps": ("prefill_tps", 1.0),
    "decode_tps": ("decode_tps", 1.0),
    "rss_mb": ("rss_peak_bytes", 1e-6),
    "rss": ("rss_peak_bytes", 1e-6),
    "vram_mb": ("vram_peak_bytes", 1e-6),
    "vram": ("vram_peak_bytes", 1e-6),
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class MissingMetric(Exception):
    """A metric the gate needs is None for this artifact (or for the reference)."""


@dataclass(frozen=True)
class Gate:
    """One parsed ``--fail-if`` expression."""

    text: str
    tree: ast.Expression

    def fails(self, row: Mapping[str, Any], ref: Mapping[str, Any] | None) -> bool:
        """True when the expression holds for ``row`` (raises MissingMetric when it cannot be evaluated)."""
        try:
            return bool(_Evaluator(row, ref).value(self.tree.body, None))
        except ZeroDivisionError:
            raise MissingMetric("it divides by zero") from None


def parse_gate(text: str) -> Gate:
    """Parse and check one expression; anything outside the grammar is a UsageError (exit code 2)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise UsageError(f"--fail-if {text!r}: not an expression ({exc.msg})") from None
    _check(tree.body, text, None)
    return Gate(text, tree)


def _metric_name(node: ast.expr) -> str | None:
    """The first metric named in ``node`` (the comparison's subject that a bare ``ref`` refers to)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in METRICS:
            return sub.id
    return None


def _check(node: ast.expr, text: str, subject: str | None) -> None:
    def bad(what: str) -> UsageError:
        allowed = ", ".join(sorted(set(METRICS)))
        return UsageError(f"--fail-if {text!r}: {what}; use numbers, metrics ({allowed}), ref, + - * /, comparisons")

    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text, subject)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        _check(node.operand, text, subject)
    elif isinstance(node, ast.Compare):
        if not all(type(op) in _COMPARE for op in node.ops):
            raise bad("unsupported comparison")
        subject = _metric_name(node.left) or _metric_name(node)
        for part in (node.left, *node.comparators):
            _check(part, text, subject)
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise bad(f"operator {type(node.op).__name__} is not allowed")
        _check(node.left, text, subject)
        _check(node.right, text, subject)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise bad(f"{node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if node.id == "ref" and subject is None:
            raise bad("a bare 'ref' needs a metric on the same comparison (or write ref.METRIC)")
        if node.id != "ref" and node.id not in METRICS:
            raise bad(f"unknown name {node.id!r}")
    elif isinstance(node, ast.Attribute):
        if not (isinstance(node.value, ast.Name) and node.value.id == "ref" and node.attr in METRICS):
            raise bad("only ref.METRIC attributes are allowed")
    else:
        raise bad(f"{type(node).__name__} is not allowed")


class _Evaluator:
    def __init__(self, row: Mapping[str, Any], ref: Mapping[str, Any] | None):
        self.row, self.ref = row, ref

    def metric(self, source: Mapping[str, Any] | None, name: str, who: str) -> float:
        field, scale = METRICS[name]
        value = None if source is None else source.get(field)
        if value is None:
            raise MissingMetric(f"{name} is not known for the {who}")
        return float(value) * scale

    def value(self, node: ast.expr, subject: str | None) -> Any:
        if isinstance(node, ast.BoolOp):
            values = (self.value(v, subject) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            v = self.value(node.operand, subject)
            return (not v) if isinstance(node.op, ast.Not) else -v
        if isinstance(node, ast.Compare):
            subject = _metric_name(node.left) or _metric_name(node)
            left = self.value(node.left, subject)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self.value(right_node, subject)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self.value(node.left, subject), self.value(node.right, subject))
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Attribute):
            return self.metric(self.ref, node.attr, "reference")
        if not isinstance(node, ast.Name):  # pragma: no cover - parse_gate admits nothing else
            raise TypeError(f"unexpected {type(node).__name__} in a checked gate")
        if node.id == "ref":
            return self.metric(self.ref, subject or "", "reference")
        return self.metric(self.row, node.id, "artifact")
