"""bench_sample's sampler and its counts, by hand."""

import threading
import time

from simulations.bench_sample import Sampler, busiest_thread, inclusive_counts, round_start

SAMPLES = [
    (0.0, "server", ("main", "round", "decode")),
    (0.1, "server", ("main", "round", "round", "measure")),  # recursion: counted once
    (0.2, "server", ("main", "wait")),
    (0.3, "ray", ("loop", "round")),
]


def test_inclusive_counts_by_hand():
    total, counts = inclusive_counts(SAMPLES, "server")
    assert total == 3
    assert counts == {"main": 3, "round": 2, "decode": 1, "measure": 1, "wait": 1}
    assert busiest_thread(SAMPLES, "round") == "server"
    assert busiest_thread(SAMPLES, "nowhere") == ""


def test_round_start_from_rounds_csv(tmp_path):
    (tmp_path / "rounds.csv").write_text("round,elapsed_s\n0,1.5\n1,4.0\n2,6.5\n")
    assert round_start(tmp_path, 2) == 4.0
    assert round_start(tmp_path, 1) == 1.5
    assert round_start(tmp_path, 9) is None


def busy_for(sampler: Sampler, seconds: float) -> None:
    """Stay busy for ``seconds`` and until the sampler has caught this thread (60 s at most:
    on a loaded machine the sampler's thread may not run for a while)."""
    start = time.perf_counter()

    def caught() -> bool:
        return any(name == "worker" for _, name, _ in sampler.samples)

    while time.perf_counter() < start + seconds or not caught():
        if time.perf_counter() > start + 60:
            break


def test_the_sampler_sees_another_threads_stack():
    with Sampler(0.01) as sampler:
        worker = threading.Thread(target=busy_for, args=(sampler, 0.3), name="worker")
        worker.start()
        worker.join()
    total, counts = inclusive_counts(sampler.samples, "worker")
    assert total > 0
    assert any(frame.endswith("test_bench_sample.py:busy_for") for frame in counts)
    assert all(name != "sampler" for _, name, _ in sampler.samples)
