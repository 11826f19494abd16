"""Comparing pruning methods under the same federated setting.

:func:`method_configs` builds one configuration per method from the same base
(data, partitions, model, rounds, seeds), each method with its own settings from
its preset ``simulations/<method>.toml`` (only its ``pruning.<method>.*`` table);
:func:`compare` runs a list of configurations one after the other and returns one
:class:`ComparisonRow` each; :func:`format_table` prints them side by side. Any
runner with the signature of :func:`simulations.runner.simulate` can be passed
(the tests pass an in-process one), so a larger benchmark can reuse all three.

FLOPs per client step are *counted* for the final mask (:mod:`common.flops`):
2 x 3 x forward MACs x batch size, zero weights free, equal to the physically
smaller model's count for channel masks.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

import numpy as np

from common.config import AppConfig, read_preset, with_method
from common.data import DATASETS
from common.flops import client_step_flops
from common.layout import ModelLayout
from common.models import build_model
from common.pruning import METHODS
from server.app import RunSummary
from simulations.presets import bundled_preset

NEEDS_SOURCE = ("rethinking",)  # methods that start from another run's results
COMPARISON_FILE = "comparison.csv"


@dataclass(frozen=True)
class ComparisonRow:
    method: str
    final_accuracy: float
    final_density: float
    bytes_total: int
    flops_per_step: float
    dense_flops_per_step: float
    wall_time_s: float
    results_dir: str


def default_methods() -> list[str]:
    """Every registered method that can start from nothing."""
    return [name for name in METHODS if name not in NEEDS_SOURCE]


def preset_method_keys(method: str) -> dict[str, object]:
    """The ``pruning.<method>.*`` keys of the bundled preset of ``method`` (none if it has none)."""
    preset = bundled_preset(method)
    if preset is None:
        return {}
    prefix = f"pruning.{method}."
    return {k: v for k, v in read_preset(preset).items() if k.startswith(prefix)}


def method_configs(
    base: dict[str, object], methods: Iterable[str], output_dir: Path, use_presets: bool = True
) -> list[AppConfig]:
    """One validated configuration per method, identical but for the method and its table."""
    configs = []
    for method in methods:
        flat = with_method(base, method)  # each method keeps only its own settings of the base
        if use_presets:
            flat.update({k: v for k, v in preset_method_keys(method).items() if k not in base})
        flat.update({"output.dir": str(output_dir), "output.name": method})
        configs.append(AppConfig.from_flat(flat))
    return configs


def final_step_flops(config: AppConfig, summary: RunSummary) -> tuple[float, float]:
    """Counted FLOPs of one client step under the run's final mask, and dense."""
    source = DATASETS[config.data.dataset]
    model = build_model(config.model.name, source.num_classes, source.input_shape)
    layout = ModelLayout.from_model(model)
    mask = layout.full_mask()
    with np.load(Path(summary.results_dir) / "mask.npz", allow_pickle=False) as masks:
        for t in layout.prunable:
            mask[t.slice] = masks[t.name].reshape(-1)
    shape = source.input_shape
    batch = config.train.batch_size
    flops = client_step_flops(config.model.name, source.num_classes, shape, layout, mask, batch)
    dense = client_step_flops(config.model.name, source.num_classes, shape, layout, layout.full_mask(), batch)
    return flops, dense


def compare(configs: list[AppConfig], run: Callable[[AppConfig], RunSummary]) -> list[ComparisonRow]:
    """Run every configuration with ``run`` and summarise each."""
    rows = []
    for config in configs:
        summary = run(config)
        flops, dense = final_step_flops(config, summary)
        rows.append(
            ComparisonRow(
                method=config.pruning.method,
                final_accuracy=summary.final_accuracy,
                final_density=summary.final_density,
                bytes_total=summary.bytes_total,
                flops_per_step=flops,
                dense_flops_per_step=dense,
                wall_time_s=summary.wall_time_s,
                results_dir=summary.results_dir,
            )
        )
    return rows


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_table(rows: list[ComparisonRow]) -> str:
    """The rows side by side: method, accuracy, density, bytes, FLOPs per client step."""
    header = ("method", "final accuracy", "final density", "total bytes", "FLOPs/client step", "of dense")
    # FLOPs are counted for the final mask; Gibbs and TGF compute densely while they search
    lines = [header]
    for r in rows:
        ratio = r.flops_per_step / r.dense_flops_per_step if r.dense_flops_per_step else math.nan
        lines.append(
            (
                r.method,
                _number(r.final_accuracy),
                _number(r.final_density),
                f"{r.bytes_total:,}",
                f"{r.flops_per_step:.4g}",
                _number(ratio, 3),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)
        ]
        text.append("  ".join(cells))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def write_csv(rows: list[ComparisonRow], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f.name for f in fields(ComparisonRow)])
        for row in rows:
            writer.writerow(list(asdict(row).values()))


def comparison_folder(parent: str) -> Path:
    return Path(parent).expanduser().resolve() / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
