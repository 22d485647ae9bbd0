"""Atomic outputs: write under a temporary name beside the target, rename only when complete.

A failure, an exception or a signal the CLI turns into one (Ctrl-C, SIGTERM) removes the temporary file or
folder, so no half-written artifact that looks complete is ever left under the target name, and nothing the user
already had is touched until the new artifact is whole.

A process killed outright (SIGKILL, a power cut) can leave only names that start with ``.mtk.`` beside the
target: its temporary, and while a folder is being swapped, the old folder moved aside. The next run writing
the same target sweeps them: a temporary that no live process holds is removed, an old folder whose target is
missing is put back.

Each temporary is held with an exclusive ``flock`` for the life of its writer, which the kernel releases when
the process dies; that is how a sweep tells a leftover from the temporary of a run still writing. Creating,
sweeping and publishing take a ``flock`` on the target's folder, so two runs writing the same target at once
publish one after the other: the result is one whole artifact, the one published last, never a mix of the two
(a split GGUF's parts are several renames).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mtk.errors import OutputError

PREFIX = ".mtk."
SUFFIX = ".partial"


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


def temporary_names(target: Path) -> list[Path]:
    """The temporaries of ``target`` that exist now, live or left over."""
    pattern = f"{PREFIX}{glob.escape(target.name)}.*{SUFFIX}"
    return sorted(target.parent.glob(pattern))


def _aside(target: Path) -> Path:
    return target.with_name(f"{PREFIX}{target.name}.old")


def check_target(target: Path, *, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked to; a parent folder must exist or be creatable."""
    if target.exists() and not overwrite:
        if target.is_dir() and not any(target.iterdir()):
            return
        raise OutputError(f"{target} already exists; pass --overwrite to replace it")


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` itself, for the short steps that must not interleave between runs.

    Best effort: where the folder cannot be opened for reading or its file system has no ``flock`` (some network
    and FUSE mounts), the steps run unlocked, as before the lock existed; each rename is still atomic."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _hold(path: Path) -> int:
    """An open descriptor of ``path`` with an exclusive ``flock``: the mark of a temporary in use. Raises
    BlockingIOError when another open descriptor holds it, OSError when it cannot be locked at all."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _try_hold(path: Path) -> int | None:
    """``_hold``, or None where ``flock`` is not supported: a sweep cannot lock the temporary either, so it
    leaves it alone all the same."""
    try:
        return _hold(path)
    except OSError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(target: Path) -> None:
    """Remove the temporaries of ``target`` no live process holds; put back an old folder a killed swap left
    aside. Call with the folder locked, so that no run creates or publishes meanwhile."""
    for path in temporary_names(target):
        try:
            fd = _hold(path)
        except BlockingIOError:
            continue  # another run is writing it
        except OSError:
            continue  # gone meanwhile, or not ours to open: leave it
        try:
            _remove(path)
        finally:
            os.close(fd)
    _restore_aside(target)


def _restore_aside(target: Path) -> None:
    old = _aside(target)
    if old.exists() and not target.exists():
        os.replace(old, target)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (in this thread) while a temporary is created and registered; one that
    arrives meanwhile is delivered when this ends, inside the caller's cleanup (the CLI turns it into an
    exception). Without this a signal right after ``mkstemp`` left the new temporary behind."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:  # pragma: no cover - not on Linux
        yield
        return
    previous = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


@contextmanager
def _temporary(target: Path, *, folder: bool) -> Iterator[Path]:
    """A fresh temporary beside ``target`` (after sweeping the leftovers), held until the context ends, and
    removed if anything (an error, a signal) ends the context before the caller published it."""
    tmp: Path | None = None
    held: int | None = None
    try:
        with _signals_held():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with _locked(target.parent):
                    sweep(target)
                    if folder:
                        tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{target.name}.", suffix=SUFFIX, dir=target.parent))
                    else:
                        fd, name = tempfile.mkstemp(prefix=f"{PREFIX}{target.name}.", suffix=SUFFIX, dir=target.parent)
                        os.close(fd)
                        tmp = Path(name)
                    held = _try_hold(tmp)  # before the folder is unlocked: no sweep may see it unheld
            except OSError as exc:
                raise _output_error(exc, target) from exc
        yield tmp
    except BaseException:
        if tmp is not None:
            _remove(tmp)  # the caller may have removed it already: a no-op then
        raise
    finally:
        if held is not None:
            os.close(held)


@contextmanager
def atomic_file(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success it is renamed to ``target``."""
    target = Path(target)
    check_target(target, overwrite=overwrite)
    with _temporary(target, folder=False) as tmp:
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            yield tmp
            with _locked(target.parent):
                check_target(target, overwrite=overwrite)  # another run may have published since the first check
                os.replace(tmp, target)
        except OSError as exc:  # the temporary itself goes in _temporary, on any exit before publishing
            raise _output_error(exc, target) from exc


@contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``."""
    target = Path(target)
    check_target(target, overwrite=overwrite)
    with _temporary(target, folder=True) as tmp:
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the artifact gets the usual permissions
            yield tmp
            with _locked(target.parent):
                check_target(target, overwrite=overwrite)
                _swap_in(tmp, target)
        except BaseException as exc:  # the temporary itself goes in _temporary
            with suppress(OSError):
                _restore_aside(target)  # interrupted between the two renames: the user's folder goes back
            if isinstance(exc, OSError):
                raise _output_error(exc, target) from exc
            raise


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing folder is moved aside first (a folder cannot be renamed over a
    non-empty one), so that a failure between the renames can put it back rather than lose both."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = _aside(target)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_files(targets: list[Path], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """Yield paths with the targets' own names inside a hidden temporary folder beside the first target.

    Keeping the names lets tools that find sibling files by name (llama.cpp's split GGUFs) read the set
    before it is published; on success each file replaces its target, on failure the folder is removed.
    """
    targets = [Path(t) for t in targets]
    for t in targets:
        check_target(t, overwrite=overwrite)
    with _temporary(targets[0], folder=True) as tmp:
        try:
            paths = [tmp / t.name for t in targets]
            yield paths
            with _locked(targets[0].parent):
                for t in targets:
                    check_target(t, overwrite=overwrite)
                for p, t in zip(paths, targets, strict=True):
                    p.chmod(0o666 & ~_umask())
                    os.replace(p, t)
        except OSError as exc:
            raise _output_error(exc, targets[0]) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
