"""Checks on every reply before the server uses it.

Nodes run on devices the server does not control, so a reply may be late, sent
twice, forged, truncated, oversized or numerically broken. Each check here raises
:class:`RejectedReply` with a short *kind* (counted and logged per round) and a
detail that names the offending value and what was allowed; the strategy drops
the reply and aggregates the rest.

=====================  ==========================================================
kind                   the reply ...
=====================  ==========================================================
``not-asked``          comes from a node that was not sent this round's message
``duplicate``          is a second reply from the same node in the same round
``wrong-round``        belongs to another round, message type or message
``oversized``          is larger than the largest legitimate reply of the layout
``missing``            lacks a record or a metric the protocol requires
``bad-metric``         carries a metric of the wrong type or out of range, or
                       statistics its pruning method refuses (negative importance)
``mask-version``       was computed under a stale or unknown mask version
``bad-payload``        has arrays that do not decode against the layout and mask
``non-finite``         carries NaN or Inf (values or an uploaded statistic)
``outlier``            moves the model by more than ``federation.outlier-factor``
                       times the model's norm (an update no training produces)
``replay``             carries the same arrays as that node's previous reply
=====================  ==========================================================

A ``bad-payload`` also covers values or importance written in another format than
the run's ``wire.values`` / ``wire.importance``, and an update where whole values
are expected (or the reverse). A reply for another round, type or message counts
once, as rejected: its node is not also counted as one that never answered.

Sample counts are bounded by what the round asked for: a node that ran E local
steps of batches of at most B samples processed between E and E * B samples, and
under dataset-size weighting its weight is at most the training-set size it
described when it joined. A node that lies consistently about its data-set size
is not caught by the latter (nothing the server holds contradicts it); the
default weighting, samples processed, does not depend on what a node claims.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from common import keys
from common.layout import ModelLayout
from common.wire import dense_bytes

from .phases import ClientPhases

HEADER_ALLOWANCE = 64 * 1024  # bytes for records' headers, metrics, configs and array headers
MAX_COUNT = 2**31 - 1  # the largest data-set size or sample count a node may report


class RejectedReply(ValueError):
    """A reply that cannot be used; ``kind`` classifies it, the message says why."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


