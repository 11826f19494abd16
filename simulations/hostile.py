"""Hostile clients for benchmarks: the real ClientApp, whose training replies an attack rewrites.

:class:`HostileClientApp` runs :data:`client.app.app` for every message and, on
the nodes whose partition id is hostile, passes each training reply through an
attack before it leaves. Every attack sends a well-formed reply (right keys,
sizes, metrics), so only the server's robustness checks and rules stand in its way:

==================  =============================================================
attack              the hostile node's training reply ...
==================  =============================================================
``values-1e30``     carries 1e30 for every kept value
``importance-1e30`` carries PruneFL's uploaded importance times 1e30
``replay``          carries the arrays of its first reply again (from round 2 on)
``bfloat16``        carries its values in bfloat16 (the run's format: float32)
``as-update``       flags its values as an update w_c - w_start
``wrong-round``     is labelled with another round
``sign-flip``       carries w_start - (w_c - w_start): its update reversed
``scaled``          carries w_start + 5 (w_c - w_start): its update five times over
==================  =============================================================
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client.app import app as honest_app
from common import keys
from common.wire.codec import STYPES, VALUES
from common.wire.values import decode_values, encode_values, read_header

PREVIOUS = "hostile.previous"  # the node's previous training arrays, in its persistent state
SCALE = 5.0


def _values(section: bytes) -> np.ndarray:
    return decode_values(section, read_header(section, "values")[1], "values")[0]


def _section(data: bytes) -> Array:
    return Array(dtype="uint8", shape=(len(data),), stype=STYPES[VALUES], data=data)


def _rewrite_values(
    reply: Message, change: Callable[[np.ndarray], np.ndarray], fmt: str = "float32", relative: bool = False
) -> None:
    record = reply.content.array_records[keys.ARRAYS]
    record[VALUES] = _section(encode_values(change(_values(record[VALUES].data)), fmt, 1, relative))  # type: ignore[arg-type]


def _update(reply: Message, sent: Message, factor: float) -> None:
    """Values w_start + factor (w_c - w_start), w_start the values the node received."""
    start = _values(sent.content.array_records[keys.ARRAYS][VALUES].data)
    _rewrite_values(reply, lambda v: (start + factor * (v - start)).astype(np.float32))


def attack_reply(name: str, reply: Message, sent: Message, context: Context) -> Message:
    """``reply`` (to ``sent``) rewritten by attack ``name``; see the module's table."""
    if not reply.has_content() or keys.ARRAYS not in reply.content.array_records:
        return reply
    record = reply.content.array_records[keys.ARRAYS]
    if name == "values-1e30":
        _rewrite_values(reply, lambda v: np.full_like(v, 1e30))
    elif name == "importance-1e30":
        if "importance" in record:
            section = record["importance"].data
            boosted = _values(section) * np.float32(1e30)
            data = encode_values(boosted, "float32", 1)
            record["importance"] = Array(
                dtype="uint8", shape=(len(data),), stype=STYPES["importance"], data=data
            )
    elif name == "replay":
        previous = context.state.array_records.get(PREVIOUS)
        if previous is not None:
            reply.content[keys.ARRAYS] = previous  # what it sent last time, again
        else:
            context.state[PREVIOUS] = ArrayRecord(dict(record.items()))
    elif name == "bfloat16":
        _rewrite_values(reply, lambda v: v, fmt="bfloat16")
    elif name == "as-update":
        start = _values(sent.content.array_records[keys.ARRAYS][VALUES].data)
        _rewrite_values(reply, lambda v: v - start, relative=True)
    elif name == "wrong-round":
        reply.metadata.__dict__["_group_id"] = str(int(reply.metadata.group_id) + 1)
    elif name == "sign-flip":
        _update(reply, sent, -1.0)
    elif name == "scaled":
        _update(reply, sent, SCALE)
    else:
        raise ValueError(f"unknown attack {name!r}; allowed: {list(ATTACKS)}")
    return reply


ATTACKS = (
    "values-1e30",
    "importance-1e30",
    "replay",
    "bfloat16",
    "as-update",
    "wrong-round",
    "sign-flip",
    "scaled",
)


class HostileClientApp(ClientApp):
    """The real ClientApp; training replies of the ``hostile`` partitions go through ``attack``."""

    def __init__(self, attack: str, hostile: frozenset[int]) -> None:
        super().__init__()
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; allowed: {list(ATTACKS)}")
        self.attack, self.hostile = attack, hostile

    def __call__(self, message: Message, context: Context) -> Message:
        reply = honest_app(message, context)
        partition = int(context.node_config.get("partition-id", -1))
        if message.metadata.message_type == "train" and partition in self.hostile:
            return attack_reply(self.attack, reply, message, context)
        return reply
