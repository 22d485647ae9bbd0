"""The ``mtk`` command: global options, the commands that work, and one place that maps errors to exit codes."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from mtk.cli import bench, export_onnx, gguf_export, gguf_import, imatrix, inspect, quantize
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


@app.callback()
def _global_options(
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON result object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")] = False,
) -> None:
    SETTINGS.json, SETTINGS.quiet, SETTINGS.verbose = json_output, quiet, verbose
    if not verbose:
        quiet_third_party()


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
        app(args=argv, prog_name="mtk", standalone_mode=False)
        code = 0
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
