"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, granite, llama, olmo2, phi3, qwen, smollm3  # noqa: F401
