"""CPU speed-ups, each an exact replacement of a plain transformers / PyTorch computation."""
