"""The one loop that takes a phase's replies: measure, match, decode, count.

Every reply the server receives (training, evaluation, initial pruning) goes
through :func:`collect_replies`: it is measured, matched against the phase's
:class:`~server.validation.Exchange` (sender, round, type, message, size) and
decoded by the caller's ``decode``; an error reply is a failure, a reply that
fails a check is rejected (once), and an addressed node that sent nothing is a
failure too. Whatever the outcome, the reply is logged with its bytes (every byte
that arrived counts) and its bound, computed from the mask ``decode`` found (so a
mask is decoded once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from flwr.app import Message

from .messenger import Messenger
from .validation import Exchange, RejectedReply

NO_REPLY = "no reply to this round's message within federation.round-timeout"
Decoded = TypeVar("Decoded")


def collect_replies(
    exchange: Exchange,
    replies: Iterable[Message],
    messenger: Messenger,
    phase: str,
    decode: Callable[[Message, int], Decoded],
    on_failed: Callable[[int, str], None],
    on_rejected: Callable[[int, RejectedReply], None],
) -> list[Decoded]:
    """The decoded replies of ``exchange``, in arrival order; the others reported as they come.

    ``decode`` gets a reply and its measured value bytes and raises
    :class:`~server.validation.RejectedReply`; ``on_failed`` gets each node that
    answered with an error or not at all (:data:`NO_REPLY`), ``on_rejected`` each
    rejected reply's node and reason.
    """
    accepted: list[Decoded] = []
    for reply in replies:
        node_id = exchange.sender(reply)
        measured = messenger.measure(reply)
        decoded = None
        try:
            exchange.accept_origin(reply, measured.total)
            if reply.has_error():
                on_failed(node_id, reply.error.reason)
                continue
            decoded = decode(reply, measured.values)
            accepted.append(decoded)
        except RejectedReply as exc:
            on_rejected(node_id, exc)
        finally:
            mask = getattr(decoded, "mask", None)
            messenger.log_reply(reply, exchange.server_round, phase, node_id, measured, mask)
    for node_id in sorted(exchange.missing()):
        on_failed(node_id, NO_REPLY)
    return accepted
