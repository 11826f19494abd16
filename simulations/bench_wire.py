"""Benchmark of the wire format: bytes against the bound, speed, other encodings, lossy values.

Run from the repository root (``python -m simulations.bench_wire``; ``--help`` for
options). It prints, all measured on this machine:

1. i.i.d. masks over 1M weights: mask bytes / (n H(d) / 8) at each density, for
   the encoding chosen and for each candidate alone;
2. a whole Conv-2 message (6.6M parameters) at density 0.13: bytes by category
   against the bound, for each value format, with a magnitude mask of a briefly
   trained Conv-2 and with an i.i.d. mask;
3. encode and decode times of that message (median of several runs), and of
   their pieces (positions, values section, mask section, dense floats);
4. the same message side by side: this codec, Flower's default (np.save of the
   values plus a bool mask), int32 indices plus values, and the dense model;
5. PruneFL's importance upload at pruned positions in each format;
6. the accuracy effect of the value formats: a short digits simulation (Flower's
   simulation engine, PruneFL) per format, its final accuracy and bytes.

Conv-2 is trained for ``--train-steps`` SGD steps on MNIST (from the shared data
folder) so that the values are trained-like; without MNIST the initial weights are
used, and the output says so. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from common.layout import ModelLayout
from common.models import build_model
from common.wire import WireFormat, binary_entropy, mask_bound_bits, measure_message, payload_bound
from common.wire import masks as mask_codec
from common.wire.codec import ModelPayload, decode_mask, decode_payload, encode_payload
from common.wire.errors import zstd_compress
from common.wire.golomb import encode_gaps, golomb_parameter, positions_to_gaps
from common.wire.values import VALUE_FORMATS, encode_values, value_bits

DENSITIES = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
DENSITY = 0.13  # the Conv-2 message


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    print(f"\n## {title}\n", flush=True)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(_cell(c) for c in row) + " |", flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def median_ms(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall-clock and median CPU time (this process, all threads) of ``function``, in ms.

    On a shared machine the wall-clock time includes waiting for a core; the CPU
    time is what the work itself took.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def message_bytes(arrays: dict[str, Array]) -> int:
    """Bytes of a message carrying ``arrays`` only, as Flower serialises it."""
    message = Message(RecordDict({"arrays": ArrayRecord(arrays)}), dst_node_id=1, message_type="train")
    return measure_message(message).total


# -- 1. i.i.d. masks ----------------------------------------------------------------------------
def iid_masks(n: int, level: int, seed: int) -> None:
    side = int(round(n**0.5))
    layout = ModelLayout.from_model(nn.Linear(side, side, bias=False))
    n = layout.num_prunable
    rng = np.random.default_rng(seed)
    header = len(mask_codec.encode_mask(layout, layout.full_mask())[0])  # one constant tensor: no body
    rows = []
    for density in DENSITIES:
        bits = rng.random(n) < density
        d = float(bits.mean())
        bound = n * binary_entropy(d) / 8
        section, chosen = mask_codec.encode_mask(layout, layout.mask_from_prunable(bits), level=level)
        minority = bits if d <= 0.5 else ~bits
        golomb = len(
            encode_gaps(positions_to_gaps(np.flatnonzero(minority)), golomb_parameter(min(d, 1 - d)))
        )
        packed = np.packbits(bits).tobytes()
        rows.append(
            [
                density,
                binary_entropy(d),
                bound,
                len(section),
                (len(section) - header) / bound,
                mask_codec.ENCODING_NAMES[chosen[0].encoding],
                golomb / bound,
                len(zstd_compress(packed, level)) / bound if level else float("nan"),
                len(zstd_compress(packed, 19)) / bound,
                len(packed) / bound,
                n * 4 * d / bound,
            ]
        )
    print_table(
        f"i.i.d. masks over {n:,} weights (zstd level {level}; section header {header} bytes)",
        [
            "d",
            "H(d)",
            "n H(d)/8 B",
            "section B",
            "(section - header) / bound",
            "chosen",
            "golomb",
            f"zstd-{level}",
            "zstd-19",
            "bitmap",
            "int32 indices",
        ],
        rows,
    )


# -- Conv-2, trained briefly --------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path).read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def trained_conv2(data_dir: Path | None, steps: int, seed: int) -> tuple[nn.Module, str, list]:
    """Conv-2 after ``steps`` SGD steps on MNIST, the batches it saw, and what was done."""
    model = build_model("conv2", 62, (1, 28, 28), seed=seed)
    images_path = data_dir / "mnist" / "train-images-idx3-ubyte.gz" if data_dir else None
    if images_path is None or not images_path.is_file() or steps == 0:
        return model, "initial weights (no MNIST found or --train-steps 0): values are untrained", []
    images = torch.from_numpy(read_idx(images_path)[:20_000].astype(np.float32) / 255).unsqueeze(1)
    labels = torch.from_numpy(
        read_idx(data_dir / "mnist" / "train-labels-idx1-ubyte.gz")[:20_000].astype(np.int64)
    )
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = []
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(images), (32,), generator=generator)
        batches.append((images[idx], labels[idx]))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(images[-2000:]).argmax(1) == labels[-2000:]).float().mean().item()
    seconds = time.perf_counter() - start
    note = (
        f"Conv-2 trained {steps} SGD steps (batch 32, lr 0.05) on MNIST in {seconds:.0f} s, "
        f"accuracy {accuracy:.3f} on 2,000 of its training images"
    )
    return model, note, batches


def magnitude_mask(layout: ModelLayout, floats: np.ndarray, density: float) -> np.ndarray:
    """Keep the largest |w| over all prunable weights (one global threshold)."""
    prunable = layout.prunable_positions
    magnitudes = np.abs(floats[prunable])
    keep = int(round(density * len(prunable)))
    threshold = np.partition(magnitudes, len(prunable) - keep)[len(prunable) - keep]
    return layout.mask_from_prunable(magnitudes >= threshold)


def iid_mask(layout: ModelLayout, density: float, seed: int) -> np.ndarray:
    return layout.mask_from_prunable(np.random.default_rng(seed).random(layout.num_prunable) < density)


def encode_message(layout: ModelLayout, floats, ints, mask, fmt: WireFormat) -> ArrayRecord:
    positions = np.flatnonzero(mask)
    return encode_payload(ModelPayload(floats.take(positions), ints, mask=mask), layout, fmt, kept=positions)


def decode_message(layout: ModelLayout, record: ArrayRecord) -> np.ndarray:
    mask = decode_mask(record, layout)
    payload = decode_payload(record, layout, mask)
    floats = np.zeros(layout.num_floats, dtype=np.float32)
    floats[np.flatnonzero(mask)] = payload.values
    return floats


def conv2_messages(layout, floats, ints, masks: dict[str, np.ndarray], level: int) -> None:
    rows = []
    for mask_name, mask in masks.items():
        kept = int(np.count_nonzero(mask))
        mask_bits = mask_bound_bits(layout, mask)
        formats = [("float32", 0), ("float32", level), ("float16", level), ("bfloat16", level)]
        for fmt_name, fmt_level in formats:
            fmt = WireFormat(values=fmt_name, level=fmt_level)  # type: ignore[arg-type]
            record = encode_message(layout, floats, ints, mask, fmt)
            message = Message(RecordDict({"arrays": record}), dst_node_id=1, message_type="train")
            measured = measure_message(message)
            bound = payload_bound(layout, mask_bits, kept, value_bits(fmt.values))
            rows.append(
                [
                    mask_name,
                    fmt_name,
                    fmt_level,
                    measured.values,
                    measured.mask,
                    measured.other,
                    measured.total,
                    bound,
                    measured.total / bound,
                    measured.mask / (mask_bits / 8),
                    8 * measured.values / kept,
                ]
            )
    print_table(
        f"Conv-2 message at density {DENSITY} ({layout.num_floats:,} floats): measured bytes vs the bound",
        [
            "mask",
            "values",
            "zstd level",
            "values B",
            "mask B",
            "other B",
            "total B",
            "bound B",
            "total / bound",
            "mask / n H(d)/8",
            "bits per value",
        ],
        rows,
    )


def timings(layout, floats, ints, masks: dict[str, np.ndarray], level: int, repeats: int) -> None:
    rows = []
    for mask_name, mask in masks.items():
        for fmt_name in ("float32", "bfloat16"):
            fmt = WireFormat(values=fmt_name, level=level)  # type: ignore[arg-type]
            record = encode_message(layout, floats, ints, mask, fmt)
            decoded = decode_message(layout, record)
            if fmt_name == "float32":
                assert np.array_equal(decoded, np.where(mask, floats, np.float32(0)))
            encode = median_ms(lambda m=mask, f=fmt: encode_message(layout, floats, ints, m, f), repeats)
            decode = median_ms(lambda r=record: decode_message(layout, r), repeats)
            rows.append([mask_name, fmt_name, level, *encode, *decode])
    print_table(
        f"Conv-2 message: encode (floats + mask -> arrays) and decode (arrays -> floats), "
        f"median of {repeats} runs, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        ["mask", "values", "zstd level", "encode ms", "encode CPU ms", "decode ms", "decode CPU ms"],
        rows,
    )
    phase_timings(layout, floats, ints, masks["magnitude"], level, repeats)


def phase_timings(layout, floats, ints, mask: np.ndarray, level: int, repeats: int) -> None:
    """The pieces of :func:`encode_message` and :func:`decode_message`, float32 values."""
    fmt = WireFormat(level=level)
    positions = np.flatnonzero(mask)
    kept = floats.take(positions)
    record = encode_message(layout, floats, ints, mask, fmt)

    def scatter() -> None:
        dense = np.zeros(layout.num_floats, dtype=np.float32)
        dense[np.flatnonzero(mask)] = kept

    pieces = [
        ("encode", "positions of the kept weights (np.flatnonzero)", lambda: np.flatnonzero(mask)),
        ("encode", "kept values (take)", lambda: floats.take(positions)),
        ("encode", "values section (shuffle + zstd)", lambda: encode_values(kept, fmt.values, fmt.level)),
        ("encode", "mask section", lambda: mask_codec.encode_mask(layout, mask, level=level, kept=positions)),
        ("decode", "mask section", lambda: decode_mask(record, layout)),
        ("decode", "values section, checked", lambda: decode_payload(record, layout, mask)),
        ("decode", "dense floats (zeros, np.flatnonzero, scatter)", scatter),
    ]
    rows = [[side, name, *median_ms(function, repeats)] for side, name, function in pieces]
    print_table(
        f"Conv-2 message, magnitude mask, float32 values: the pieces of encode and decode "
        f"(median of {repeats} runs, load average {os.getloadavg()[0]:.1f})",
        ["side", "piece", "ms", "CPU ms"],
        rows,
    )


def side_by_side(layout, floats, ints, mask: np.ndarray, level: int) -> None:
    kept_positions = np.flatnonzero(mask)
    kept = floats.take(kept_positions)
    prunable_mask = layout.prunable_part(mask)
    bound = payload_bound(layout, mask_bound_bits(layout, mask), len(kept))
    candidates = {
        "this codec, float32": encode_message(layout, floats, ints, mask, WireFormat(level=level)),
        "this codec, float32, no zstd": encode_message(layout, floats, ints, mask, WireFormat(level=0)),
        "this codec, bfloat16": encode_message(
            layout, floats, ints, mask, WireFormat("bfloat16", level=level)
        ),
    }
    rows = [[name, message_bytes(dict(record.items()))] for name, record in candidates.items()]
    rows.append(
        [
            "Flower default: np.save values + bool mask",
            message_bytes({"values": Array(kept), "mask": Array(prunable_mask)}),
        ]
    )
    rows.append(
        [
            "int32 indices + float32 values",
            message_bytes({"values": Array(kept), "indices": Array(kept_positions.astype(np.int32))}),
        ]
    )
    rows.append(["dense float32 (np.save)", message_bytes({"floats": Array(floats)})])
    dense = rows[-1][1]
    for row in rows:
        row += [row[1] / bound, row[1] / dense]
    print_table(
        f"Side by side: the Conv-2 message at density {DENSITY} (bound {bound:,.0f} B with float32 values)",
        ["encoding", "bytes", "/ bound", "/ dense"],
        rows,
    )


def importance_upload(model: nn.Module, layout, floats, mask, batches: list, level: int) -> None:
    """PruneFL's statistic n (sum of gradients)^2 at pruned positions, in each format."""
    if not batches:
        print("\n(importance upload skipped: no training batches)")
        return
    masked = torch.from_numpy(np.where(mask, floats, np.float32(0)))
    state = layout.unflatten(masked.numpy(), np.zeros(layout.num_ints, np.int64))
    model.load_state_dict(state)
    total = np.zeros(layout.num_floats, dtype=np.float64)
    for images, labels in batches[-5:]:
        model.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        total += layout.gradient_vector(model)
    pruned = layout.pruned_positions(mask)
    statistic = (160 * total[pruned] ** 2).astype(np.float32)
    rows = []
    for fmt in ("float32", "bfloat16"):
        for fmt_level in (0, level, 3):
            section = encode_values(statistic, fmt, fmt_level)  # type: ignore[arg-type]
            rows.append([fmt, fmt_level, len(section), 8 * len(section) / len(statistic)])
    print_table(
        f"PruneFL importance upload: {len(statistic):,} values at pruned positions (5 steps of 32 samples)",
        ["format", "zstd level", "bytes", "bits per value"],
        rows,
    )


