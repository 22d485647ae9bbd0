"""Quantization methods and checkpoint formats, registered by name.

``QUANTIZERS``: the methods (``gptq``, ``awq``, ``rtn``), one module each in ``mtk.quantizers.methods``, each a
``QuantMethod`` row with its own config class and layer quantizer. ``FORMATS``: the checkpoint formats (``gptq``,
``awq``, ``compressed-tensors``), one module each in ``mtk.quantizers.formats``, each a ``CheckpointFormat`` row.
``mtk.quantizers.engine`` runs a method over a checkpoint and writes the chosen format.

Other packages add methods through the ``mtk.quantizers`` entry-point group and formats through
``mtk.quantizers.formats``. Importing this package imports neither torch nor transformers.
"""

from mtk.quantizers.formats import FORMATS, CheckpointFormat, format_of
from mtk.quantizers.methods import QUANTIZERS, QuantMethod

__all__ = ["FORMATS", "QUANTIZERS", "CheckpointFormat", "QuantMethod", "format_of"]
