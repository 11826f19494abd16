"""A Grid that delivers messages to a ClientApp in this process, through the wire format.

Every message and reply is deflated into Flower's content-addressed objects and
inflated back, as the SuperLink would store and forward it, so tests see exactly
what a real node would. Used to run whole strategies in seconds without Ray.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 7
SERVER_NODE_ID = 1


def through_wire(message: Message) -> Message:
    """A copy of ``message`` rebuilt from its serialised objects."""
    if not message.has_content():
        return message
    content = message.content
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    rebuilt = inflate_object_from_contents(content.object_id, contents)
    assert isinstance(rebuilt, RecordDict)
    return Message(content=rebuilt, metadata=copy.deepcopy(message.metadata))


class InProcessGrid(Grid):
    """Nodes ``partition id + 100``; each has its own persistent Context."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        node_config: Callable[[int], dict] | None = None,
        drop: Callable[[Message], bool] | None = None,
    ) -> None:
        TaskIdentity.run_id = RUN_ID
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 1
        self.client_app = client_app
        self.drop = drop or (lambda _m: False)
        self.contexts = {
            100 + i: Context(
                run_id=RUN_ID,
                node_id=100 + i,
                node_config=(
                    node_config(i) if node_config else {"partition-id": i, "num-partitions": num_nodes}
                ),
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.outbox: list[Message] = []  # replies pushed and not yet pulled
        self._run = Run.create_empty(RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver each message now and return the replies (tests override this to forge them)."""
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self.sent.append(message)
            node_id = message.metadata.dst_node_id
            if node_id not in self.contexts or self.drop(message):
                continue
            reply = self.client_app(through_wire(message), self.contexts[node_id])
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            reply = through_wire(reply)
            self.received.append(reply)
            replies.append(reply)
        return replies

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver ``messages`` through :meth:`send_and_receive`; the replies wait to be pulled.

        Delivery is synchronous, so every reply that will ever come is waiting when
        this returns: a message without one (dropped, or answered by a forged reply)
        is answered by nothing, and a caller waits for it until its timeout.
        """
        messages = list(messages)
        self.outbox.extend(self.send_and_receive(messages))
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Every waiting reply, whatever it claims to answer (a forged one may claim anything)."""
        replies, self.outbox = self.outbox, []
        return replies
