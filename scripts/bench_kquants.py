"""Benchmark mtk's K-quant/IQ4 encoders against llama.cpp's llama_model_quantize on realistic matrices.

For each type: random float32 matrices of llama shapes (default 4096x4096 and 14336x4096, N(0, 0.02)) are
written once to an F32 GGUF of one llama layer; llama.cpp quantizes it (``pure``, ``nthread`` threads) and
mtk encodes the same in-memory tensors with the same thread count: ``native`` (the C encoders of
mtk.kernels.native, mtk's CPU default), ``eager`` (the batched torch encoders, mtk's CUDA path) and
``compiled`` (those with MTK_COMPILE=1). llama.cpp's time includes its file I/O, so the time of its plain F32
copy of the same file is subtracted (and printed). Prints M weights/s for both and their ratio, the compile
seconds of the first call (the C library's build, or torch.compile's), the RMSE ratio mtk/llama.cpp and the
fraction of byte-identical blocks.

    python scripts/bench_kquants.py --types Q4_K,Q6_K --threads 2
    python scripts/bench_kquants.py --importance --shapes 4096x4096   # vs llama-quantize --imatrix
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import tempfile
import time
from pathlib import Path

# As mtk's CLI does: spinning OpenMP waits make torch's many small ops far slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gguf  # noqa: E402
import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402

QT = GGMLQuantizationType
FTYPES = {QT.Q2_K: 10, QT.Q3_K: 11, QT.Q4_K: 14, QT.Q5_K: 16, QT.Q6_K: 18, QT.IQ4_NL: 25, QT.IQ4_XS: 30}
F32_FTYPE = 0  # LLAMA_FTYPE_ALL_F32: a copy, the I/O floor
# llama-quantize's names for the file types above (with --pure each gives the one tensor type).
FTYPE_NAMES = {QT.Q2_K: "Q2_K", QT.Q3_K: "Q3_K_S", QT.Q4_K: "Q4_K_S", QT.Q5_K: "Q5_K_S", QT.Q6_K: "Q6_K"}
FTYPE_NAMES |= {QT.IQ4_NL: "IQ4_NL", QT.IQ4_XS: "IQ4_XS"}
LLAMA_QUANTIZE = "/tmp/llama-tools/build/bin/llama-quantize"


def write_f32_gguf(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A one-layer llama GGUF holding ``tensors`` (row-major (rows, cols)) in F32."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(4096)
    writer.add_feed_forward_length(14336)
    writer.add_head_count(32)
    writer.add_head_count_kv(8)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(0)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_quantize(src: Path, dst: Path, ftype: int, threads: int) -> float:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.pure = True
    start = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for ftype {ftype}")
    return time.perf_counter() - start


def write_legacy_imatrix(path: Path, importance: dict[str, np.ndarray]) -> None:
    """llama.cpp's legacy imatrix file (tools/imatrix, common/imatrix-loader.cpp): int32 entry count, then per
    entry int32 name length, name, int32 ncall, int32 nval and nval float32 sums; llama-quantize uses
    sums / ncall, so ncall = 1 stores the importance itself."""
    with path.open("wb") as f:
        f.write(np.int32(len(importance)).tobytes())
        for name, values in importance.items():
            f.write(np.int32(len(name)).tobytes() + name.encode())
            f.write(np.int32(1).tobytes() + np.int32(values.size).tobytes() + values.astype(np.float32).tobytes())


def llama_quantize_cli(src: Path, dst: Path, qtype_name: str, threads: int, imatrix: Path | None) -> float:
    """llama-quantize (the native build) --pure, optionally --imatrix: seconds."""
    cmd = [LLAMA_QUANTIZE, "--pure", *(["--imatrix", str(imatrix)] if imatrix else []), str(src), str(dst)]
    start = time.perf_counter()
    subprocess.run([*cmd, qtype_name, str(threads)], check=True, capture_output=True)
    return time.perf_counter() - start


def read_tensor_bytes(path: Path, name: str) -> np.ndarray:
    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == name)
    return np.array(tensor.data).view(np.uint8).reshape(-1)


def mtk_encode(
    tensors: dict[str, torch.Tensor], qtype: GGMLQuantizationType, path: str, importance: dict | None
) -> tuple[dict, float]:
    from mtk.kernels.quantize import quantize

    os.environ["MTK_NATIVE"] = "1" if path == "native" else "0"
    os.environ["MTK_COMPILE"] = "1" if path == "compiled" else "0"
    start = time.perf_counter()
    out = {n: quantize(x, qtype, importance=None if importance is None else importance[n]) for n, x in tensors.items()}
    return out, time.perf_counter() - start


def compare(
    ours: np.ndarray, theirs: np.ndarray, x: np.ndarray, qtype: GGMLQuantizationType, w: np.ndarray | None
) -> tuple[float, float]:
    """(RMSE ratio ours/theirs, weighted by the importance ``w`` if given; fraction of identical blocks)."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    same = (ours.reshape(-1, type_size) == theirs.reshape(-1, type_size)).all(-1).mean()
    w = np.ones(x.shape[1], np.float32) if w is None else w
    err_ours = ((gguf.quants.dequantize(ours, qtype).reshape(x.shape) - x) ** 2 * w).mean()
    err_theirs = ((gguf.quants.dequantize(theirs, qtype).reshape(x.shape) - x) ** 2 * w).mean()
    return float(np.sqrt(err_ours / err_theirs)), float(same)


