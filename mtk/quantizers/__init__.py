"""Quantization methods, registered by name: ``gptq``, ``awq``, ``rtn`` (``mtk.quantizers.engine``).

Each entry is a layer quantizer (``engine.LayerQuantizer``): it quantizes one decoder layer of a
``LayerwiseModel`` and replaces the calibration inputs with the layer's outputs.

Other packages add methods through the ``mtk.quantizers`` entry-point group.
"""

from mtk.registry import Registry

QUANTIZERS: Registry[object] = Registry("quantization method", entry_point_group="mtk.quantizers")

# The built-in methods register themselves on import (after QUANTIZERS exists: the engine imports it).
from mtk.quantizers import engine as _engine  # noqa: E402, F401
