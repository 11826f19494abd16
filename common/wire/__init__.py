"""What crosses the wire: the model codec, byte accounting and the bound."""

from .accounting import CATEGORIES, MessageBytes, measure_message
from .bound import binary_entropy, dense_bytes, mask_bound_bits, payload_bound
from .codec import ModelPayload, PayloadInfo, WireFormat, decode_payload, encode_payload, payload_info
from .errors import WireError

__all__ = [
    "CATEGORIES",
    "MessageBytes",
    "ModelPayload",
    "PayloadInfo",
    "WireError",
    "WireFormat",
    "binary_entropy",
    "decode_payload",
    "dense_bytes",
    "encode_payload",
    "mask_bound_bits",
    "measure_message",
    "payload_bound",
    "payload_info",
]
