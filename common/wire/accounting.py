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
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Message
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    get_object_children_ids_from_object_content,
)

from .codec import IMPORTANCE, MASK, VALUES

CATEGORIES = ("values", "mask", "importance", "other")
_CATEGORY_OF_ARRAY = {VALUES: "values", MASK: "mask", IMPORTANCE: "importance"}


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

    Each object is deflated once; an array's chunks are found from the children ids
    in its own deflated header, not by walking (and re-hashing) it a second time.
    """
    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    parts = dict.fromkeys(CATEGORIES[:-1], 0)
    claimed: set[str] = set()
    if message.has_content():
        for record in message.content.array_records.values():
            for name, array in record.items():
                category = _CATEGORY_OF_ARRAY.get(name)
                if category is None:
                    continue
                array_id = array.object_id  # cached by Flower once computed
                for object_id in (array_id, *get_object_children_ids_from_object_content(contents[array_id])):
                    if object_id not in claimed:
                        claimed.add(object_id)
                        parts[category] += len(contents[object_id])
    total = sum(len(content) for content in contents.values())
    return MessageBytes(
        values=parts["values"],
        mask=parts["mask"],
        importance=parts["importance"],
        other=total - sum(parts.values()),
        objects=len(objects),
    )
