"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, gemma4, llama, olmo2, phi3, qwen  # noqa: F401
