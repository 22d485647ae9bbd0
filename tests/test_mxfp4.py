"""MXFP4 blocks: mtk's encoder against ggml's bytes, its slow twin, and its decoder against gguf-py's."""

from __future__ import annotations

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType
from test_kquant_kernels import _ggml_quantize_chunk

from mtk.kernels import mxfp4


def _adversarial() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(32) * s for s in (1e-3, 1, 7, 1e4, 1e30)]
    rows += [np.zeros(32), np.full(32, 3.0), np.full(32, -0.5)]
    rows += [np.ldexp(1.0, k) * (1 - 2.0**-24) * np.ones(32) for k in (-3, 0, 5, 60)]  # just under a power of 2
    half = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0] * 4)  # exactly between grid points (d = 1/2)
    rows += [np.concatenate([[12.0 * 0.5 * 1.0], half[1:]]), -np.concatenate([[6.0], half[1:]])]
    rows += [rng.standard_normal(32) * 1e-40, np.full(32, 1e-45)]  # subnormals
    rows += [np.concatenate([[np.nan], rng.standard_normal(31)])]
    rows += [np.concatenate([[3e38], rng.standard_normal(31)])]
    return np.array(rows, np.float32)


def test_mxfp4_bytes_match_ggml_and_reference() -> None:
    x = np.concatenate([_adversarial(), np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)])
    theirs = _ggml_quantize_chunk(x.reshape(-1, 32), GGMLQuantizationType.MXFP4, None)
    ours = mxfp4.encode(torch.from_numpy(x)).numpy()
    slow = np.stack([mxfp4.reference(b) for b in x])
    assert np.array_equal(ours, theirs)
    assert np.array_equal(slow, theirs)


def test_mxfp4_decoder_matches_gguf_py() -> None:
    data = np.random.default_rng(2).integers(0, 256, (200, 17), dtype=np.uint8)
    ours = mxfp4.decode(torch.from_numpy(data)).numpy()
    theirs = gguf.quants.dequantize(data, GGMLQuantizationType.MXFP4).reshape(200, 32)
    assert np.array_equal(ours, theirs, equal_nan=True)
