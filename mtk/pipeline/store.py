"""The step store: each finished step's output under the hash of what made it, so that a rerun skips it.

Layout (``<store>`` is ``<output root>/.mtk-store`` unless given)::

    <store>/steps/<key>/out/<payload>     the step's output: a file (a GGUF) or a folder (an HF checkpoint)
    <store>/steps/<key>/step.json         written last: command, result, output hash and size, time, host
    <store>/hashes.json                   sha256 of input files by (path, size, mtime), so reruns skip rehashing

A step's key is the sha256 of its command, options, the content hashes of its inputs and mtk's version
(:func:`step_key`); its output is found again by key alone, so a store cached by CI between runs (keyed on the
recipe) saves every step whose inputs did not change. A step writes into ``<key>.partial`` and is renamed to
``<key>`` only when complete: a store never holds half a step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHUNK = 1 << 22
_HASH_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def files_of(path: Path) -> list[Path]:
    """The files of an output, in a fixed order: the path itself, or every file under the folder."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def content_sha256(path: Path, cache: HashCache | None = None) -> str:
    """The sha256 of a file, or of a folder's (relative path, file sha256) list."""
    digest = (lambda p: cache.sha256(p)) if cache else file_sha256
    if path.is_file():
        return digest(path)
    h = hashlib.sha256()
    for p in files_of(path):
        h.update(f"{p.relative_to(path).as_posix()}\0{digest(p)}\n".encode())
    return h.hexdigest()


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in files_of(path))


class HashCache:
    """sha256 of files by (absolute path, size, mtime_ns), kept in ``<store>/hashes.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.known: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            self.known = {}

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        with _HASH_LOCK:
            if key in self.known:
                return self.known[key]
        value = file_sha256(path)
        with _HASH_LOCK:
            self.known[key] = value
        return value

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.known)


def step_key(command: str, options: Mapping[str, Any], inputs: Mapping[str, str], version: str) -> str:
    """The key of a step: what it runs, with which options, on which input contents, by which mtk."""
    text = json.dumps(
        {"command": command, "options": options, "inputs": dict(sorted(inputs.items())), "mtk": version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hashes = HashCache(root / "hashes.json")

    def step_dir(self, key: str) -> Path:
        return self.root / "steps" / key

    def record(self, key: str) -> dict[str, Any] | None:
        """A finished step's step.json, or None when the store does not hold the step (or its output is gone)."""
        try:
            record = json.loads((self.step_dir(key) / "step.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return record if self.output(key, record).exists() else None

    def output(self, key: str, record: Mapping[str, Any]) -> Path:
        return self.step_dir(key) / "out" / record["output"]

    def partial(self, key: str) -> Path:
        """A fresh folder to run the step in (an earlier interrupted attempt's is removed)."""
        work = self.root / "steps" / f"{key}.partial"
        shutil.rmtree(work, ignore_errors=True)
        (work / "out").mkdir(parents=True)
        return work

    def commit(self, key: str, work: Path, record: Mapping[str, Any]) -> None:
        """Turn a finished ``partial`` folder into the step's entry (replacing one made by a forced rerun)."""
        write_json(work / "step.json", record)
        final = self.step_dir(key)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    """Write JSON under a temporary name, then rename it into place (with the permissions of a plain file)."""
    fd, tmp = tempfile.mkstemp(prefix=".mtk-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def expose(payload: Path, folder: Path, name: str | None = None) -> Path:
    """Put ``payload`` (a file or a folder of files) at ``folder`` (``folder/name`` for a file) as hard links to
    the store's copy (copies where the file system refuses links); what was there before is replaced whole.
    Returns the artifact's path."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mtk-", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        for src in files_of(payload):
            rel = src.name if payload.is_file() else src.relative_to(payload)
            dst = tmp / (name if payload.is_file() and name else rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=".mtk-old-", dir=folder.parent))
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / (name or payload.name) if payload.is_file() else folder
