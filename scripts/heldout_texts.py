"""Build held-out English texts of other domains than the KJV from files installed with the venv (no downloads).

- ``licenses.txt`` (legal prose): every ``LICENSE*``/``COPYING*`` file under site-packages, in sorted path order,
  paragraphs (blank-line separated, whitespace collapsed) kept only the first time they occur, so the forty copies
  of the Apache and MIT licenses count once.
- ``metadata.txt`` (technical prose): the long-description bodies of every ``*.dist-info/METADATA`` (what follows
  the first blank line), paragraphs deduplicated the same way, the KJV package's left out.
- ``docstrings.txt`` (API prose): module, class and function docstrings of the interpreter's standard library
  (``sysconfig`` ``stdlib``, ``*.py`` in sorted order, tests and ``idlelib`` left out), deduplicated the same way.

Usage::

    .venv/bin/python scripts/heldout_texts.py OUT_DIR     # writes the three files, prints their sizes and digests
"""

from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

MIN_CHARS = 40_000


def _paragraphs(texts: Iterable[str]) -> str:
    seen: set[str] = set()
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            key = " ".join(para.split())
            if len(key) < 20 or key in seen:  # short lines: headings, separators, code fragments
                continue
            seen.add(key)
            out.append(para.strip("\n"))
    return "\n\n".join(out) + "\n"


def licenses(site: Path) -> str:
    files = sorted(p for p in site.rglob("*") if p.is_file() and p.name.upper().startswith(("LICENSE", "COPYING")))
    return _paragraphs(p.read_text(encoding="utf-8", errors="replace") for p in files)


def metadata(site: Path) -> str:
    bodies = []
    for p in sorted(site.glob("*.dist-info/METADATA")):
        if "kjv" in p.parent.name.lower():
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        bodies.append(text.split("\n\n", 1)[1] if "\n\n" in text else "")
    return _paragraphs(bodies)


def docstrings(stdlib: Path) -> str:
    docs = []
    for p in sorted(stdlib.rglob("*.py")):
        if {"test", "tests", "idlelib", "site-packages"} & set(p.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(p.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return _paragraphs(docs)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    site = Path(sysconfig.get_paths()["purelib"])
    texts = {
        "licenses": licenses(site),
        "metadata": metadata(site),
        "docstrings": docstrings(Path(sysconfig.get_paths()["stdlib"])),
    }
    for name, text in texts.items():
        if len(text) < MIN_CHARS:
            sys.exit(f"{name}: only {len(text)} characters")
        data = text.encode("utf-8")
        (out / f"{name}.txt").write_bytes(data)
        print(f"{name}.txt {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
