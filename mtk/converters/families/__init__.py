"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, llama, mixtral, olmo2, phi3, qwen  # noqa: F401
