"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, llama, olmo2, phi3, qwen, qwen35  # noqa: F401
