"""What crosses the wire: the model codec, byte accounting and the bound."""

from .accounting import CATEGORIES, MessageBytes, measure_message
from .bound import binary_entropy, dense_bytes, payload_bound
from .codec import ModelPayload, WireError, decode_payload, encode_payload

__all__ = [
    "CATEGORIES",
    "MessageBytes",
    "ModelPayload",
    "WireError",
    "binary_entropy",
    "decode_payload",
    "dense_bytes",
    "encode_payload",
    "measure_message",
    "payload_bound",
]
