"""pytest-benchmark timings: rnnfast against its NumPy reference and PyTorch.

    pytest bench/ --benchmark-only                 # all cases, grouped by cell/config/mode
    pytest bench/ --benchmark-only -k "lstm and small"
    pytest bench/ --benchmark-disable              # each case once, as a smoke test

These live outside tests/ (the project's testpaths), so `pytest` and `pytest tests` never collect
them. They skip when pytest-benchmark or rnnfast is missing, and the torch cases skip without torch.
The shapes, weights and peer code are those of bench/run.py; the full table comes from there.
"""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")
rf = pytest.importorskip("rnnfast")

pytestmark = pytest.mark.benchmark(min_rounds=3, max_time=0.5)


def _load_runner():
    """bench/run.py as a module, whatever pytest's import mode."""
    path = Path(__file__).with_name("run.py")
    spec = importlib.util.spec_from_file_location("rnnfast_bench_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


runner = _load_runner()

IMPLS = ("rnnfast", "reference", "torch")
SEQUENCE_CASES = [(cell, config) for cell in ("lstm", "gru") for config in ("small", "charrnn")]
STREAM_CASES = [(cell, "stream-256") for cell in ("lstm", "gru")]


@pytest.fixture(scope="module")
def peers():
    """impl name -> a builder of runnables; torch shares rnnfast's thread count."""
    _, reference = runner.import_rnnfast()
    if isinstance(reference, BaseException):
        raise reference
    return {
        "rnnfast": lambda: runner.ApiPeer("rnnfast", "rnnfast", rf),
        "reference": lambda: runner.ApiPeer("numpy", "numpy ref", reference),
        "torch": lambda: runner.TorchPeer(rf.get_num_threads()),
    }


def _bench(benchmark, peers, impl, cell_key, config_name, mode):
    if impl == "torch":
        pytest.importorskip("torch")
    cell, config = runner.CELLS[cell_key], runner.CONFIGS[config_name]
    workload = runner.make_workload(cell, config, mode, rf, seed=0)
    step = peers[impl]().build(workload).step
    step()  # warm-up: first-call allocations stay out of the timings
    time.sleep(0.2)  # let BLAS threads still spinning from the last case go to sleep
    benchmark.group = f"{cell_key} {config_name} {mode}"
    benchmark.extra_info["gflop_per_call"] = runner.mode_flops(cell, config, mode) / 1e9
    benchmark(step)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize(("cell", "config"), SEQUENCE_CASES)
def test_sequence(benchmark, peers, cell, config, mode, impl):
    _bench(benchmark, peers, impl, cell, config, mode)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("cell", "config"), STREAM_CASES)
def test_stream_step(benchmark, peers, cell, config, impl):
    _bench(benchmark, peers, impl, cell, config, "stream")
