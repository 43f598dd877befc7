"""Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: the 32-value block types, through ``gguf.quants`` (gguf-py).

gguf-py's numpy ports of ``quantize_row_q{4_0,4_1,5_0,5_1,8_0}_ref`` give ggml's bytes exactly: the committed C
vectors (normal, constant, zero, outlier, bf16-valued, tie and denormal blocks) match byte for byte, and its
single pass per block is memory-bound already, so a port of our own would add code without adding speed.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, quants


def legacy_kernel(qtype: GGMLQuantizationType):
    """A ``[B, 32] float32 → [B, type_size] uint8`` kernel for one of the 32-value types."""

    def kernel(blocks: np.ndarray) -> np.ndarray:
        return quants.quantize(blocks, qtype)

    return kernel
