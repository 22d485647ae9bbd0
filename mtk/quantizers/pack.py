"""Checkpoint layouts for quantized Linear layers: AutoGPTQ/GPTQModel v1 and AutoAWQ GEMM, packed and unpacked.

Both hold, per Linear of weight ``(out, in)`` quantized in groups of ``g`` input columns (``n = in / g``):

GPTQ v1 (``checkpoint_format: gptq``):
  ``qweight`` int32 ``(in * bits / 32, out)``: the codes of each output column as a little-endian bit stream
  along the input dimension, 32 codes per ``bits`` words (so 3-bit codes straddle words);
  ``qzeros`` int32 ``(n, out * bits / 32)``: zero points minus one (the v1 convention), packed the same way
  along the output dimension; ``scales`` float16 ``(n, out)``; ``g_idx`` int32 ``(in,)``: the group of each
  input column (not sorted under act-order). Weight = ``scales[g_idx[i], o] * (code - (qzero + 1))``.
AWQ GEMM (``version: gemm``), 4 bits only:
  ``qweight`` int32 ``(in, out / 8)`` and ``qzeros`` int32 ``(n, out / 8)``: eight 4-bit values per word along
  the output dimension, word nibble ``k`` holding column ``8 * word + AWQ_ORDER[k]``; zeros stored as they are;
  ``scales`` float16 ``(n, out)``. Weight = ``scales[i // g, o] * (code - zero)``.
"""

from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_MASK32 = (1 << 32) - 1


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``(k * 32, m)`` along dim 0 into int32 ``(k * bits, m)``, little-endian bit streams."""
    n, m = codes.shape
    if n % 32:
        raise ValueError(f"packing needs a multiple of 32 values along the packed dimension, got {n}")
    v = codes.to(torch.int64).reshape(n // 32, 32, m)
    words = torch.zeros((n // 32, bits, m), dtype=torch.int64, device=codes.device)
    for k in range(32):
        word, shift = divmod(k * bits, 32)
        words[:, word] |= (v[:, k] << shift) & _MASK32
        if shift + bits > 32:  # the code's high bits spill into the next word (3-bit streams)
            words[:, word + 1] |= v[:, k] >> (32 - shift)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)
    return words.reshape(n // 32 * bits, m).to(torch.int32)


def unpack_bits(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of ``pack_bits``: int32 ``(k * bits, m)`` -> int64 codes ``(k * 32, m)``."""
    rows, m = packed.shape
    words = (packed.to(torch.int64) & _MASK32).reshape(rows // bits, bits, m)
    out = torch.empty((rows // bits, 32, m), dtype=torch.int64, device=packed.device)
    mask = (1 << bits) - 1
    for k in range(32):
        word, shift = divmod(k * bits, 32)
        value = words[:, word] >> shift
        if shift + bits > 32:
            value = value | (words[:, word + 1] << (32 - shift))
        out[:, k] = value & mask
    return out.reshape(rows // bits * 32, m)


def pack_gptq(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor, bits: int
) -> dict[str, torch.Tensor]:
    """GPTQ v1 tensors from codes ``(out, in)`` and per-group scale/zero ``(out, n)``; see the module notes."""
    return {
        "qweight": pack_bits(codes.t(), bits),
        "qzeros": pack_bits(zero - 1, bits).t().contiguous(),
        "scales": scale.t().contiguous().to(torch.float16),
        "g_idx": g_idx.to(torch.int32),
    }


def unpack_gptq(tensors: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """Float32 weight ``(out, in)`` from GPTQ v1 tensors."""
    q = unpack_bits(tensors["qweight"], bits).float()  # (in, out)
    zeros = unpack_bits(tensors["qzeros"].t().contiguous(), bits).t().float() + 1  # (n, out)
    scales = tensors["scales"].float()
    g = tensors["g_idx"].long()
    return (scales[g] * (q - zeros[g])).t().contiguous()


def _pack_awq_rows(values: torch.Tensor) -> torch.Tensor:
    """``(r, out)`` 4-bit values -> int32 ``(r, out / 8)`` in AWQ's interleaved nibble order."""
    r, out = values.shape
    v = values.to(torch.int64).reshape(r, out // 8, 8)[:, :, list(AWQ_ORDER)]
    shifts = torch.arange(0, 32, 4, device=values.device, dtype=torch.int64)
    words = (v << shifts).sum(dim=-1)
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def _unpack_awq_rows(packed: torch.Tensor) -> torch.Tensor:
    r, w = packed.shape
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int64)
    nibbles = ((packed.to(torch.int64) & _MASK32)[:, :, None] >> shifts) & 0xF  # (r, w, 8) in stored order
    out = torch.empty_like(nibbles)
    out[:, :, list(AWQ_ORDER)] = nibbles
    return out.reshape(r, w * 8)


def pack_awq(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """AWQ GEMM tensors from 4-bit codes ``(out, in)`` and per-group scale/zero ``(out, n)``."""
    if codes.shape[0] % 8:
        raise ValueError(f"AWQ GEMM needs output features in multiples of 8, got {codes.shape[0]}")
    return {
        "qweight": _pack_awq_rows(codes.t()),
        "qzeros": _pack_awq_rows(zero.t()),
        "scales": scale.t().contiguous().to(torch.float16),
    }


def unpack_awq(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 weight ``(out, in)`` from AWQ GEMM tensors."""
    q = _unpack_awq_rows(tensors["qweight"]).float()  # (in, out)
    zeros = _unpack_awq_rows(tensors["qzeros"]).float()  # (n, out)
    scales = tensors["scales"].float()
    g = q.shape[0] // scales.shape[0]
    idx = torch.arange(q.shape[0], device=q.device) // g
    return (scales[idx] * (q - zeros[idx])).t().contiguous()
