"""PruneFL's importance upload, exact against ``top``: bytes, and reconfigurations that agree.

Runs one real simulation (Flower's engine, :func:`simulations.runner.simulate`) with
the exact upload, and on the server (this process) replays every client's upload
through the ``top`` coding (:mod:`common.pruning.prunefl_top`) for each ``--variant``
g:f (``importance-top-growth`` : ``importance-top-factor``): the uploads are cut to
each layer's top ``min(p_l, ceil(f B))``, serialised, decoded and merged into a
shadow importance sum exactly as the server merges the exact ones (rebuilt kept
positions and bounded shares included). At every reconfiguration the greedy runs
on the exact sum (the run goes on with that mask) and on each shadow sum, with the
same weights, mask, cost model and dtp, and the two masks are compared.

Bytes are those of Flower's serialisation of the importance array alone (every
object of the ``Array`` deflated, as :mod:`common.wire.accounting` counts them); the
run's own accounting of the exact upload (``importance_up`` of ``rounds.csv``) is
printed beside it.

    python -m simulations.bench_importance                           # digits, the defaults
    python -m simulations.bench_importance --config prunefl-femnist \\
        --set federation.rounds=20 --set pruning.prunefl.reconfig-interval=5 --variant 0.5:2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from flwr.app import Array
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common.config import AppConfig, load_config
from common.cost_model import CostModel
from common.pruning.base import ClientReport, RoundUpdate
from common.pruning.prunefl import PruneFL
from common.pruning.prunefl_importance import ImportanceAccumulator
from common.pruning.prunefl_top import TopRule, addition_bound, keep_top, segment_plan
from common.pruning.reconfiguration import reconfigure_mask, removal_cap
from common.wire.codec import WireFormat, importance_array, importance_top_array
from common.wire.sparse import decode_sparse
from server.results import read_rounds
from simulations.presets import preset_path
from simulations.runner import simulate


def array_bytes(array: Array) -> int:
    """Bytes of ``array`` as Flower serialises it: every nested object deflated."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(array).values())


@dataclass(frozen=True)
class Variant:
    """One ``top`` setting: growth g and factor f of the bound."""

    growth: float
    factor: float
    values: Literal["bfloat16", "float32"] = "bfloat16"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``g:f`` or ``g:f:float32``."""
        growth, factor, *values = text.split(":")
        return cls(float(growth), float(factor), *values)  # type: ignore[arg-type]


@dataclass
class Shadow:
    """A variant's importance sum, the bytes its uploads took, and its reconfigurations."""

    variant: Variant
    importance: ImportanceAccumulator
    upload_bytes: int = 0
    sent_entries: int = 0
    reconfigurations: list[dict[str, object]] = field(default_factory=list)


@dataclass
class Replay:
    """What the patched PruneFL records during the run."""

    variants: list[Variant]
    fmt: WireFormat
    shadows: list[Shadow] = field(default_factory=list)
    exact_bytes: int = 0
    uploads: int = 0
    pruned_entries: int = 0

    def shadows_for(self, method: PruneFL) -> list[Shadow]:
        if not self.shadows:
            layout = method.env.layout
            self.shadows = [Shadow(v, ImportanceAccumulator(layout)) for v in self.variants]
        return self.shadows

    def rule(self, method: PruneFL, server_round: int, variant: Variant) -> TopRule:
        s = method.settings
        dtp = removal_cap(method.next_reconfiguration(server_round), s.max_removal, s.removal_half_life)
        max_kept = method._max_kept(method.env.layout) or 0
        return TopRule(dtp, variant.growth, variant.factor, max_kept, variant.values)

    def merge(self, method: PruneFL, update: RoundUpdate) -> None:
        """Code each upload both ways and merge the ``top`` ones into each shadow sum."""
        uploads = [r.upload for r in update.reports if r.upload is not None]
        self.uploads += len(uploads)
        self.pruned_entries += sum(len(u) for u in uploads)
        self.exact_bytes += sum(array_bytes(importance_array(u, self.fmt)) for u in uploads)
        env = method.env
        for shadow in self.shadows_for(method):
            plan = segment_plan(
                env.layout, update.mask, self.rule(method, update.server_round, shadow.variant)
            )
            reports: list[ClientReport] = []
            for report in update.reports:
                if report.upload is not None:
                    array = importance_top_array(keep_top(report.upload, plan), plan, self.fmt)
                    shadow.upload_bytes += array_bytes(array)
                    decoded = decode_sparse(array.data, plan, "replayed upload")
                    shadow.sent_entries += int(np.count_nonzero(decoded))
                    report = dataclasses.replace(report, upload=decoded)
                reports.append(report)
            shadow.importance.merge(
                dataclasses.replace(update, reports=reports),
                env.plain_sgd,
                env.aggregation != "mean",
                env.statistic_factor,
            )

    def compare(
        self, method: PruneFL, server_round: int, floats: np.ndarray, mask: np.ndarray, cost: CostModel
    ) -> list[np.ndarray]:
        """Each shadow's mask from its sum, with the run's weights, mask, cost model and dtp."""
        s, layout = method.settings, method.env.layout
        dtp = removal_cap(server_round, s.max_removal, s.removal_half_life)
        return [
            reconfigure_mask(
                floats,
                mask,
                shadow.importance.take(),
                layout,
                cost.coefficients(),
                cost.constant,
                dtp,
                method._max_kept(layout),
            )
            for shadow in self.shadows_for(method)
        ]

    def record(self, method: PruneFL, server_round: int, mask: np.ndarray, exact: np.ndarray, tops) -> None:
        layout = method.env.layout
        prunable = np.zeros(layout.num_floats, dtype=bool)
        prunable[layout.prunable_positions] = True
        added = int(np.count_nonzero(exact & ~mask & prunable))
        for shadow, top in zip(self.shadows_for(method), tops, strict=True):
            bound = addition_bound(
                layout.kept_per_layer(mask), self.rule(method, server_round, shadow.variant)
            )
            shadow.reconfigurations.append(
                {
                    "round": server_round,
                    "density_before": layout.density(mask),
                    "density_after": layout.density(exact),
                    "pruned_added": added,
                    "bound": bound,
                    "bound_held": added <= bound,
                    "identical": bool(np.array_equal(top, exact)),
                    "positions_differing": int(np.count_nonzero(top != exact)),
                }
            )


