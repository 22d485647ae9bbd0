"""Atomic outputs: write under a temporary name beside the target, rename only when complete.

A failure, an exception or Ctrl-C removes the temporary file or folder, so no half-written artifact that
looks complete is ever left under the target name, and nothing the user already had is touched until the
new artifact is whole.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtk.errors import OutputError


def _output_error(exc: OSError, target: Path) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"no space left on the device while writing {target}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(f"cannot write {target}: {exc.strerror}")
    return OutputError(f"writing {target} failed: {exc.strerror or exc}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_target(target: Path, *, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked to; a parent folder must exist or be creatable."""
    if target.exists() and not overwrite:
        if target.is_dir() and not any(target.iterdir()):
            return
        raise OutputError(f"{target} already exists; pass --overwrite to replace it")


@contextmanager
def atomic_file(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it is renamed to ``target``."""
    target = Path(target)
    check_target(target, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        os.close(fd)
        os.chmod(tmp_name, 0o666 & ~_umask())
    except OSError as exc:
        raise _output_error(exc, target) from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(exc, target) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    check_target(target, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the artifact gets the usual permissions
    except OSError as exc:
        raise _output_error(exc, target) from exc
    try:
        yield tmp
        if target.exists():
            # Move the old artifact aside first, so a failed rename cannot lose both.
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _output_error(exc, target) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_files(targets: list[Path], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """Yield paths with the targets' own names inside a hidden temporary folder beside the first target.

    Keeping the names lets tools that find sibling files by name (llama.cpp's split GGUFs) read the set
    before it is published; on success each file replaces its target, on failure the folder is removed.
    """
    targets = [Path(t) for t in targets]
    for t in targets:
        check_target(t, overwrite=overwrite)
    parent = targets[0].parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{targets[0].name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise _output_error(exc, targets[0]) from exc
    try:
        paths = [tmp / t.name for t in targets]
        yield paths
        for p, t in zip(paths, targets, strict=True):
            p.chmod(0o666 & ~_umask())
            os.replace(p, t)
    except OSError as exc:
        raise _output_error(exc, targets[0]) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