def max_reply_bytes(layout: ModelLayout) -> int:
    """The largest reply a node may send for ``layout``, in measured bytes.

    A legitimate reply carries at most every float value, an importance value per
    float, the integer buffers and one mask bit per prunable weight, which is
    ``2 * dense + ceil(n_prunable / 8)`` bytes, plus a fixed allowance for headers,
    metrics and configs. Anything larger is refused before its values are decoded
    (the communication log has only read its section headers, and a mask, for the
    bound; the codec bounds both by the layout).
    """
    return 2 * dense_bytes(layout) + -(-layout.num_prunable // 8) + HEADER_ALLOWANCE


def from_superlink(reply: Message) -> bool:
    """Whether the SuperLink wrote ``reply`` itself, as an error on behalf of a node.

    Flower 1.41's SuperLink answers a message whose destination node stopped
    sending heartbeats (for 2 x its 30 s interval) with a "Node Unavailable" error
    reply of its own: its source is the SuperLink, not the node, and it never
    crossed the node's link.
    """
    return reply.metadata.src_node_id == SUPERLINK_NODE_ID and reply.has_error()


@dataclass
class Exchange:
    """The messages of one phase of one round, to match replies against.

    ``nodes`` maps each addressed node id to whatever the caller keeps for it;
    ``messages`` are the messages as sent (the grid sets their ids on sending).
    """

    server_round: int
    message_type: str
    nodes: Mapping[int, object]
    messages: list[Message]
    max_bytes: int

    def __post_init__(self) -> None:
        self.answered: set[int] = set()
        self.misdirected: set[int] = set()  # addressed nodes whose reply was for another round or type
        self._sent_ids: dict[int, set[str]] | None = None  # filled on the first reply: ids exist once sent

    def _sent(self) -> dict[int, set[str]]:
        if self._sent_ids is None:
            self._sent_ids = {}
            for message in self.messages:
                self._sent_ids.setdefault(message.metadata.dst_node_id, set()).add(
                    message.metadata.message_id
                )
        return self._sent_ids

    def _ids_sent_to(self, node_id: int) -> set[str]:
        return self._sent().get(node_id, set())

    def sender(self, reply: Message) -> int:
        """The node ``reply`` answers for: its source, or for an error the SuperLink
        wrote on behalf of an unavailable node (:func:`from_superlink`), the node
        the replied-to message went to."""
        if from_superlink(reply):
            for node_id, ids in self._sent().items():
                if reply.metadata.reply_to_message_id in ids:
                    return node_id
        return reply.metadata.src_node_id

    def accept_origin(self, reply: Message, measured_bytes: int) -> None:
        """Check who sent ``reply``, for which message, and its size; remember the sender."""
        node_id = self.sender(reply)
        if node_id not in self.nodes:
            raise RejectedReply("not-asked", f"node {node_id} was not sent a message this round")
        metadata = reply.metadata
        wrong = None
        if metadata.group_id != str(self.server_round):
            wrong = f"reply for round {metadata.group_id!r}, expected {self.server_round}"
        elif metadata.message_type != self.message_type:
            wrong = f"reply of type {metadata.message_type!r}, expected {self.message_type!r}"
        elif metadata.reply_to_message_id not in self._ids_sent_to(node_id):
            wrong = f"reply to message {metadata.reply_to_message_id!r}, not to this round's"
        if wrong is not None:
            self.misdirected.add(node_id)  # it answered, wrongly: counted once, as rejected
            raise RejectedReply("wrong-round", wrong)
        if node_id in self.answered:
            raise RejectedReply("duplicate", f"node {node_id} already replied in round {self.server_round}")
        self.answered.add(node_id)
        if measured_bytes > self.max_bytes:
            raise RejectedReply(
                "oversized", f"{measured_bytes} bytes; at most {self.max_bytes} for this model layout"
            )

    def missing(self) -> set[int]:
        """Nodes that were addressed and sent no reply at all (a misdirected one counts as a reply)."""
        return set(self.nodes) - self.answered - self.misdirected


def content_digest(record: ArrayRecord) -> bytes:
    """SHA-256 over a record's array names and Flower object ids, in name order.

    An ``Array``'s object id is the SHA-256 of its deflated header (dtype, shape,
    storage type and the ids of its chunks, each the SHA-256 of the chunk's bytes), so
    it names the array's content as a digest of the bytes would. The byte measurement
    (:func:`common.wire.accounting.measure_message`) computes and keeps those ids before
    a reply is decoded; hashing them costs microseconds where hashing a dense Conv-2
    reply's 26 MB again took 20 ms.
    """
    digest = hashlib.sha256()
    for name in sorted(record):
        for part in (name.encode(), record[name].object_id.encode()):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.digest()


class ReplayGuard:
    """The digest of each node's latest training arrays, to refuse a replay: O(nodes) memory.

    A reply whose arrays equal, byte for byte, those of the same node's previous
    reply is no new training: local SGD draws its batches from the round number and
    starts from the new model, so an honest node does not repeat itself.
    """

    def __init__(self) -> None:
        self.latest: dict[int, bytes] = {}

    def check(self, node_id: int, record: ArrayRecord) -> None:
        """Raise ``replay`` if ``record`` repeats ``node_id``'s previous one; remember it."""
        digest = content_digest(record)
        previous, self.latest[node_id] = self.latest.get(node_id), digest
        if previous == digest:
            raise RejectedReply(
                "replay",
                f"node {node_id} sent the same arrays as in its previous reply (SHA-256 {digest.hex()[:16]})",
            )


def bounded_update(values: np.ndarray, start: np.ndarray, model_norm: float, factor: float) -> float:
    """||values - start||_2, or ``outlier`` if it exceeds ``factor`` times the model's norm.

    Computed in float32 (a float64 copy of a dense Conv-2 reply costs more than the rest of
    this check): the norm decides a threshold, and a difference large enough to overflow
    float32 squares (norm above 1.8e19) is infinite here and rejected, as it must be.
    """
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(values - start))
    if norm > factor * model_norm:
        raise RejectedReply(
            "outlier",
            f"update norm {norm:.4g} is more than federation.outlier-factor = {factor:g} times "
            f"the model's norm {model_norm:.4g}",
        )
    return norm


