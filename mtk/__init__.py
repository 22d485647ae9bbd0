"""mtk: convert, quantize and export language-model checkpoints, every artifact verified in its runtime."""
