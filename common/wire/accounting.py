"""Bytes of a message, measured from what Flower actually serialises.

Flower (>= 1.20) ships a message as a tree of content-addressed objects
(``Message`` -> ``RecordDict`` -> records -> ``Array`` -> ``ArrayChunk``); each is
sent as the bytes of its ``deflate()``. The measure used throughout fedprune is

    bytes(message) = sum of len(obj.deflate()) over the message's unique objects

as listed by ``flwr.supercore.inflatable.get_all_nested_objects``: the exact
payload the SuperLink stores and forwards. Transport framing (one HTTP request
per object, about 0.9 KB of headers each) is not included; ``objects`` counts the
objects so that it can be estimated. Counting is per message, logically: the
SuperLink's de-duplication of identical objects across messages is ignored.

Bytes are split by array name into values / mask / importance; everything else
(records' own headers, configs, metrics, metadata, integer buffers) is "other".

Measuring costs no copy of the payload and hashes each array's chunks once (Flower
caches them on the array); the figures are those of deflating every object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flwr.app import Array, Message
from flwr.app.message.arraychunk import ArrayChunk
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
from flwr.supercore.constant import HEAD_BODY_DIVIDER, HEAD_VALUE_DIVIDER
from flwr.supercore.inflatable.inflatable_object import InflatableObject

from .codec import IMPORTANCE, IMPORTANCE_TOP, MASK, VALUES

CATEGORIES = ("values", "mask", "importance", "other")
_CATEGORY_OF_ARRAY = {
    VALUES: "values",
    MASK: "mask",
    IMPORTANCE: "importance",
    IMPORTANCE_TOP: "importance",
}


@dataclass(frozen=True)
class MessageBytes:
    values: int = 0
    mask: int = 0
    importance: int = 0
    other: int = 0
    objects: int = 0

    @property
    def total(self) -> int:
        return self.values + self.mask + self.importance + self.other

    def __add__(self, other: MessageBytes) -> MessageBytes:
        return MessageBytes(
            self.values + other.values,
            self.mask + other.mask,
            self.importance + other.importance,
            self.other + other.other,
            self.objects + other.objects,
        )


def measure_message(message: Message) -> MessageBytes:
    """Serialised size of ``message``, split by category (see the module docstring).

    The figures are those of ``sum(len(obj.deflate()))`` over
    ``get_all_nested_objects(message)``, computed without building or re-hashing
    the array chunks, which carry nearly all the bytes: a chunk's deflated size is
    its header plus its data, and its object id is the one the array keeps once its
    chunks are cut (see :func:`array_chunks`). Only the small objects (message,
    records, arrays' headers) are deflated.
    """
    arrays = _named_arrays(message)
    for _, array in arrays:  # cut here first: the message's object id reaches Flower's own cutting
        array_chunks(array)
    sizes: dict[str, int] = {}
    _add_sizes(message, sizes)
    parts = dict.fromkeys(CATEGORIES[:-1], 0)
    claimed: set[str] = set()
    for name, array in arrays:
        category = _CATEGORY_OF_ARRAY.get(name)
        if category is None:
            continue
        for object_id in (array.object_id, *(chunk_id for chunk_id, _ in array_chunks(array))):
            if object_id not in claimed:
                claimed.add(object_id)
                parts[category] += sizes[object_id]
    total = sum(sizes.values())
    return MessageBytes(
        values=parts["values"],
        mask=parts["mask"],
        importance=parts["importance"],
        other=total - sum(parts.values()),
        objects=len(sizes),
    )


def _named_arrays(message: Message) -> list[tuple[str, Array]]:
    """Every array of the message's array records, with its name."""
    if not message.has_content():
        return []
    return [item for record in message.content.array_records.values() for item in record.items()]


def _add_sizes(obj: InflatableObject, sizes: dict[str, int]) -> None:
    """Deflated size of ``obj`` and of every object below it, by object id (each id once)."""
    if isinstance(obj, Array):
        for chunk_id, chunk in array_chunks(obj):
            if chunk_id not in sizes:
                sizes[chunk_id] = len(_chunk_header(chunk)) + len(chunk.data)
    else:
        for child in (obj.children or {}).values():
            _add_sizes(child, sizes)
    object_id = obj.object_id
    if object_id not in sizes:
        sizes[object_id] = len(obj.deflate())


def _chunk_header(chunk: ArrayChunk) -> bytes:
    """What ``chunk.deflate()`` puts before the chunk's data (Flower's object header)."""
    head = f"{type(chunk).__qualname__}{HEAD_VALUE_DIVIDER}{HEAD_VALUE_DIVIDER}{len(chunk.data)}"
    return head.encode("utf-8") + HEAD_BODY_DIVIDER


def array_chunks(array: Array) -> list[tuple[str, ArrayChunk]]:
    """``array.slice_array()``: its chunks and their object ids, cut and hashed once per array.

    Flower keeps the list on the array once cut. An array not cut yet (a reply just
    received) is cut here as Flower cuts it, each chunk's id the SHA-256 of its
    deflated content, hashed as header then data instead of a copy of both (the
    copy is what Flower's own cutting spends most of its time on), and the list is
    kept on the array where Flower keeps it, so that Flower finds it there.
    """
    cached = array.__dict__.get("_chunks")
    if cached is not None:
        return cached
    data = memoryview(array.data)
    chunks = []
    for start in range(0, len(data), FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE):
        chunk = ArrayChunk(data[start : start + FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE])
        digest = hashlib.sha256(_chunk_header(chunk))
        digest.update(chunk.data)
        chunks.append((digest.hexdigest(), chunk))
    array.__dict__["_chunks"] = chunks
    return chunks


def drop_chunk_lists(message: Message) -> None:
    """Remove the chunk list Flower (and :func:`array_chunks`) keeps on each array of ``message``.

    The list holds a view of every chunk of the array's data. Where a message is
    pickled instead of sent as objects (Flower's simulation engine hands each message
    to a Ray worker that way), the views are pickled too, as copies: a measured
    dense Conv-2 broadcast crossed to each worker as 44 MB instead of 22. The
    arrays' object ids stay cached; the list is cut again only if something asks
    for the chunks.
    """
    for _, array in _named_arrays(message):
        array.__dict__.pop("_chunks", None)
