"""The built-in model families; importing this package registers each once."""

from mtk.converters.families import (  # noqa: F401
    deepseek,
    gemma,
    gemma4,
    glm4,
    gpt_oss,
    granite,
    llama,
    llama4,
    mistral3,
    mixtral,
    olmo2,
    phi3,
    qwen,
    smollm3,
)
