"""Benchmark: final accuracy under hostile clients, per attack and aggregation rule, in real simulations.

    python -m simulations.bench_robust                      # 10 clients on digits, 40 rounds
    python -m simulations.bench_robust --dataset mnist      # LeNet-5 on MNIST (needs the data)
    python -m simulations.bench_robust --rounds 5 --attacks sign-flip scaled --rules mean median

Each run is a Ray simulation of the default configuration (PruneFL, 10 clients)
with ``federation.aggregation`` set to the rule; the nodes of partitions 0, 1, ...
are hostile (:mod:`simulations.hostile`). For every rule, the honest run comes
first, then each attack with 1 and then 3 hostile clients (``--hostile``). It
prints, per (attack, rule, hostile count), the final accuracy, the drop against
the honest run of the same rule in points, and the replies the server rejected,
then one line for the default rule (``mean``) with 1 hostile client:

    robust: worst-drop=X.XX points (rule mean)

The target: no attack costs more than 2 points there. Every figure is measured
from the run's results folder (``--output``); nothing is modelled.

The server's initial pruning (PruneFL's, on the server) depends on neither the
attack nor the rule, so it runs once per process and its mask and weights are
reused by the later runs (:func:`reuse_initial_pruning`): the same model each
run would compute, without the minutes it takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.config import load_config
from server.results import read_rounds
from server.robust import RULES
from simulations.hostile import ATTACKS, HostileClientApp

DATASETS = {
    "digits": [],
    "mnist": ["data.dataset=mnist", "model.name=lenet5"],
}


@dataclass(frozen=True)
class Outcome:
    attack: str  # "honest" for the run without hostile clients
    rule: str
    hostile: int
    accuracy: float
    rejected: int


def reuse_initial_pruning() -> None:
    """Run the server-side initial pruning once in this process and adopt its result afterwards."""
    from server import initial_pruning

    compute = initial_pruning._on_server
    cache: dict[tuple, tuple] = {}

    def once(method, model, cost, task, spec, num_partitions):  # type: ignore[no-untyped-def]
        key = (method.name, spec, num_partitions, model.layout.fingerprint)
        if key not in cache:
            report = compute(method, model, cost, task, spec, num_partitions)
            cache[key] = (model.floats.copy(), model.mask.copy(), report)
        else:
            floats, mask, report = cache[key]
            model.floats = floats.copy()
            model.set_mask(mask.copy())
        return dataclasses.replace(report)

    initial_pruning._on_server = once


def run_one(attack: str, rule: str, hostile: int, args: argparse.Namespace, output: Path) -> Outcome:
    from simulations.runner import simulate

    name = f"{rule}-{attack}-{hostile}"
    overrides = [
        *DATASETS[args.dataset],
        f"federation.rounds={args.rounds}",
        f"federation.aggregation={rule}",
        "output.checkpoint-every=0",
        f"output.dir={output}",
        f"output.name={name}",
        *args.set,
    ]
    if args.data_dir:
        overrides.append(f"data.dir={args.data_dir}")
    config = load_config(None, overrides)
    config.check_simulation()
    client = HostileClientApp(attack if hostile else "sign-flip", frozenset(range(hostile)))
    summary = simulate(config, client=client)
    rows = read_rounds(Path(summary.results_dir))
    rejected = sum(int(r["rejected"]) for r in rows[1:])
    return Outcome(attack, rule, hostile, summary.final_accuracy, rejected)


def table(outcomes: list[Outcome]) -> tuple[str, dict[tuple[str, int], float]]:
    """The printed table, and the worst drop (points) per (rule, hostile count)."""
    honest = {o.rule: o.accuracy for o in outcomes if o.attack == "honest"}
    header = ("attack", "rule", "hostile", "accuracy", "honest", "drop", "rejected")
    lines = ["{:<16} {:<13} {:>7} {:>9} {:>7} {:>7} {:>8}".format(*header)]
    worst: dict[tuple[str, int], float] = {}
    for o in outcomes:
        base = honest.get(o.rule, float("nan"))
        drop = 100 * (base - o.accuracy)
        if o.attack != "honest":
            worst[(o.rule, o.hostile)] = max(worst.get((o.rule, o.hostile), -1e9), drop)
        lines.append(
            f"{o.attack:<16} {o.rule:<13} {o.hostile:>7} {o.accuracy:>9.4f} {base:>7.4f} "
            f"{drop if o.attack != 'honest' else 0.0:>7.2f} {o.rejected:>8}"
        )
    return "\n".join(lines), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default="", help="data folder (default: data.dir / $FEDPRUNE_DATA_DIR)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--hostile", nargs="+", type=int, default=[1, 3], help="hostile clients of 10")
    parser.add_argument("--output", default="", help="results folders go here (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], help="extra key=value, as for simulate")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    reuse_initial_pruning()
    output = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="bench-robust-"))
    outcomes: list[Outcome] = []
    for rule in args.rules:
        outcomes.append(run_one("honest", rule, 0, args, output))
        for hostile in args.hostile:
            for attack in args.attacks:
                outcomes.append(run_one(attack, rule, hostile, args, output))
                print(table(outcomes)[0].splitlines()[-1], flush=True)
    text, worst = table(outcomes)
    print(text)
    print(f"results: {output}")
    rule = "mean" if "mean" in args.rules else args.rules[0]
    if (rule, 1) in worst:
        print(f"robust: worst-drop={worst[(rule, 1)]:.2f} points (rule {rule})")


if __name__ == "__main__":
    main()
