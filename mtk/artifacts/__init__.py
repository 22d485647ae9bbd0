"""Artifacts on disk, one module per kind (gguf, hf, quantized, onnx): how each is recognised, described,
loaded in its runtime and verified. ``kinds`` lists them; ``compare`` holds what every check shares;
``llama_cpp`` and ``onnx_runtime`` wrap the two runtimes that are not transformers.

Converters do not import this package: the commands hand them a kind's check to call on their output.
"""
