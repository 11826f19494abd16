"""The information-theoretic size of a masked-model message, and the dense size.

For a mask with density d_l over the n_l weights of layer l, drawn i.i.d., the
mask carries n_l * H(d_l) bits, H(d) = -d log2 d - (1 - d) log2 (1 - d). When the
receiver already holds a mask that differs from the new one in a fraction f_l of
the bits, the XOR delta carries n_l * H(f_l) bits, so a mask costs
n_l min(H(d_l), H(f_l)) (see :func:`common.wire.masks.mask_bound_bits`). The k
kept values add b bits each, b the bits of the configured value format (32 for
float32, 16 for float16 and bfloat16: the bound of a lossy message counts the
bits actually configured, not float32's), and the importance statistic its own
format's bits per value. The bound of one message is therefore

    sum_l n_l min(H(d_l), H(f_l)) / 8   (only when the mask is sent)
  + (b k + b_imp * importance values) / 8 + 8 * integer buffers        bytes.

Trained float weights are close to incompressible, but not entirely: with
byte-shuffle and zstd a message can come in a little below this bound.
"""

from __future__ import annotations

from ..layout import ModelLayout
from .masks import binary_entropy, mask_bound_bits

__all__ = ["binary_entropy", "dense_bytes", "mask_bound_bits", "payload_bound"]


def payload_bound(
    layout: ModelLayout,
    mask_bits: float,
    num_values: int,
    value_bits: int = 32,
    num_importance: int = 0,
    importance_bits: int = 32,
) -> float:
    """Bound in bytes of a payload with the given content (see module docstring)."""
    bits = mask_bits + value_bits * num_values + importance_bits * num_importance + 64 * layout.num_ints
    return bits / 8


def dense_bytes(layout: ModelLayout) -> int:
    """Raw size of the dense model: 4 bytes per float, 8 per integer buffer entry."""
    return 4 * layout.num_floats + 8 * layout.num_ints
