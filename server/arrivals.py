"""Replies handed over as they arrive, so the server decodes while other clients still train.

Flower's grids collect a round's replies into one list and return it when the last
has come (or the timeout has passed): the in-memory grid of a simulation looks for
replies every ``pull_interval`` (0.1 s by default), the deployment's gRPC grid
every 3 s. Until then the server does nothing, and afterwards it measures,
decodes and validates every reply one after the other while the clients do
nothing. :class:`ArrivingReplies` wraps any grid and makes ``send_and_receive``
push the messages at once and return an iterator that yields each reply as soon
as a pull finds it: the strategy's accept loop (:func:`server.replies.collect_replies`)
then decodes a reply while the rest of the round is still running. Which replies
are accepted, and the aggregate (computed once all are in, in partition order),
do not change.

What Flower's grid does not allow: waking on arrival. Its interface only offers
``pull_messages`` (a look at the link state, or one gRPC call to the SuperLink), so
arrivals are still found by looking, every :data:`SIMULATION_INTERVAL_S` in a
simulation and every :data:`DEPLOYMENT_INTERVAL_S` in a deployment, and not at
all while the server is busy with an earlier reply (it looks again as soon as it
is done).

An in-memory grid's messages reach their Ray workers pickled, so the wrapper first
drops from their arrays the chunk lists the byte measure left there, which would
otherwise travel as a second copy of every array's data
(:func:`common.wire.accounting.drop_chunk_lists`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.superlink.grid import InMemoryGrid

from common.wire.accounting import drop_chunk_lists

SIMULATION_INTERVAL_S = 0.005
"""Between looks at the simulation's in-memory link state: a query, well under 1% of a core."""

DEPLOYMENT_INTERVAL_S = 0.1
"""Between pulls from a SuperLink: one small gRPC call (Flower's own grid waits 3 s)."""


SIMULATION_GRIDS: tuple[type, ...] = (InMemoryGrid,)
"""Grids of Flower's simulation engine: replies looked for in memory, messages pickled to
Ray workers, nodes registered in partition order (server/nodes.py)."""


def simulated(grid: Grid) -> bool:
    """Whether ``grid`` is one of Flower's simulation engine (:data:`SIMULATION_GRIDS`)."""
    return isinstance(grid, SIMULATION_GRIDS)


def pull_interval(grid: Grid) -> float:
    """How long to wait between looks for replies on ``grid``."""
    return SIMULATION_INTERVAL_S if simulated(grid) else DEPLOYMENT_INTERVAL_S


class ArrivingReplies(Grid):
    """``grid``, with ``send_and_receive`` yielding the replies as they arrive.

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp; every other call goes to it unchanged.
    interval : float, optional
        Seconds between looks while no reply is waiting; :func:`pull_interval` by default.
    pickles : bool, optional
        Whether the messages reach their nodes pickled (Flower's simulation engine
        hands them to Ray workers): by default, whether ``grid`` is an in-memory grid.
    """

    def __init__(self, grid: Grid, interval: float | None = None, pickles: bool | None = None) -> None:
        self.grid = grid
        self.interval = pull_interval(grid) if interval is None else interval
        self.pickles = simulated(grid) if pickles is None else pickles

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:  # type: ignore[no-untyped-def]
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        if self.pickles:
            messages = list(messages)
            for message in messages:
                drop_chunk_lists(message)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Push ``messages`` now; the returned iterator yields each reply when a pull finds it.

        It ends when every message has its reply, or at the first pull after
        ``timeout`` seconds (counted from now, as Flower's grids do): a reply that
        arrived while the server was busy with an earlier one is still collected.
        """
        pending = set(self.push_messages(messages))
        del messages  # the messages' buffers are not kept for the round
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        return self._arrivals(pending, deadline)

    def _arrivals(self, pending: set[str], deadline: float) -> Iterator[Message]:
        while pending:
            last_look = time.monotonic() >= deadline
            replies = list(self.grid.pull_messages(pending))
            pending.difference_update(reply.metadata.reply_to_message_id for reply in replies)
            yield from replies
            if last_look:
                return
            if not replies:
                time.sleep(self.interval)
