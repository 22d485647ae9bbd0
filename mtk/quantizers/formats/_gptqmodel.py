"""What the ``gptq`` and ``awq`` formats share: GPTQModel's ``quantization_config`` keys and its loader.

Both are read by transformers through GPTQModel (7.6), whose CPU kernels run them: the 4-bit ones through ATen's
int4 matmul (``_weight_int4pack_mm_cpu``), which takes groups of 32, 64, 128 or 256 input columns only (and a
whole row, per channel, only when the input width is one of those: measured, a 320-wide Linear fails with "expect
qGroupSize to be 32, 64, 128 or 256, got 320"); 2 and 3 bits through its torch kernel, measured to load groups of
16 to 256 and per channel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtk.errors import EnvironmentProblem, UsageError

if TYPE_CHECKING:
    from mtk.compare import Tolerance
    from mtk.quantizers.config import QuantizeConfig

# The mtk release written into the checkpoints' ``meta.quantizer`` (as GPTQModel writes its own).
VERSION = "0.1.0"
RUNTIME = "transformers with GPTQModel's CPU kernels"
# bits -> group sizes GPTQModel 7.6 loads on the CPU (measured, see the module notes). At 4 bits it picks
# TorchAtenLinear, ATen's int4 matmul (_weight_int4pack_mm_cpu), which takes groups of 32, 64, 128 or 256.
GROUP_SIZES: dict[int, tuple[int, ...]] = {4: (32, 64, 128, 256, -1)}


def check_width(name: str, cols: int, cfg: QuantizeConfig) -> None:
    """Per channel, a group is the whole input width: at 4 bits that width must be one the int4 kernel takes."""
    sizes = GROUP_SIZES.get(cfg.bits)
    if sizes is not None and cfg.group_size == -1 and cols not in sizes:
        listed = ", ".join(str(g) for g in sizes if g != -1)
        raise UsageError(
            f"{name}: one scale per channel makes a group of the whole input width {cols}, and GPTQModel's "
            f"{cfg.bits}-bit CPU kernel takes groups of {listed} only: choose one of those group sizes"
        )


def available() -> bool:
    return importlib.util.find_spec("gptqmodel") is not None and importlib.util.find_spec("optimum") is not None


def common_config(cfg: QuantizeConfig) -> dict[str, Any]:
    """The keys GPTQModel 7.6 reads for both formats (``quant_method`` and the format's own keys come after)."""
    meta = {
        "quantizer": [f"mtk:{VERSION}"],
        "damp_percent": cfg.damp_percent,
        "static_groups": cfg.static_groups,
        "act_group_aware": cfg.act_group_aware,
        "true_sequential": cfg.true_sequential,
        "mtk_method": cfg.method,
    }
    return {
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "desc_act": cfg.desc_act,
        "lm_head": False,
        "pack_dtype": "int32",
        "sym": cfg.sym,
        "meta": meta,
    }


def load(path: Path) -> Any:
    """The checkpoint through ``AutoModelForCausalLM.from_pretrained`` on the CPU with GPTQModel's kernels."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if not available():
        raise EnvironmentProblem("loading GPTQ/AWQ checkpoints needs gptqmodel and optimum (pip install mtk[quantize])")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    hf_logging.disable_progress_bar()
    # GPTQModel prints a banner and kernel-selection logs on stdout, where `--json` results go.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        import gptqmodel  # noqa: F401 - imported here so that its banner goes to the sink

        return AutoModelForCausalLM.from_pretrained(str(path), device_map="cpu", dtype=torch.float32)


def tolerance(qc: dict[str, Any]) -> Tolerance:
    from mtk.compare import Tolerance

    # GPTQModel's default int4 CPU kernel (TorchAtenLinear, ATen's int4 matmul) computes in its own reduced
    # precision: against the float weights it holds, measured mean KL ~1e-7 at 8 bits, 8e-5 on tiny 4-bit models
    # and 3e-3 to 0.03 on SmolLM2 at 4 bits (30 layers; max |logit diff| up to 13). A wrong layout or config gives
    # KL > 1.
    return Tolerance(kl_mean=0.1, top1=0.8)


def label(qc: dict[str, Any]) -> str:
    """``gptq 4-bit g128``; AutoAWQ's own configs name bits and group size ``w_bit`` and ``q_group_size``."""
    from mtk.quantizers.formats import group_label

    bits = qc.get("bits") or qc.get("w_bit")
    group = qc.get("group_size") or qc.get("q_group_size")
    return group_label(qc.get("quant_method", "quantized"), bits, group)