@contextlib.contextmanager
def replaying(replay: Replay) -> Iterator[None]:
    """Patch PruneFL's server hooks (in this process: the ServerApp's) to feed ``replay``."""
    merge, reconfigure = PruneFL.merge_clients, PruneFL.reconfigure

    def merge_clients(self: PruneFL, update: RoundUpdate) -> np.ndarray | None:
        replay.merge(self, update)
        return merge(self, update)

    def reconfigure_both(
        self: PruneFL, server_round: int, floats: np.ndarray, mask: np.ndarray, cost: CostModel
    ) -> np.ndarray | None:
        tops = (
            replay.compare(self, server_round, floats, mask, cost)
            if self.is_reconfiguration_round(server_round)
            else []
        )
        exact = reconfigure(self, server_round, floats, mask, cost)
        if exact is not None:
            replay.record(self, server_round, mask, exact, tops)
        return exact

    PruneFL.merge_clients, PruneFL.reconfigure = merge_clients, reconfigure_both  # type: ignore[method-assign]
    try:
        yield
    finally:
        PruneFL.merge_clients, PruneFL.reconfigure = merge, reconfigure  # type: ignore[method-assign]


def report(replay: Replay, accounted: int, config: AppConfig) -> dict[str, object]:
    """The figures, as a JSON-ready dict."""
    out: dict[str, object] = {
        "dataset": config.data.dataset,
        "model": config.model.name,
        "rounds": config.federation.rounds,
        "uploads": replay.uploads,
        "pruned_entries": replay.pruned_entries,
        "exact_bytes": replay.exact_bytes,
        "exact_bytes_accounted": accounted,
        "variants": [],
    }
    for shadow in replay.shadows:
        recs = shadow.reconfigurations
        out["variants"].append(  # type: ignore[union-attr]
            {
                "growth": shadow.variant.growth,
                "factor": shadow.variant.factor,
                "values": shadow.variant.values,
                "top_bytes": shadow.upload_bytes,
                "sent_entries": shadow.sent_entries,
                "bytes_ratio": shadow.upload_bytes / max(replay.exact_bytes, 1),
                "reconfigurations": len(recs),
                "identical": sum(bool(r["identical"]) for r in recs),
                "bound_held": sum(bool(r["bound_held"]) for r in recs),
                "per_reconfiguration": recs,
            }
        )
    return out


def print_report(figures: dict[str, object]) -> None:
    f = figures
    print(f"{f['dataset']} / {f['model']}, {f['rounds']} rounds: {f['uploads']} uploads, ", end="")
    print(f"{f['pruned_entries']:,} pruned-position entries in all")
    print(f"exact upload: {f['exact_bytes']:,} bytes (the run's accounting: {f['exact_bytes_accounted']:,})")
    for v in f["variants"]:  # type: ignore[attr-defined]
        share = 100 * v["bytes_ratio"]
        label = f"top g={v['growth']:g} f={v['factor']:g} {v['values']}"
        print(f"{label}: {v['top_bytes']:,} bytes ({share:.1f}% of exact), ", end="")
        print(f"{v['sent_entries']:,} entries sent; identical masks {v['identical']} / ", end="")
        print(f"{v['reconfigurations']} reconfigurations; bound held in {v['bound_held']}")
        for r in v["per_reconfiguration"]:
            outcome = "identical" if r["identical"] else f"differs at {r['positions_differing']} positions"
            print(
                f"  round {r['round']}: density {r['density_before']:.4f} -> {r['density_after']:.4f}, ",
                end="",
            )
            print(f"{r['pruned_added']} pruned re-added (B = {r['bound']}), {outcome}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a preset name or TOML file (default: the defaults)")
    parser.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
    parser.add_argument("--variant", action="append", default=[], help="growth:factor of top (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    variants = [Variant.parse(t) for t in args.variant] or [
        Variant(0.5, 2.0),
        Variant(0.5, 1.0),
        Variant(0.0, 1.0),
    ]
    config = load_config(preset_path(Path(args.config)) if args.config else None, args.set)
    if config.pruning.method != "prunefl" or config.method.importance_upload != "exact":  # type: ignore[attr-defined]
        print(
            "bench_importance replays the exact PruneFL upload: use pruning.method = prunefl, exact",
            file=sys.stderr,
        )
        return 2
    replay = Replay(variants, config.wire.format())
    with replaying(replay):
        summary = simulate(config, verbose=False)
    rows = read_rounds(Path(summary.results_dir))
    figures = report(replay, sum(int(r["importance_up"]) for r in rows), config)
    print_report(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
