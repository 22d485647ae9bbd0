"""The ``mtk`` command: global options, the commands that work, and one place that maps errors to exit codes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Annotated, Any

import typer

from mtk.cli import bench, export_onnx, gguf_export, gguf_import, imatrix, inspect, quantize, run
from mtk.cli.common import SETTINGS
from mtk.cli.quiet import quiet_third_party
from mtk.errors import EXIT_INTERRUPTED, MtkError, UsageError

app = typer.Typer(
    name="mtk",
    help="Convert, quantize and export language-model checkpoints; every artifact verified in its runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
app.command("inspect")(inspect.inspect_command)
app.command("gguf-import")(gguf_import.gguf_import_command)
app.command("gguf-export")(gguf_export.gguf_export_command)
app.command("export-onnx")(export_onnx.export_onnx_command)
app.command("quantize")(quantize.quantize_command)
app.command("imatrix")(imatrix.imatrix_command)
app.command("bench")(bench.bench_command)
app.command("run")(run.run_command)


@app.callback()
def _global_options(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON result object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")] = False,
) -> None:
    SETTINGS.json, SETTINGS.quiet, SETTINGS.verbose = json_output, quiet, verbose
    if not verbose:
        quiet_third_party()


class Signalled(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM, so that every ``with`` and ``finally`` on the way out runs:
    the atomic writers remove their temporaries and leave the old output as it was.

    Not a KeyboardInterrupt: typer catches that inside the command and returns 130 as if it were a result, so an
    interrupted run used to exit 0. A BaseException also passes through the libraries' ``except Exception``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_signalled(signum: int, frame: FrameType | None) -> None:
    # A second signal while the first one unwinds (a slow cleanup) ends the process at once, as the user asks;
    # what it leaves is a temporary with mtk's prefix, which the next run writing there removes.
    signal.signal(signum, signal.SIG_DFL)
    raise Signalled(signum)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise Signalled while the command runs, unless the process was started with them ignored
    (``nohup``, a shell's background job): that choice of the caller's is kept. The handlers are put back after,
    for a caller of ``main`` in its own process (the tests). Only the main thread may install handlers."""
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                previous[signum] = signal.signal(signum, _raise_signalled)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _fail(message: str, code: int) -> int:
    print(f"mtk: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the process exit code."""
    debug = os.environ.get("MTK_DEBUG", "") not in ("", "0")
    # OpenMP's default busy-waiting makes torch's CPU threads spin against each other whenever anything
    # else uses the CPU (measured: element-wise kernels up to 10x slower on a shared 2-core machine).
    # The CLI imports torch lazily, so this default still reaches the runtime; a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        with _signals_raise():
            returned = app(args=argv, prog_name="mtk", standalone_mode=False)
        # In this mode typer returns the exit code of a ``ctx.exit(n)`` (and 130 for a KeyboardInterrupt raised
        # another way than by SIGINT); a command itself returns None.
        code = returned if isinstance(returned, int) else 0
        if code == EXIT_INTERRUPTED:
            code = _fail("interrupted; no partial output was kept", EXIT_INTERRUPTED)
    except Signalled as exc:
        # 128 + the signal's number, as a shell reports a process the signal ended: 130 for SIGINT, 143 for SIGTERM.
        code = _fail(f"interrupted ({exc}); no partial output was kept", 128 + exc.signum)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = _fail("interrupted", EXIT_INTERRUPTED)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        if debug:
            traceback.print_exc()
        code = _fail(exc.format_message().replace("\n", " "), UsageError.exit_code)
    except MtkError as exc:
        if debug:
            traceback.print_exc()
        code = _fail(str(exc).replace("\n", " "), exc.exit_code)
    except KeyboardInterrupt:
        code = _fail("interrupted; no partial output was kept", EXIT_INTERRUPTED)
    except Exception as exc:
        if debug:
            raise
        code = _fail(f"internal error: {type(exc).__name__}: {exc} (run with MTK_DEBUG=1 for the traceback)", 1)
    if __name__ != "__main__":
        sys.exit(code)
    return code  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
