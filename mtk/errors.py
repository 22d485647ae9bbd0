"""mtk's error hierarchy: library code raises these, the CLI maps each to one line and an exit code.

| exit code | class               | meaning                                                      |
|-----------|---------------------|--------------------------------------------------------------|
| 1         | MtkError            | an unexpected failure (a bug: run with MTK_DEBUG=1)           |
| 2         | UsageError          | bad command-line usage or option values                      |
| 3         | UnsupportedError    | an architecture, tensor type or feature mtk does not support |
| 4         | InvalidFileError    | a truncated, corrupt or wrong-kind input file                |
| 5         | VerificationError   | an artifact disagrees with its source beyond tolerance       |
| 6         | EnvironmentProblem  | a missing optional dependency or device                      |
| 7         | OutputError         | the output cannot be written (exists, disk full, no access)  |
| 130       | (SIGINT, Ctrl-C)    | interrupted; the old output kept, no temporary left          |
| 143       | (SIGTERM)           | the same, for SIGTERM (128 + the signal's number)            |
"""

from __future__ import annotations

EXIT_INTERRUPTED = 130


class MtkError(Exception):
    """Base of every error mtk raises on purpose."""

    exit_code = 1


class UsageError(MtkError):
    exit_code = 2


class UnsupportedError(MtkError):
    exit_code = 3


class InvalidFileError(MtkError):
    exit_code = 4


class VerificationError(MtkError):
    exit_code = 5


class EnvironmentProblem(MtkError):
    exit_code = 6


class OutputError(MtkError):
    exit_code = 7


def quoted(text: object, limit: int = 60) -> str:
    """An untrusted string (a key or tensor name read from a file) fit for a one-line message: ``repr`` escapes
    control characters, newlines and undecodable bytes, and a long one is cut to ``limit`` characters."""
    shown = repr(text if isinstance(text, str) else str(text))
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def error_for(exit_code: int) -> type[MtkError]:
    """The error class of an exit code (a child ``mtk`` command's, re-raised by ``mtk run``); MtkError if none."""
    classes = (UsageError, UnsupportedError, InvalidFileError, VerificationError, EnvironmentProblem, OutputError)
    return next((c for c in classes if c.exit_code == exit_code), MtkError)