def run_llama(src: Path, dst: Path, qtype: GGMLQuantizationType, threads: int, imatrix: Path | None) -> float:
    """Seconds llama.cpp takes to quantize ``src``: the Python API without importance, the llama-quantize
    binary with an imatrix (the Python binding cannot pass one)."""
    if imatrix is None:
        return llama_quantize(src, dst, FTYPES[qtype], threads)
    return llama_quantize_cli(src, dst, FTYPE_NAMES[qtype], threads, imatrix)


def bench_type(qtype, args, src, tmp, names, arrays, tensors, importance, io_floor) -> None:  # noqa: ANN001
    """One table row per mtk path for ``qtype``."""
    from mtk.kernels.quantize import quantize

    n_weights = sum(a.size for a in arrays.values())
    dst = tmp / f"{qtype.name}.gguf"
    imatrix = tmp / "imatrix.dat" if importance else None
    seconds = run_llama(src, dst, qtype, args.threads, imatrix) - io_floor
    theirs = {n: read_tensor_bytes(dst, n) for n in names}
    llama_rate = n_weights / seconds / 1e6
    for path in args.paths.split(","):
        compile_s = float("nan")
        if path == "compiled":
            os.environ["MTK_COMPILE"], os.environ["MTK_NATIVE"] = "1", "0"
            start = time.perf_counter()
            quantize(tensors[names[0]][:64], qtype)  # first call: compiles (or loads inductor's cache)
            compile_s = time.perf_counter() - start
        elif path == "native":
            from mtk.kernels import native

            start = time.perf_counter()
            native.library()  # builds the C library on the first call (or loads it from the cache)
            compile_s = time.perf_counter() - start
        ours, took = mtk_encode(tensors, qtype, path, importance)
        rate = n_weights / took / 1e6
        ratios = []
        for n in names:
            w = None if importance is None else importance[n].numpy()
            ratios.append(compare(ours[n].numpy().reshape(-1), theirs[n], arrays[n], qtype, w))
        rmse = max(r for r, _ in ratios)
        same = float(np.mean([s for _, s in ratios]))
        print(
            f"{qtype.name:7s}  {llama_rate:13.2f}  {path:8s}  {rate:7.2f}  {rate / llama_rate:5.2f}x"
            f"  {compile_s:9.1f}  {rmse:10.5f}  {same:9.1%}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(t.name for t in FTYPES))
    parser.add_argument("--shapes", default="4096x4096,14336x4096", help="rows x cols, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", default="native", help="mtk paths to time: native, eager, compiled")
    parser.add_argument("--cold-compile", action="store_true", help="compile into fresh caches (C and inductor)")
    parser.add_argument(
        "--importance",
        action="store_true",
        help="random per-column importance; llama.cpp side: llama-quantize --imatrix",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cold_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtk-inductor-")
        os.environ["MTK_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtk-cache-")
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    names = ["blk.0.ffn_up.weight" if s[0] > s[1] else "blk.0.attn_q.weight" for s in shapes]
    arrays = {n: (rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in zip(names, shapes, strict=True)}
    tensors = {n: torch.from_numpy(a) for n, a in arrays.items()}
    importance = None
    if args.importance:
        importance = {
            n: torch.from_numpy(np.exp(2 * rng.standard_normal(a.shape[1])).astype(np.float32))
            for n, a in arrays.items()
        }
    n_weights = sum(a.size for a in arrays.values())
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "f32.gguf"
        write_f32_gguf(src, arrays)
        if importance is not None:
            write_legacy_imatrix(tmp / "imatrix.dat", {n: v.numpy() for n, v in importance.items()})
            io_floor = llama_quantize_cli(src, tmp / "copy.gguf", "F32", args.threads, None)
        else:
            io_floor = llama_quantize(src, tmp / "copy.gguf", F32_FTYPE, args.threads)
        print(f"{n_weights / 1e6:.1f} M weights ({args.shapes}); llama.cpp F32 copy (I/O floor) {io_floor:.2f} s")
        print("type     llama.cpp M/s  path      mtk M/s  ratio   compile s  RMSE ratio  identical")
        for qtype in [QT[t] for t in args.types.split(",")]:
            bench_type(qtype, args, src, tmp, names, arrays, tensors, importance, io_floor)


if __name__ == "__main__":
    main()
