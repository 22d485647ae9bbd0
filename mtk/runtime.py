"""Device choice shared by the commands."""

from __future__ import annotations

import torch

from mtk.errors import EnvironmentProblem, UsageError


def auto_model_class(model_type: str) -> type:
    """transformers' auto class for a checkpoint's text logits: AutoModelForCausalLM, or AutoModelForImageTextToText
    for the multimodal ones it does not map to a causal LM (Mistral3ForConditionalGeneration)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return AutoModelForCausalLM if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else AutoModelForImageTextToText


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; ``cuda`` without a GPU is an environment error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("--device cuda was asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return torch.device(device)