def accuracy_effect(rounds: int, num_clients: int, overrides: list[str]) -> None:
    from common.config import load_config
    from simulations.runner import simulate

    header = ["values", "final accuracy", "density", "bytes down", "bytes up", "total", "/ bound", "wall s"]
    extra = " + " + ", ".join(overrides) if overrides else ""
    title = (
        f"Accuracy effect of the value format: digits, PruneFL, {num_clients} clients, {rounds} rounds "
        f"(Flower simulation engine; default configuration{extra})"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt in VALUE_FORMATS:
            config = load_config(
                None,
                [
                    f"wire.values={fmt}",
                    f"federation.rounds={rounds}",
                    f"simulation.num-clients={num_clients}",
                    f"output.dir={folder}",
                    f"output.name={fmt}",
                    *overrides,
                ],
            )
            summary = simulate(config)
            rows.append(
                [
                    fmt,
                    summary.final_accuracy,
                    summary.final_density,
                    summary.bytes_down,
                    summary.bytes_up,
                    summary.bytes_total,
                    summary.bytes_total / summary.bound_bytes,
                    summary.wall_time_s,
                ]
            )
            print_table(title + f" [{len(rows)} of {len(VALUE_FORMATS)}]", header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = os.environ.get("FEDPRUNE_DATA_DIR") or str(
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
    parser.add_argument(
        "--data-dir", default=default_data, help="folder holding mnist/ (default: ../shared/data)"
    )
    parser.add_argument("--train-steps", type=int, default=100, help="SGD steps of Conv-2 on MNIST")
    parser.add_argument(
        "--level", type=int, default=WireFormat().level, help="zstd level (wire.compression-level)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure")
    parser.add_argument("--accuracy-rounds", type=int, default=20, help="rounds per digits run (0 = skip)")
    parser.add_argument("--accuracy-clients", type=int, default=10)
    parser.add_argument("--accuracy-set", action="append", default=[], help="extra key=value for those runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    torch.manual_seed(args.seed)

    iid_masks(1_000_000, args.level, args.seed)

    data_dir = Path(args.data_dir).resolve()
    model, note, batches = trained_conv2(data_dir if data_dir.is_dir() else None, args.train_steps, args.seed)
    print(f"\nValues: {note}.")
    layout = ModelLayout.from_model(model)
    floats, ints = layout.flatten(model.state_dict())
    masks = {
        "magnitude": magnitude_mask(layout, floats, DENSITY),
        "i.i.d.": iid_mask(layout, DENSITY, args.seed),
    }
    conv2_messages(layout, floats, ints, masks, args.level)
    timings(layout, floats, ints, masks, args.level, args.repeats)
    side_by_side(layout, floats, ints, masks["magnitude"], args.level)
    importance_upload(model, layout, floats, masks["magnitude"], batches, args.level)
    if args.accuracy_rounds:
        accuracy_effect(args.accuracy_rounds, args.accuracy_clients, args.accuracy_set)


if __name__ == "__main__":
    main()
