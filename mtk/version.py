"""mtk's version (here, on the lowest floor, so that anything may record which mtk made it)."""

__version__ = "0.1.0"
