"""The information-theoretic size of a masked-model message, and the dense size.

For a mask with density d_l over the n_l weights of layer l, drawn i.i.d., the
mask carries n_l * H(d_l) bits, H(d) = -d log2 d - (1 - d) log2 (1 - d); the k kept
float32 values add 32 k bits (trained weights are close to incompressible). The
bound of one message is therefore

    sum_l n_l H(d_l) / 8   (only when the mask is sent)
  + 4 * (kept values + importance values) + 8 * integer buffers     bytes.
"""

from __future__ import annotations

import numpy as np

from ..layout import ModelLayout


def binary_entropy(d: float) -> float:
    """H(d) in bits; 0 at d = 0 and d = 1."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return float(-d * np.log2(d) - (1 - d) * np.log2(1 - d))


def mask_bound_bits(layout: ModelLayout, mask: np.ndarray) -> float:
    return sum(t.size * binary_entropy(float(mask[t.slice].mean())) for t in layout.prunable)


def payload_bound(
    layout: ModelLayout,
    mask: np.ndarray,
    mask_sent: bool,
    num_values: int,
    num_importance: int = 0,
    value_bits: int = 32,
) -> float:
    """Bound in bytes of a payload with the given content (see module docstring)."""
    bits = mask_bound_bits(layout, mask) if mask_sent else 0.0
    bits += value_bits * num_values + 32 * num_importance + 64 * layout.num_ints
    return bits / 8


def dense_bytes(layout: ModelLayout) -> int:
    """Raw size of the dense model: 4 bytes per float, 8 per integer buffer entry."""
    return 4 * layout.num_floats + 8 * layout.num_ints
