"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, glm4, llama, mistral3, olmo2, phi3, qwen  # noqa: F401
