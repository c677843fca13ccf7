"""Thread settings, concurrent calls from Python threads, and fork()/spawn children."""

import contextlib
import multiprocessing as mp
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rnnfast as rf


@contextlib.contextmanager
def expected_fork_warning():
    """Python >= 3.12 warns on fork() in a process with threads (OpenMP's here); forking
    is exactly what these tests check, so that one warning is expected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
        yield


@pytest.fixture(autouse=True)
def restore_threads():
    before = rf.get_num_threads()
    yield
    rf.set_num_threads(0)
    rf.set_num_threads(before)


def train_step(m, x, lengths=None):
    y, st = m.forward(x, lengths=lengths, training=True)
    m.zero_grad()
    dx, _ = m.backward(np.cos(y))
    return y, dx, {k: v.copy() for k, v in m.grads.items()}


def test_set_and_get_num_threads():
    default = rf.get_num_threads()
    assert default >= 1
    rf.set_num_threads(1)
    assert rf.get_num_threads() == 1
    rf.set_num_threads(3)
    assert rf.get_num_threads() == 3
    rf.set_num_threads(0)
    assert rf.get_num_threads() == default


@pytest.mark.parametrize("cls", [rf.LSTM, rf.GRU, rf.RNN])
def test_results_do_not_depend_on_thread_count(cls):
    # Sizes large enough that two threads are really used.
    m = cls(64, 96, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 48, 64)).astype(np.float32)
    lengths = np.random.default_rng(1).integers(1, 21, size=48)
    results = []
    for n in (1, 2):
        rf.set_num_threads(n)
        results.append(train_step(m, x, lengths))
    m2 = cls(64, 96, num_layers=2, bidirectional=True, seed=0, num_threads=1)
    rf.set_num_threads(2)
    results.append(train_step(m2, x, lengths))
    for other in results[1:]:
        for a, b in zip(results[0][:2], other[:2]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for k in results[0][2]:
            np.testing.assert_allclose(results[0][2][k], other[2][k], rtol=1e-4, atol=1e-5)


def test_concurrent_inference_from_python_threads():
    m = rf.LSTM(32, 64, num_layers=2)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((15, 8, 32)).astype(np.float32) for _ in range(8)]
    serial = [m(x)[0] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda x: m(x)[0], xs * 2))
            for g, s in zip(got, serial * 2):
                np.testing.assert_array_equal(g, s)


def test_load_state_dict_while_other_threads_infer():
    m = rf.GRU(16, 32)
    x = np.random.default_rng(3).standard_normal((10, 4, 16)).astype(np.float32)
    sd_a = m.state_dict()
    sd_b = {k: v * 0.5 for k, v in sd_a.items()}
    want = {}
    for name, sd in (("a", sd_a), ("b", sd_b)):
        m.load_state_dict(sd)
        want[name] = m(x)[0]
    stop = []

    def reader():
        seen = 0
        while not stop:
            y = m(x)[0]
            assert np.array_equal(y, want["a"]) or np.array_equal(y, want["b"])
            seen += 1
        return seen

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(reader) for _ in range(2)]
        for i in range(50):
            m.load_state_dict(sd_a if i % 2 else sd_b)
        stop.append(True)
        assert all(f.result() > 0 for f in futures)


def _child_work(conn):
    m, x = _child_model()
    y, dx, grads = train_step(m, x)
    conn.send((y, dx, grads["weight_hh_l0"], rf.get_num_threads()))
    conn.close()


def _child_model():
    m = rf.LSTM(48, 96, num_layers=2, seed=5)
    x = np.random.default_rng(4).standard_normal((12, 32, 48)).astype(np.float32)
    return m, x


@pytest.mark.skipif(sys.platform != "linux", reason="fork() semantics of Linux")
def test_forked_child_does_not_hang():
    # The parent starts OpenMP's thread pool first: GNU OpenMP would hang a child that
    # used it again, so a child runs single-threaded.
    rf.set_num_threads(2)
    m, x = _child_model()
    y, dx, grads = train_step(m, x)
    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    p = ctx.Process(target=_child_work, args=(child_conn,))
    with expected_fork_warning():
        p.start()
    assert parent_conn.poll(120), "forked child produced nothing (hung?)"
    cy, cdx, cg, _ = parent_conn.recv()
    p.join(60)
    assert p.exitcode == 0
    np.testing.assert_allclose(cy, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cdx, dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cg, grads["weight_hh_l0"], rtol=1e-4, atol=1e-4)


def test_raw_fork_child_runs():
    rf.set_num_threads(2)
    m, x = _child_model()
    want = m(x)[0]
    r, w = os.pipe()
    with expected_fork_warning():
        pid = os.fork()
    if pid == 0:  # child: must not hang, must compute the same numbers
        try:
            ok = np.allclose(m(x)[0], want, rtol=1e-5, atol=1e-6)
            os.write(w, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.read(r, 8) == b"ok" and status == 0


def test_spawned_child_with_omp_num_threads():
    ctx = mp.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe()
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        p = ctx.Process(target=_child_work, args=(child_conn,))
        p.start()
    finally:
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old
    assert parent_conn.poll(120), "spawned child produced nothing"
    cy, _, _, nthreads = parent_conn.recv()
    p.join(60)
    assert p.exitcode == 0 and nthreads == 1
    m, x = _child_model()
    np.testing.assert_allclose(cy, m(x)[0], rtol=1e-5, atol=1e-6)
