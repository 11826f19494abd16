"""``train.device``, ``simulation.client-gpus`` and the device a node trains on.

On a machine without CUDA (CI's) the tests check the CPU path and the refusals;
the tests marked ``gpu`` compare CUDA with the CPU and skip without CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from typer.testing import CliRunner

import simulations.runner
from client.app import DEVICE_ENV, node_device
from common.device import DEVICE_SPECS, check_device_spec, resolve_device
from common.layout import ModelLayout
from common.settings import ConfigError
from common.training import GradientStatistic, SgdSettings, evaluate, make_loss, train_locally
from simulations.cli import app
from simulations.runner import backend_config

from .conftest import TinyNet

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
without_cuda = pytest.mark.skipif(CUDA, reason="checks the refusals of a machine without CUDA")


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_every_documented_spelling_is_accepted(spec):
    assert check_device_spec(spec)


@pytest.mark.parametrize("spec", ["", "gpu", "CUDA", "cuda:", "cuda:-1", "cuda:0 ", "cpu,cuda"])
def test_other_spellings_are_refused_with_the_allowed_ones(spec):
    assert not check_device_spec(spec)
    with pytest.raises(ConfigError, match="one of " + ", ".join(DEVICE_SPECS)):
        resolve_device(spec)


def test_auto_is_cuda_where_there_is_one_and_the_cpu_otherwise():
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@without_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_it_names_the_key_and_the_remedy(spec):
    with pytest.raises(ConfigError) as raised:
        resolve_device(spec, "device", what="node config")
    message = str(raised.value)
    assert f"node config 'device' = '{spec}'" in message and "no CUDA device" in message
    assert "use auto or cpu" in message


def test_a_node_takes_its_node_config_first_then_the_environment(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert node_device(context({})) == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "nonsense")
    assert node_device(context({"device": "cpu"})) == torch.device("cpu")
    with pytest.raises(ConfigError, match=f"environment variable '{DEVICE_ENV}' = 'nonsense'"):
        node_device(context({}))
    monkeypatch.delenv(DEVICE_ENV)
    assert node_device(context({})) == resolve_device("auto")


@without_cuda
def test_gpus_per_client_on_a_machine_without_cuda_stop_the_command_with_one_line(monkeypatch):
    def started(*_args, **_kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr(simulations.runner, "simulate", started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(app, ["simulate", "--set", "simulation.client-gpus=0.25"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'simulation.client-gpus' = 0.25" in lines[0] and "no CUDA" in lines[0]


def test_the_backend_config_carries_gpus_and_the_cluster_address(monkeypatch):
    from common.config import SimulationSettings

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    plain = backend_config(SimulationSettings())
    assert plain["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert "address" not in plain["init_args"]  # type: ignore[operator]
    shared = backend_config(SimulationSettings(client_gpus=0.25, ray_address="127.0.0.1:6379"))
    assert shared["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert shared["init_args"]["address"] == "127.0.0.1:6379"  # type: ignore[index]
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6380")  # never contacted: only read
    assert backend_config(SimulationSettings())["init_args"]["address"] == "127.0.0.1:6380"  # type: ignore[index]


def test_a_view_on_the_cpu_is_itself_and_gives_the_same_batches():
    from common.data import ArrayDataset, train_view

    x = torch.arange(10 * 4, dtype=torch.float32).view(10, 1, 2, 2)
    data = ArrayDataset("t", x, torch.arange(10) % 3, x[:2], torch.arange(2), 3)
    view = train_view(data, np.array([7, 2, 5, 9]))
    assert view.on(torch.device("cpu")) is view


def _one_round(device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    torch.manual_seed(0)
    model = TinyNet().to(device)
    layout = ModelLayout.from_model(model)
    mask = layout.full_mask()
    mask[layout.prunable[0].slice][::3] = False
    generator = torch.Generator().manual_seed(1)
    batches = iter(
        [(torch.randn(8, 4, generator=generator), torch.randint(0, 2, (8,), generator=generator))] * 5
    )
    result = train_locally(
        model,
        layout,
        mask,
        batches,
        5,
        SgdSettings(0.1),
        make_loss("cross-entropy", 2),
        GradientStatistic.SUM,
    )
    floats, _ = layout.flatten(model.state_dict())
    assert result.statistic is not None
    return floats, result.statistic, result.mean_loss


@gpu
@needs_cuda
def test_a_round_on_cuda_matches_the_cpu_within_float32_rounding():
    cpu, cuda = _one_round(torch.device("cpu")), _one_round(torch.device("cuda"))
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=1e-3, atol=1e-5)
    assert np.array_equal(cuda[0] == 0, cpu[0] == 0)  # the mask is exact on either device


@gpu
@needs_cuda
def test_evaluation_on_cuda_counts_the_same_correct_answers():
    from common.data import ArrayDataset, test_view

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    data = ArrayDataset("t", x, torch.zeros(64, dtype=torch.long), x, torch.arange(64) % 2, 2)
    model = TinyNet()
    on_cpu = evaluate(model, test_view(data), make_loss("cross-entropy", 2))
    on_gpu = evaluate(
        model.to("cuda"), test_view(data).on(torch.device("cuda")), make_loss("cross-entropy", 2)
    )
    assert on_gpu.accuracy == on_cpu.accuracy and on_gpu.samples == on_cpu.samples


@without_cuda
def test_the_gpu_check_says_it_needs_cuda_and_exits_2(capsys):
    from simulations.check_gpu import main

    assert main(["--data-dir", "unused"]) == 2
    assert "gpu: no CUDA device visible" in capsys.readouterr().out


def test_cpu_threads_holds_a_count_for_a_block_and_restores_the_previous_one():
    from common.device import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), cpu_threads(1):
        raise RuntimeError("a failing block")
    assert torch.get_num_threads() == before
