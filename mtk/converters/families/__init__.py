"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, gpt_oss, llama, olmo2, phi3, qwen  # noqa: F401