def median_outliers(norms: Sequence[float], factor: float) -> list[bool]:
    """True for each update norm above ``factor`` times the median of ``norms`` (factor 0: none).

    The median of two norms is their mean, which neither exceeds twice, so with
    ``factor`` >= 2 at least three replies are needed for any to stand out.
    """
    if factor == 0 or not norms:
        return [False] * len(norms)
    median = float(np.median(norms))
    return [norm > factor * median for norm in norms]


# -- records and metrics -----------------------------------------------------------
def required_records(content: RecordDict, arrays: Collection[str], metrics: Collection[str]) -> None:
    """Raise ``missing`` unless ``content`` holds the named array and metric records."""
    for name in arrays:
        if name not in content.array_records:
            raise RejectedReply("missing", f"no array record {name!r}")
    for name in metrics:
        if name not in content.metric_records:
            raise RejectedReply("missing", f"no metric record {name!r}")


def int_metric(metrics: MetricRecord | Mapping[str, object], key: str, low: int, high: int) -> int:
    """The integer metric ``key``, required to lie in [low, high]."""
    if key not in metrics:
        raise RejectedReply("missing", f"no metric {key!r}")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RejectedReply("bad-metric", f"{key} = {value!r}; expected an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise RejectedReply("bad-metric", f"{key} = {value}; expected an integer in [{low}, {high}]")
    return value


def float_metric(
    metrics: MetricRecord | Mapping[str, object], key: str, low: float = -math.inf, high: float = math.inf
) -> float:
    """The finite number ``key``, required to lie in [low, high]."""
    if key not in metrics:
        raise RejectedReply("missing", f"no metric {key!r}")
    value = metrics[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedReply("bad-metric", f"{key} = {value!r}; expected a number in [{low}, {high}]")
    number = float(value)
    if not math.isfinite(number):
        raise RejectedReply("non-finite", f"{key} = {number}")
    if not low <= number <= high:
        raise RejectedReply("bad-metric", f"{key} = {number}; expected a number in [{low}, {high}]")
    return number


def mask_version(metrics: MetricRecord | Mapping[str, object], current: int) -> None:
    """Raise ``mask-version`` unless the reply was computed under the current mask."""
    version = int_metric(metrics, keys.MASK_VERSION, 0, MAX_COUNT)
    if version < current:
        raise RejectedReply("mask-version", f"stale mask version {version}; the current one is {current}")
    if version > current:
        raise RejectedReply("mask-version", f"unknown mask version {version}; the current one is {current}")


def finite_array(name: str, array: np.ndarray) -> None:
    """Raise ``non-finite`` if ``array`` holds NaN or Inf."""
    if not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise RejectedReply("non-finite", f"array {name!r} holds {bad} NaN or Inf entries")


# -- per message type ----------------------------------------------------------------
@dataclass(frozen=True)
class TrainMetrics:
    samples: int
    weight: float
    loss: float


def train_metrics(
    metrics: MetricRecord,
    *,
    local_steps: int,
    batch_size: int,
    weighting: str,
    train_size: int,
    current_mask_version: int,
) -> TrainMetrics:
    """Check a training reply's metrics against what the round asked for.

    samples processed lie in [E, E * B] (every step sees at least one sample and
    at most a batch); the FedAvg weight equals the samples processed, or under
    dataset-size weighting lies in [1, the node's described training-set size].
    """
    mask_version(metrics, current_mask_version)
    samples = int_metric(metrics, keys.SAMPLES_PROCESSED, local_steps, local_steps * batch_size)
    if weighting == "samples-processed":
        weight = float_metric(metrics, keys.NUM_EXAMPLES, samples, samples)
    else:
        weight = float_metric(metrics, keys.NUM_EXAMPLES, 1, max(train_size, 1))
    loss = float_metric(metrics, keys.TRAIN_LOSS, 0.0)
    return TrainMetrics(samples, weight, loss)


PHASE_KEYS = (
    keys.PHASE_PREPARE_S,
    keys.PHASE_DECODE_S,
    keys.PHASE_TRAIN_S,
    keys.PHASE_ENCODE_S,
    keys.PHASE_TRAIN_START,
    keys.PHASE_TRAIN_END,
)


def client_phases(metrics: MetricRecord) -> ClientPhases | None:
    """A training reply's phase timings, or None when it reports none (they are optional).

    Used for the report only, never for aggregation; a reply that reports some must
    report all: durations >= 0 and a training interval that does not end before it
    starts (``client-seconds``, the whole handler, then defaults to their sum).
    """
    if not any(key in metrics for key in PHASE_KEYS):
        return None
    prepare_s, decode_s, train_s, encode_s = (float_metric(metrics, key, 0.0) for key in PHASE_KEYS[:4])
    start = float_metric(metrics, keys.PHASE_TRAIN_START)
    end = float_metric(metrics, keys.PHASE_TRAIN_END, start)
    total = prepare_s + decode_s + train_s + encode_s
    if keys.CLIENT_SECONDS in metrics:
        total = float_metric(metrics, keys.CLIENT_SECONDS, 0.0)
    return ClientPhases(prepare_s, decode_s, train_s, encode_s, total, start, end)


@dataclass(frozen=True)
class EvaluateMetrics:
    samples: int
    loss: float
    accuracy: float


def evaluate_metrics(metrics: MetricRecord, *, test_size: int, current_mask_version: int) -> EvaluateMetrics:
    """Check an evaluation reply: at most the node's test-set size, loss >= 0, accuracy in [0, 1]."""
    mask_version(metrics, current_mask_version)
    samples = int_metric(metrics, keys.NUM_EXAMPLES, 0, test_size)
    loss = float_metric(metrics, keys.EVAL_LOSS, 0.0)
    accuracy = float_metric(metrics, keys.EVAL_ACCURACY, 0.0, 1.0)
    return EvaluateMetrics(samples, loss, accuracy)


@dataclass(frozen=True)
class Description:
    partition_id: int
    num_partitions: int
    train_size: int
    test_size: int
    train_labels: tuple[int, ...] = ()
    test_labels: tuple[int, ...] = ()


def label_counts(metrics: MetricRecord, key: str, total: int) -> tuple[int, ...]:
    """An optional label histogram: non-negative counts that add up to ``total``."""
    value = metrics.get(key, [])
    if not isinstance(value, list) or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in value
    ):
        raise RejectedReply("bad-metric", f"{key} = {value!r}; expected a list of counts >= 0")
    if value and sum(value) != total:
        raise RejectedReply("bad-metric", f"{key} adds up to {sum(value)}, not the reported size {total}")
    return tuple(value)


MAX_PROFILE_NAME = 200  # characters of a device profile name a node may report


def described_profile(content: RecordDict) -> str:
    """The device profile a node names in its description's config record ("" when none)."""
    if keys.CONFIG not in content.config_records:
        return ""
    value = content.config_records[keys.CONFIG].get(keys.PROFILE, "")
    if not isinstance(value, str) or len(value) > MAX_PROFILE_NAME:
        raise RejectedReply("bad-metric", f"'{keys.PROFILE}' = {value!r} must be a profile name")
    return value.strip()


def describe_metrics(metrics: MetricRecord) -> Description:
    """Check a node's self-description: a partition id below the partition count, sizes >= 0.

    A node without training data cannot take part, so its training-set size must be >= 1.
    """
    num_partitions = int_metric(metrics, keys.NUM_PARTITIONS, 1, MAX_COUNT)
    partition_id = int_metric(metrics, keys.PARTITION_ID, 0, num_partitions - 1)
    train_size = int_metric(metrics, keys.TRAIN_SIZE, 1, MAX_COUNT)
    test_size = int_metric(metrics, keys.TEST_SIZE, 0, MAX_COUNT)
    return Description(
        partition_id,
        num_partitions,
        train_size,
        test_size,
        label_counts(metrics, keys.TRAIN_LABELS, train_size),
        label_counts(metrics, keys.TEST_LABELS, test_size),
    )
