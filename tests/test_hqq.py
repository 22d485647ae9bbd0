"""HQQ: its zero points against min-max rounding's on the objective HQQ minimises, and its checkpoints in every
asymmetric format loading in transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_quantize import _quantize, calibration  # noqa: F401, F811 - the calibration-text fixture

from mtk.quantizers.grid import fit_gptq, grouped, to_codes
from mtk.quantizers.hqq import LP_NORM, fit_hqq


def _errors(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return w - scale[:, None] * (to_codes(w, scale, zero, bits) - zero[:, None])


@pytest.mark.parametrize("bits", [3, 4])
def test_hqq_grids_lower_the_sparse_and_the_squared_error(bits: int) -> None:
    torch.manual_seed(0)
    # Heavy-tailed weights (Student t, 3 degrees of freedom), as LLM weights are: the case HQQ is for.
    w = grouped(torch.distributions.StudentT(3.0).sample((256, 512)) * 0.02, 64)
    scale, zero = fit_hqq(w, bits)
    assert torch.equal(zero, zero.round()) and zero.min() >= 1 and zero.max() <= 2**bits - 1
    base_scale, base_zero = fit_gptq(w, bits, sym=False)  # min-max rounding (RTN's asymmetric grid)
    ours, theirs = _errors(w, scale, zero, bits), _errors(w, base_scale, base_zero, bits)
    lp = lambda e: e.abs().pow(LP_NORM).mean(dim=-1)  # noqa: E731 - HQQ's objective
    assert lp(ours).mean() < 0.99 * lp(theirs).mean(), (lp(ours).mean(), lp(theirs).mean())
    assert (lp(ours) <= lp(theirs) + 1e-9).all()  # per group never worse: min-max rounding is where it starts
    assert ours.pow(2).mean() < 0.97 * theirs.pow(2).mean()
    assert (scale != base_scale).float().mean() > 0.5  # most grids moved


@pytest.mark.parametrize(("fmt", "written"), [(None, "gptq"), ("awq", "awq"), ("compressed-tensors", None)])
def test_hqq_checkpoints_load_in_transformers(
    fmt: str | None,
    written: str | None,
    tiny_models: dict,
    calibration: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    extra = ("--format", fmt) if fmt else ()
    quality = _quantize(tiny_models["llama"], tmp_path / "hqq", calibration, "hqq", 4, *extra, fmt=written or fmt)
    assert quality["kl_mean"] < 0.15, quality
