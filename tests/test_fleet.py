"""Heterogeneous fleets: profile mixes, per-node profiles and the straggler's round time."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from client.app import app as client_app
from common.config import load_config
from common.cost_model import CostModel
from common.layout import ModelLayout
from common.models import build_model
from common.profile_mix import ProfileMix, ProfileMixError
from common.settings import ConfigError
from server.app import run_federation
from server.fleet import ClientTime, Fleet, RoundTime
from server.nodes import NodeInfo
from tests.inprocess_grid import InProcessGrid

PI, JETSON, SANDBOX = "raspberry-pi-4-class", "jetson-orin-nano", "x86-2core-sandbox"


def node(node_id: int, partition: int, profile: str = "", partitions: int = 3) -> NodeInfo:
    return NodeInfo(node_id, partition, partitions, train_size=10, test_size=0, profile=profile)


# -- the straggler -----------------------------------------------------------------------
def test_a_round_lasts_as_long_as_its_slowest_client_on_its_own_profile():
    """Three clients, two profiles, E = 2, 100 kept weights in the first layer (hand-computed).

    A: t0 0.1 s, 1e-3 s per weight, 1000 B/s; B: t0 0.2 s, 2e-3 s per weight, 500 B/s.
    client 0 (A, 1000 B): 2 (0.1 + 0.1) + 1000 / 1000 = 0.4 + 1.0 = 1.4 s
    client 1 (B, 1000 B): 2 (0.2 + 0.2) + 1000 / 500  = 0.8 + 2.0 = 2.8 s
    client 2 (A, 3000 B): 0.4 + 3000 / 1000                 = 3.4 s  <- the straggler
    mean 7.6 / 3 s, share 3.4 / (7.6 / 3) = 1.3421...
    """
    a = CostModel(2, 0.1, np.array([1e-3, 0.0]), bandwidth=1000.0, bytes_per_value=8.0)
    b = CostModel(2, 0.2, np.array([2e-3, 0.0]), bandwidth=500.0, bytes_per_value=8.0)
    kept = np.array([100, 0])
    clients = []
    for node_id, (cost, name, num_bytes) in enumerate([(a, "A", 1000), (b, "B", 1000), (a, "A", 3000)]):
        compute, transfer = cost.compute_time(kept), cost.transfer_time(num_bytes)
        clients.append(ClientTime(node_id, node_id, name, compute, transfer))
    timing = RoundTime(tuple(clients))
    assert [c.seconds for c in clients] == pytest.approx([1.4, 2.8, 3.4])
    assert timing.straggler is not None and timing.straggler.partition_id == 2
    assert timing.straggler.profile == "A"
    assert timing.seconds == pytest.approx(3.4)
    assert timing.straggler_share == pytest.approx(3.4 / (7.6 / 3))


def test_an_empty_round_has_no_straggler():
    timing = RoundTime(())
    assert timing.straggler is None and timing.seconds == 0.0 and math.isnan(timing.straggler_share)


def test_one_profile_gives_the_single_device_round_time():
    """compute (same for all) + the largest transfer, as fedprune recorded before fleets."""
    config = load_config(None, [f"cost.profile={PI}", "model.name=digits-cnn"])
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    fleet = Fleet(config, layout)
    kept = layout.kept_per_layer(layout.full_mask())
    clients = tuple(fleet.client_time(node(i, i), kept, b) for i, b in enumerate([5e5, 2e6, 1e6]))
    reference = fleet.reference
    expected = reference.compute_time(kept) + reference.transfer_time(2e6)
    assert RoundTime(clients).seconds == expected
    assert {c.profile for c in clients} == {PI}


# -- which profile a node runs on --------------------------------------------------------
def test_a_node_that_names_its_profile_keeps_it_over_the_mix():
    config = load_config(None, [f"simulation.profiles={PI},{PI},{PI}", "simulation.num-clients=3"])
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    fleet = Fleet(config, layout)
    assert fleet.profile_of(node(7, 1)) == PI
    assert fleet.profile_of(node(8, 1, profile=JETSON)) == JETSON
    assert fleet.cost_of(node(8, 1, profile=JETSON)).t0 == pytest.approx(fleet.costs[PI].t0 / 1.5)
    assert "neither a file nor a bundled profile" in (fleet.refusal("no-such-board", 0, 3) or "")
    assert fleet.refusal(JETSON, 0, 3) is None
    assert "3 profiles listed for 4 partitions" in (fleet.refusal("", 0, 4) or "")


def test_without_a_mix_every_node_uses_cost_profile():
    config = load_config(None, [])
    layout = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    assert Fleet(config, layout).profile_of(node(1, 2)) == SANDBOX


# -- the mix -----------------------------------------------------------------------------
def test_a_mix_gives_each_profile_its_share_by_largest_remainder():
    """0.7 / 0.3 of 10 -> 7 / 3; 0.5 / 0.25 / 0.25 of 7 -> 3.5, 1.75, 1.75 -> 3 + 1 + 1, then
    the two partitions left go to the largest remainders (0.75, 0.75 before 0.5): 3 / 2 / 2."""
    mix = ProfileMix.parse(f"{PI}:0.7, {JETSON}:0.3")
    assert mix.counts(10) == {PI: 7, JETSON: 3}
    assert Counter(mix.assign(10, seed=0)) == {PI: 7, JETSON: 3}
    three = ProfileMix.parse("a:0.5,b:0.25,c:0.25")
    assert three.counts(7) == {"a": 3, "b": 2, "c": 2}
    assert three.counts(1) == {"a": 1, "b": 0, "c": 0}


def test_the_assignment_is_a_function_of_the_seed():
    mix = ProfileMix.parse(f"{PI}:0.5,{JETSON}:0.5")
    first = mix.assign(50, seed=3)
    assert first == mix.assign(50, seed=3)
    assert Counter(first) == Counter(mix.assign(50, seed=4)) == {PI: 25, JETSON: 25}
    assert first != mix.assign(50, seed=4)
    assert ProfileMix.parse("a,b,a").assign(3, seed=9) == ("a", "b", "a")
    assert ProfileMix.parse("").assign(5, seed=0) == () and ProfileMix.parse(" ").empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:0.7,b:0.2", "sum to 0.9, not 1"),
        ("a:0.5,a:0.5", "more than once"),
        ("a:0.5,b", "mixes 'name:fraction' entries with bare names"),
        ("a:half,b:0.5", "'half' is not a fraction"),
        ("a:1.5", r"must lie in \(0, 1\]"),
        ("a:0,b:1", r"must lie in \(0, 1\]"),
        ("a,,b", "empty entry"),
        (":1", "no profile name"),
    ],
)
def test_a_bad_mix_says_what_is_wrong(text, message):
    with pytest.raises(ProfileMixError, match=message):
        ProfileMix.parse(text)


# -- the configuration -------------------------------------------------------------------
def test_simulation_profiles_are_validated_once_with_the_choices():
    with pytest.raises(ConfigError, match="simulation.profiles.*'raspberry-pi' is none.*did you mean"):
        load_config(None, ["simulation.profiles=raspberry-pi:0.5,jetson-orin-nano:0.5"])
    with pytest.raises(ConfigError, match=r"simulation.profiles.*jetson-orin-nano.*raspberry-pi-4-class"):
        load_config(None, ["simulation.profiles=pi4"])
    with pytest.raises(ConfigError, match="the fractions sum to 1.1"):
        load_config(None, [f"simulation.profiles={PI}:0.6,{JETSON}:0.5"])
    config = load_config(None, [f"simulation.profiles={PI},{JETSON}"])
    with pytest.raises(ConfigError, match="10 names .simulation.num-clients., not 2"):
        config.check_simulation()
    with pytest.raises(ConfigError, match="fleet.round-budget"):
        load_config(None, ["fleet.round-budget=-1"])
    mixed = load_config(None, [f"simulation.profiles={PI}:0.7,{JETSON}:0.3"])
    assert mixed.simulation.profile_mix().names() == [PI, JETSON]


def test_a_profile_without_the_model_stops_the_run():
    config = load_config(None, ["simulation.profiles=x86-2core-sandbox:1", "model.name=conv4"])
    layout = ModelLayout.from_model(build_model("conv4", 10, (1, 8, 8)))
    with pytest.raises(ConfigError, match="cost.profile.*no timing for model 'conv4'"):
        Fleet(config, layout)


def test_a_node_config_profile_travels_in_the_description(tmp_path, monkeypatch):
    """Partition 2's node names the Jetson profile in its node config; the others take the list's."""
    seen: dict[int, str] = {}
    original = Fleet.client_time

    def spy(self, node, kept, num_bytes):
        timing = original(self, node, kept, num_bytes)
        seen[timing.partition_id] = timing.profile
        return timing

    monkeypatch.setattr(Fleet, "client_time", spy)
    config = load_config(
        None,
        [
            f"output.dir={tmp_path}",
            "output.name=run",
            "simulation.num-clients=3",
            "federation.rounds=1",
            "pruning.method=none",
            f"simulation.profiles={PI},{PI},{PI}",
        ],
    )

    def node_config(i: int) -> dict:
        return {"partition-id": i, "num-partitions": 3, **({"profile": JETSON} if i == 2 else {})}

    run_federation(InProcessGrid(client_app, 3, node_config=node_config), config)
    assert seen == {0: PI, 1: PI, 2: JETSON}
