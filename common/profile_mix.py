"""Which device profile each simulated partition runs on: ``simulation.profiles``.

A heterogeneous fleet (Raspberry-Pi-class and Jetson-class boards, say) is
simulated by giving every partition a device profile of :mod:`common.cost_model`.
The run-config key ``simulation.profiles`` is one string in one of two forms:

* a **mix**, ``"name:fraction,name:fraction,..."`` with fractions > 0 summing to 1:
  of N partitions, profile i gets n_i of them by the largest-remainder rule
  (Hamilton's apportionment): n_i = floor(f_i N), and the N - sum_i n_i partitions
  left go one each to the profiles with the largest remainders f_i N - n_i (ties:
  the profile listed first). The list of N names so formed is then shuffled by a
  permutation drawn from ``numpy.random.default_rng([seed, PROFILE_STREAM])``, so the
  assignment is a pure function of (mix, N, federation.seed): same seed, same
  partitions on the same devices; another seed, another draw with the same counts;
* a **list**, ``"name,name,..."`` (no fractions): the profile of partition 0, 1, ...,
  one per partition (its length must be the partition count).

``""`` means every node uses ``cost.profile``. A node that names its own profile
(``--node-config profile=<name>``, see :mod:`server.fleet`) keeps it whatever the
mix says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROFILE_STREAM = 17  # the random stream of the assignment, apart from sampling's (server/nodes.py)
FRACTION_TOLERANCE = 1e-6  # |sum of fractions - 1| allowed (decimal fractions do not add exactly)


class ProfileMixError(ValueError):
    """A ``simulation.profiles`` string that cannot be read; the message says why."""


@dataclass(frozen=True)
class ProfileMix:
    """A parsed ``simulation.profiles``: fractions per profile, or a profile per partition.

    Exactly one of ``fractions`` and ``per_partition`` is non-empty, or neither (the
    empty mix: every node on ``cost.profile``).
    """

    fractions: tuple[tuple[str, float], ...] = ()
    per_partition: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ProfileMix:
        """Read ``"a:0.7,b:0.3"`` (a mix), ``"a,b,b"`` (a list) or ``""`` (none)."""
        if not text.strip():
            return cls()
        entries = [entry.strip() for entry in text.split(",")]
        if any(not entry for entry in entries):
            raise ProfileMixError(f"{text!r} has an empty entry (a stray comma?)")
        with_fraction = [":" in entry for entry in entries]
        if all(with_fraction):
            return cls(fractions=tuple(_fraction_entry(entry) for entry in entries))._checked()
        if any(with_fraction):
            raise ProfileMixError(
                f"{text!r} mixes 'name:fraction' entries with bare names; give every entry a "
                "fraction (a mix) or none (one profile per partition)"
            )
        return cls(per_partition=tuple(entries))

    def _checked(self) -> ProfileMix:
        names = [name for name, _ in self.fractions]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ProfileMixError(f"profiles {repeated} are listed more than once; give each one fraction")
        total = math.fsum(fraction for _, fraction in self.fractions)
        if abs(total - 1.0) > FRACTION_TOLERANCE:
            raise ProfileMixError(f"the fractions sum to {total:.6g}, not 1")
        return self

    @property
    def empty(self) -> bool:
        return not self.fractions and not self.per_partition

    def names(self) -> list[str]:
        """The distinct profile names the mix uses, in the order first given."""
        listed = [name for name, _ in self.fractions] or list(self.per_partition)
        return list(dict.fromkeys(listed))

    def counts(self, num_partitions: int) -> dict[str, int]:
        """Partitions per profile of a mix, by the largest-remainder rule (see the module)."""
        shares = [fraction * num_partitions for _, fraction in self.fractions]
        counts = [math.floor(share) for share in shares]
        left = num_partitions - sum(counts)
        by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
        for i in by_remainder[:left]:
            counts[i] += 1
        return {name: count for (name, _), count in zip(self.fractions, counts, strict=True)}

    def assign(self, num_partitions: int, seed: int) -> tuple[str, ...]:
        """The profile of every partition, 0 .. num_partitions - 1 (empty for the empty mix)."""
        if self.per_partition:
            if len(self.per_partition) != num_partitions:
                raise ProfileMixError(
                    f"{len(self.per_partition)} profiles listed for {num_partitions} partitions; "
                    "list one per partition or give fractions"
                )
            return self.per_partition
        if not self.fractions:
            return ()
        ordered = [name for name, count in self.counts(num_partitions).items() for _ in range(count)]
        order = np.random.default_rng([seed, PROFILE_STREAM]).permutation(num_partitions)
        return tuple(ordered[i] for i in order)


def _fraction_entry(entry: str) -> tuple[str, float]:
    name, _, text = entry.rpartition(":")
    name = name.strip()
    try:
        fraction = float(text)
    except ValueError:
        raise ProfileMixError(f"entry {entry!r}: {text.strip()!r} is not a fraction") from None
    if not name:
        raise ProfileMixError(f"entry {entry!r} has no profile name")
    if not 0 < fraction <= 1 or not math.isfinite(fraction):
        raise ProfileMixError(f"entry {entry!r}: the fraction must lie in (0, 1]")
    return name, fraction
