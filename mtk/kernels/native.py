"""mtk's C encoders for the CPU: K-quants, IQ4 and the importance-weighted legacy types.

ggml's scale searches are sequential per sub-block (each step depends on the previous one's fitted values),
which batched eager torch can only run as one pass over memory per step: 0.05-0.8x llama.cpp's speed on the
CPU. The same searches written as plain C loops keep a block in registers. The sources ship in
``mtk/kernels/csrc``; the first call compiles them with the system C compiler (about a second) into
``$MTK_CACHE_DIR/native`` (default ``~/.cache/mtk/native``), named by a hash of the sources, the flags and the
compiler's version, and later calls load that file. The torch encoders remain the path for CUDA and the
fallback when no compiler is found; ``MTK_NATIVE=0`` forces them. ``MTK_NATIVE_CFLAGS`` adds compiler flags
(the tests build ``-DMTK_PORTABLE`` that way: the plain-C loops other CPUs run instead of the x86 vector
paths picked at run time; and ``-DMTK_SSE2_ONLY``: the paths of an x86-64 CPU without AVX). The run-time
choice asks only for AVX and AVX2, so AVX-512 CPUs run the AVX2 machines' code.

The C follows ggml's float operation order, and ``-ffp-contract=off`` keeps the compiler from fusing a
multiply and an add that ggml rounds separately, so the bytes equal llama.cpp's; tests compare them with
``ggml_quantize_chunk``. Rows are split over threads; ctypes releases the GIL during each call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType

from mtk.errors import UnsupportedError
from mtk.kernels import types

QT = GGMLQuantizationType
SOURCE_DIR = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-fvisibility=hidden", "-ffp-contract=off", "-fno-math-errno")
# The types the C library encodes, each by one exported function (see csrc/mtk_common.h for the signature).
SYMBOLS: dict[GGMLQuantizationType, str] = {row.qtype: row.native for row in types.rows() if row.native}
# Types whose C encoder is their importance encoder: without importance their torch encoders are fast and exact.
IMPORTANCE_ONLY = frozenset(q for q in SYMBOLS if types.get(q).importance is types.Importance.SEPARATE)
ROWS_PER_TASK_VALUES = 1 << 18  # values per task handed to a thread: enough to hide the call overhead


def enabled() -> bool:
    """Whether CPU encodes go through the C library: not disabled by ``MTK_NATIVE=0`` and it compiled."""
    return os.environ.get("MTK_NATIVE", "1") != "0" and library() is not None


def handles(qtype: GGMLQuantizationType, weights: torch.Tensor, with_importance: bool) -> bool:
    """Whether :func:`encode` takes this call: a CPU tensor, a type the library has, and the library on."""
    if weights.device.type != "cpu" or qtype not in SYMBOLS:
        return False
    if qtype in IMPORTANCE_ONLY and not with_importance:
        return False
    return enabled() and hasattr(library(), SYMBOLS[qtype])


def encode(
    rows: torch.Tensor, qtype: GGMLQuantizationType, importance: torch.Tensor | None, threads: int | None = None
) -> torch.Tensor:
    """Encode float CPU ``rows`` (n, cols), cols whole blocks, with optional float (cols,) ``importance``
    (checked by the caller: finite, >= 0) -> uint8 (n, cols // block_size * type_size).

    Raises ``UnsupportedError`` for non-finite values in ``rows``.
    """
    lib = library()
    if lib is None:
        raise RuntimeError("mtk's C encoders are not available (no C compiler?)")
    fn = getattr(lib, SYMBOLS[qtype])
    entry = types.get(qtype)
    block_size, type_size = entry.block_size, entry.type_size
    n, cols = rows.shape
    out = np.empty((n, cols // block_size * type_size), dtype=np.uint8)
    imp = None if importance is None else np.ascontiguousarray(importance.float().numpy(), dtype=np.float32)
    imp_ptr = None if imp is None else imp.ctypes.data
    step = max(1, ROWS_PER_TASK_VALUES // max(cols, 1))
    threads = threads or torch.get_num_threads()

    def run(start: int) -> None:
        # One float32 copy of the rows this task encodes (the input may be float16/bfloat16 or a view).
        part = np.ascontiguousarray(rows[start : start + step].float().numpy(), dtype=np.float32)
        if not np.isfinite(part).all():  # the searches assume finite values, as ggml's do
            raise UnsupportedError(f"cannot quantize non-finite values (inf or NaN) to {qtype.name}")
        status = fn(part.ctypes.data, imp_ptr, out[start : start + step].ctypes.data, part.shape[0], cols)
        if status != 0:
            raise RuntimeError(f"{SYMBOLS[qtype]} refused rows of {cols} values")

    starts = range(0, n, step)
    if threads <= 1 or len(starts) == 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, starts))
    return torch.from_numpy(out)


@cache
def library() -> ctypes.CDLL | None:
    """The compiled library (built on first use), or None with a warning when it cannot be built."""
    try:
        path = _build()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as error:
        warnings.warn(f"mtk: C encoders unavailable, using the slower torch encoders ({error})", stacklevel=2)
        return None
    lib = ctypes.CDLL(str(path))
    for name in SYMBOLS.values():
        if hasattr(lib, name):  # tests check that every type in SYMBOLS is there
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    for name in ("mtk_f32_to_f16_array", "mtk_f16_to_f32_array"):
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (set CC or install cc)")
    return cc


def _build() -> Path:
    cc = _compiler()
    sources = sorted(SOURCE_DIR.glob("*.c"))
    flags = [*FLAGS, *os.environ.get("MTK_NATIVE_CFLAGS", "").split()]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256()
    for part in (version, " ".join(flags), sys.platform):
        digest.update(part.encode())
    for source in sorted(SOURCE_DIR.iterdir()):
        digest.update(source.name.encode() + source.read_bytes())
    target = _cache_dir() / f"mtk_encoders-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename: concurrent first calls each build their own and the last
    # rename wins with identical bytes; a reader never sees a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        command = [cc, *flags, "-I", str(SOURCE_DIR), "-o", tmp, *map(str, sources), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{cc} failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _cache_dir() -> Path:
    root = os.environ.get("MTK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mtk"
    )
    return Path(root) / "native"
