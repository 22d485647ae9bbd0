"""Benchmark mtk's K-quant/IQ4 encoders against llama.cpp's llama_model_quantize on realistic matrices.

For each type: random float32 matrices of llama shapes (default 4096x4096 and 14336x4096, N(0, 0.02)) are
written once to an F32 GGUF of one llama layer; llama.cpp quantizes it (``pure``, ``nthread`` threads) and
mtk encodes the same in-memory tensors with the same torch thread count, eager and with MTK_COMPILE=1.
llama.cpp's time includes its file I/O, so the time of its plain F32 copy of the same file is subtracted
(and printed). Prints M weights/s for both and their ratio, the compile seconds of the first compiled call,
the RMSE ratio mtk/llama.cpp and the fraction of byte-identical blocks.

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_kquants.py --types Q4_K,Q6_K --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
import time
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QT = GGMLQuantizationType
FTYPES = {QT.Q2_K: 10, QT.Q3_K: 11, QT.Q4_K: 14, QT.Q5_K: 16, QT.Q6_K: 18, QT.IQ4_NL: 25, QT.IQ4_XS: 30}
F32_FTYPE = 0  # LLAMA_FTYPE_ALL_F32: a copy, the I/O floor


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


def read_tensor_bytes(path: Path, name: str) -> np.ndarray:
    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == name)
    return np.array(tensor.data).view(np.uint8).reshape(-1)


def mtk_encode(tensors: dict[str, torch.Tensor], qtype: GGMLQuantizationType, compiled: bool) -> tuple[dict, float]:
    from mtk.kernels.quantize import quantize

    os.environ["MTK_COMPILE"] = "1" if compiled else "0"
    start = time.perf_counter()
    out = {name: quantize(x, qtype) for name, x in tensors.items()}
    return out, time.perf_counter() - start


def compare(ours: np.ndarray, theirs: np.ndarray, x: np.ndarray, qtype: GGMLQuantizationType) -> tuple[float, float]:
    """(RMSE ratio ours/theirs, fraction of identical blocks)."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    same = (ours.reshape(-1, type_size) == theirs.reshape(-1, type_size)).all(-1).mean()
    err_ours = ((gguf.quants.dequantize(ours, qtype).reshape(x.shape) - x) ** 2).mean()
    err_theirs = ((gguf.quants.dequantize(theirs, qtype).reshape(x.shape) - x) ** 2).mean()
    return float(np.sqrt(err_ours / err_theirs)), float(same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default=",".join(t.name for t in FTYPES))
    parser.add_argument("--shapes", default="4096x4096,14336x4096", help="rows x cols, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", default="eager,compiled", help="mtk paths to time: eager, compiled")
    parser.add_argument("--cold-compile", action="store_true", help="compile into a fresh inductor cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cold_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mtk-inductor-")
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    names = ["blk.0.ffn_up.weight" if s[0] > s[1] else "blk.0.attn_q.weight" for s in shapes]
    arrays = {n: (rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in zip(names, shapes, strict=True)}
    tensors = {n: torch.from_numpy(a) for n, a in arrays.items()}
    n_weights = sum(a.size for a in arrays.values())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "f32.gguf"
        write_f32_gguf(src, arrays)
        io_floor = llama_quantize(src, Path(tmp) / "copy.gguf", F32_FTYPE, args.threads)
        print(f"{n_weights / 1e6:.1f} M weights ({args.shapes}); llama.cpp F32 copy (I/O floor) {io_floor:.2f} s")
        header = "type     llama.cpp M/s  path      mtk M/s  ratio   compile s  RMSE ratio  identical"
        print(header)
        for qtype in [QT[t] for t in args.types.split(",")]:
            dst = Path(tmp) / f"{qtype.name}.gguf"
            seconds = llama_quantize(src, dst, FTYPES[qtype], args.threads) - io_floor
            theirs = {n: read_tensor_bytes(dst, n) for n in names}
            llama_rate = n_weights / seconds / 1e6
            for path in args.paths.split(","):
                compile_s = float("nan")
                if path == "compiled":
                    os.environ["MTK_COMPILE"] = "1"
                    from mtk.kernels.quantize import quantize

                    start = time.perf_counter()
                    quantize(tensors[names[0]][:64], qtype)  # first call: compiles (or loads the cache)
                    compile_s = time.perf_counter() - start
                ours, took = mtk_encode(tensors, qtype, path == "compiled")
                rate = n_weights / took / 1e6
                ratios = [compare(ours[n].numpy().reshape(-1), theirs[n], arrays[n], qtype) for n in names]
                rmse = max(r for r, _ in ratios)
                same = float(np.mean([s for _, s in ratios]))
                print(
                    f"{qtype.name:7s}  {llama_rate:13.2f}  {path:8s}  {rate:7.2f}  {rate / llama_rate:5.2f}x"
                    f"  {compile_s:9.1f}  {rmse:10.5f}  {same:9.1%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
