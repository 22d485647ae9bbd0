"""ONNX files in, ONNX files out: weight quantization and graph optimization with onnxruntime's own tools.

Every pass reads ``src`` and writes ``dst`` (``src`` is left as it was). Models whose weights pass the
2 GB protobuf limit keep them in a ``<file>.data`` sidecar (external data).
"""

from __future__ import annotations

from pathlib import Path

from mtk.errors import EnvironmentProblem

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # leave room for the graph itself


def needs_external_data(weight_bytes: int) -> bool:
    return weight_bytes >= PROTOBUF_LIMIT


def quantize_int8(src: Path, dst: Path, *, external_data: bool) -> None:
    """Dynamic int8: MatMul weights to int8 per output channel, activations quantized at run time (uint8).

    ``reduce_range``: weights on 7 bits. onnxruntime's uint8 x int8 kernel on x86 CPUs without VNNI (AVX2,
    AVX-512F) sums pairs of products in int16 (VPMADDUBSW), which saturates with full-range weights: measured on
    an AMD EPYC (AVX2, no VNNI), the tiny llama's int8 mean KL is 0.020 (top-1 0.69) without it, 1.2e-3 (top-1 0.93)
    with it (~5e-4 was measured without it on an earlier machine).
    onnxruntime's quantization docs recommend it for those CPUs; VNNI ones lose one bit of weight precision."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul"],
        use_external_data_format=external_data,
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_int4(src: Path, dst: Path, *, block_size: int, external_data: bool) -> None:
    """Weight-only int4 (``MatMulNBits``): symmetric blocks of ``block_size`` along the input dimension."""
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # pragma: no cover - onnxruntime < 1.20
        raise EnvironmentProblem("int4 needs onnxruntime >= 1.20 (MatMulNBitsQuantizer)") from exc
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=block_size, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=external_data)


def to_float16(src: Path, dst: Path, *, external_data: bool) -> None:
    """Weights and activations to float16; inputs and outputs (logits, cache) become float16 too.

    onnxruntime's converter keeps ops that have no float16 kernel on the CPU in float32 with casts around them.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=False, disable_shape_infer=False)
    onnx.save(model, str(dst), save_as_external_data=external_data, location=f"{dst.name}.data")


def optimize(src: Path, dst: Path, *, external_data: bool) -> None:
    """onnxruntime's graph optimizations (constant folding, fusions; extended level, CPU) saved to ``dst``.

    The extended level adds onnxruntime contrib ops (e.g. ``SimplifiedLayerNormalization``): the result
    runs in onnxruntime, not in other ONNX runtimes.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    if external_data:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{dst.name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
