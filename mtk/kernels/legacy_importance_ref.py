"""The slow twin of mtk.kernels.legacy_importance: ggml's ``quantize_row_q4_0_impl`` ... ``quantize_row_q5_1_impl``
one row and one block at a time, in numpy float32, with the searches of :mod:`mtk.kernels.kquants_ref`
(``make_qx`` is make_qx_quants, ``make_qkx`` make_qkx3_quants). Only for tests.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType

from mtk.kernels.kquants_ref import f32, fp16_bytes, make_qkx, make_qx

QT = GGMLQuantizationType
QK = 32


def _row_blocks(x: np.ndarray, qw: np.ndarray, qtype: GGMLQuantizationType) -> bytes:
    """One row: ``sigma2`` summed left to right, then every block as the C ``_impl`` loop does."""
    sum_x2 = f32(0)
    for v in x:
        sum_x2 = f32(sum_x2 + v * v)
    sigma2 = sum_x2 / f32(len(x))
    out = bytearray()
    for ib in range(len(x) // QK):
        xb, qb = x[ib * QK : (ib + 1) * QK], qw[ib * QK : (ib + 1) * QK]
        weight = qb * np.sqrt(sigma2 + xb * xb)
        if qtype == QT.Q4_0:
            d, L = make_qx(xb, weight, 8)
            out += fp16_bytes(d)
        elif qtype == QT.Q5_0:
            d, L = make_qx(xb, weight, 16)
            out += fp16_bytes(d)
        else:
            nmax = 15 if qtype == QT.Q4_1 else 31
            d, the_min, L = make_qkx(xb, weight, nmax, -0.9, 0.05, 36, mad=False)
            out += fp16_bytes(d) + fp16_bytes(-the_min)
        codes = [int(v) for v in L]
        if qtype in (QT.Q5_0, QT.Q5_1):
            qh = 0
            for j in range(16):
                qh |= ((codes[j] & 0x10) >> 4) << j
                qh |= ((codes[j + 16] & 0x10) >> 4) << (j + 16)
            out += qh.to_bytes(4, "little")
        out += bytes((codes[j] & 0x0F) | ((codes[j + 16] & 0x0F) << 4) for j in range(16))
    return bytes(out)


def encode_rows(x: torch.Tensor, importance: torch.Tensor, qtype: GGMLQuantizationType) -> torch.Tensor:
    """As :func:`mtk.kernels.legacy_importance.encode_rows`: float32 (r, cols), (cols,) -> uint8 (r, bytes)."""
    xs = x.detach().cpu().numpy().astype(f32)
    qw = importance.detach().cpu().numpy().astype(f32)
    rows = [_row_blocks(xs[i], qw, qtype) for i in range(xs.shape[0])]
    out = np.frombuffer(b"".join(rows), np.uint8).reshape(xs.shape[0], -1)
    return torch.from_numpy(out.copy()).to(x.device)
