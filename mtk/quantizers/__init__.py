"""Quantization methods and checkpoint formats, registered by name.

``QUANTIZERS``: the methods (``gptq``, ``awq``, ``rtn``), one module each in ``mtk.quantizers.methods``, each a
``QuantMethod`` row with its own config class and layer quantizer. ``FORMATS``: the checkpoint formats (``gptq``,
``awq``, ``compressed-tensors``), one module each in ``mtk.quantizers.formats``, each a ``CheckpointFormat`` row.
``mtk.quantizers.engine`` runs a method over a checkpoint and writes the chosen format.

Other packages add methods through the ``mtk.quantizers`` entry-point group and formats through
``mtk.quantizers.formats``. Importing this package imports neither torch nor transformers.
"""

from mtk.quantizers.formats import FORMATS, CheckpointFormat, format_of
from mtk.quantizers.methods import QuantMethod
from mtk.registry import Registry

QUANTIZERS: Registry[QuantMethod] = Registry("quantization method", entry_point_group="mtk.quantizers")

# The built-in methods register themselves on import (after QUANTIZERS exists).
from mtk.quantizers.methods import awq as _awq  # noqa: E402, F401
from mtk.quantizers.methods import gptq as _gptq  # noqa: E402, F401
from mtk.quantizers.methods import rtn as _rtn  # noqa: E402, F401

__all__ = ["FORMATS", "QUANTIZERS", "CheckpointFormat", "QuantMethod", "format_of"]
