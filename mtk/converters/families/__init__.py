"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import gemma, glm, gpt_oss, granite, llama, mixtral, olmo2, phi3, qwen, smollm3  # noqa: F401
