"""The compressed-tensors ``pack-quantized`` layout (vLLM's native W4A16/W8A16 format, as llm-compressor writes it);
the format's entry (config, loader, constraints) is mtk.quantizers.formats.compressed_tensors.

Per Linear of weight ``(out, in)`` quantized in groups of ``g`` input columns (``n = in / g``; 1 per channel):

``weight_packed`` int32 ``(out, in * bits / 32)``: each row's values as a little-endian bit stream along the input
  dimension, 32 values per ``bits`` words (compressed-tensors ``pack_to_int32``, ``packed_dim=1``);
``weight_scale`` float ``(out, n)`` in the model's dtype (``initialize_qparams``: the scale takes the weight's dtype);
``weight_zero_point`` int32 ``(out * bits / 32, n)``, asymmetric schemes only: the zero points packed the same way
  along the output dimension (``packed_dim=0``); symmetric checkpoints have none (the zero point is 0);
``weight_shape`` int64 ``(2,)``: ``(out, in)``.

compressed-tensors quantizes to signed integers in ``[-2**(bits-1), 2**(bits-1) - 1]`` and packs ``value +
2**(bits-1)``; weight = ``scale * (value - zero_point)`` with a signed zero point. mtk's codes and zero points are
unsigned (``[0, 2**bits - 1]``) with weight = ``scale * (code - zero)``, so the stored unsigned values are exactly
mtk's codes and zeros: the offset cancels in the difference. A symmetric grid needs mtk's zero at ``2**(bits-1)``
(``grid.fit_gptq``), which is signed zero point 0.

There is no ``g_idx``: compressed-tensors 0.20 removed activation ordering "group" (``weight_g_idx``), and its
"weight" ordering only changes calibration, so columns must keep their natural groups.

Sources: compressed_tensors 0.20 ``compressors/pack_quantized/{base,helpers}.py``, ``quantization/quant_args.py``,
``quantization/lifecycle/initialize.py``; vLLM ``compressed_tensors_wNa16.py`` (4 and 8 bits; zero points packed
along the output dimension; ``weight_shape`` int64 of 2).
"""

from __future__ import annotations

import torch

from mtk.quantizers.pack import pack_bits, unpack_bits

SCALE_DTYPE = torch.float16  # the checkpoints' float dtype (engine.STORED_FLOAT): scales take the model's dtype


def word_count(n: int, bits: int) -> int:
    return -(-n * bits // 32)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned values ``(n, m)`` -> int32 ``(ceil(n * bits / 32), m)``, bit streams along dim 0.

    As compressed-tensors does, a length that is not a multiple of 32 is padded with zero values and the stream
    cut after its last used word.
    """
    n = values.shape[0]
    padded = torch.zeros((-(-n // 32) * 32, values.shape[1]), dtype=torch.int64, device=values.device)
    padded[:n] = values.to(torch.int64)
    return pack_bits(padded, bits)[: word_count(n, bits)].contiguous()


def unpack_rows(packed: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """The inverse of ``pack_rows``: int64 values ``(n, m)``."""
    words = packed.shape[0]
    padded = torch.zeros((-(-words // bits) * bits, packed.shape[1]), dtype=torch.int32, device=packed.device)
    padded[:words] = packed
    return unpack_bits(padded, bits)[:n]


def pack_compressed(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, g_idx: torch.Tensor, bits: int, sym: bool
) -> dict[str, torch.Tensor]:
    """pack-quantized tensors from mtk codes ``(out, in)`` and per-group scale/zero ``(out, n)``; see the notes."""
    out, cols = codes.shape
    n = scale.shape[1]
    if not torch.equal(g_idx.long().cpu(), torch.arange(cols) // (cols // n)):
        raise ValueError("compressed-tensors has no g_idx: columns must stay in their natural groups (no --desc-act)")
    if sym and not bool((zero == 1 << (bits - 1)).all()):
        raise ValueError(f"a symmetric compressed-tensors grid needs every zero point at {1 << (bits - 1)}")
    tensors = {
        "weight_packed": pack_rows(codes.t(), bits).t().contiguous(),
        "weight_scale": scale.to(SCALE_DTYPE).contiguous(),
        "weight_shape": torch.tensor([out, cols], dtype=torch.int64),
    }
    if not sym:
        tensors["weight_zero_point"] = pack_rows(zero, bits)
    return tensors


def unpack_compressed(tensors: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """Float32 weight ``(out, in)`` from pack-quantized tensors (symmetric when there is no zero point)."""
    out, cols = (int(v) for v in tensors["weight_shape"])
    codes = unpack_rows(tensors["weight_packed"].t().contiguous(), cols, bits).t().float()
    scale = tensors["weight_scale"].float()
    if "weight_zero_point" in tensors:
        zero = unpack_rows(tensors["weight_zero_point"], out, bits).float()
    else:
        zero = torch.full_like(scale, 1 << (bits - 1))
    g = cols // scale.shape[1]
    return scale.repeat_interleave(g, 1) * (codes - zero.repeat_interleave(g, 1))
