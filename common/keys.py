"""Names of the records, arrays and entries that travel, used on both sides."""

# Records of a message's RecordDict
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# Message types (category.action)
TRAIN = "train"
INITIAL_PRUNING = "train.initial_pruning"
EVALUATE = "evaluate"
DESCRIBE = "query.describe"

# Prefix of a method's own entries: in a task's config (RoundPlan.client_config)
# and in a training reply's metrics (TrainingHooks.report)
IP_MASK_VERSION = "ip-mask-version"  # the version a node stores its initial-pruning mask under
METHOD_PREFIX = "method."

# Metrics of replies
NUM_EXAMPLES = "num-examples"  # the aggregation weight
SAMPLES_PROCESSED = "samples-processed"
TRAIN_SIZE = "train-size"
TEST_SIZE = "test-size"
TRAIN_LABELS = "train-labels"  # samples per class of the node's training split
TEST_LABELS = "test-labels"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
PROFILE = "profile"  # a description's config entry: the device profile the node names
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
MASK_VERSION = "mask-version"
CLIENT_SECONDS = "client-seconds"
# A training reply's phase timings (server/phases.py): seconds, and Unix times of the node's clock
PHASE_PREPARE_S = "phase.prepare-s"  # parsing the task, this node's data, building the model
PHASE_DECODE_S = "phase.decode-s"
PHASE_TRAIN_S = "phase.train-s"
PHASE_ENCODE_S = "phase.encode-s"
PHASE_TRAIN_START = "phase.train-start"
PHASE_TRAIN_END = "phase.train-end"

# Node config (set per SuperNode with --node-config)
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_DATA_DIR = "data-dir"
NODE_PROFILE = "profile"  # optional: the node's device profile (common/profiles/, server/fleet.py)
NODE_DEVICE = "device"  # optional: the torch device this node trains on (common/device.py)
