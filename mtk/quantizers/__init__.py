"""Quantization methods, registered by name (AWQ, GPTQ, RTN land here with `mtk quantize`).

Other packages add methods through the ``mtk.quantizers`` entry-point group.
"""

from mtk.registry import Registry

QUANTIZERS: Registry[object] = Registry("quantization method", entry_point_group="mtk.quantizers")
