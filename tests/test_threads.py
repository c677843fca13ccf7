"""Threads: results do not depend on the thread count, the thread settings behave, a model
may be called from several Python threads at once, and forked or spawned children work."""

import concurrent.futures
import contextlib
import multiprocessing
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import teams_of_up_to

import rnnfast as rf
from rnnfast import _core

KINDS = ["LSTM", "GRU", "RNN"]
TIMEOUT = 60
CPUS = len(os.sched_getaffinity(0))  # a team never has more threads than this

# The pool's worker threads are alive when these tests fork (that is the point: the parent
# has run a multi-threaded forward first). Python >= 3.12 sees them and warns that fork()
# in a multi-threaded process may deadlock the child; the library handles exactly that case
# (a forked child starts a pool of its own), which the tests check, with a timeout.
FORK_WARNING = (r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\) may "
                r"lead to deadlocks in the child:DeprecationWarning")


@pytest.fixture(autouse=True)
def restore_threads():
    before = rf.get_num_threads()
    yield
    rf.set_num_threads(0)
    if rf.get_num_threads() != before:  # the session had set one explicitly
        rf.set_num_threads(before)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def make(kind, I=64, H=256, **kwargs):
    kwargs.setdefault("seed", 0)
    return getattr(rf, kind)(I, H, **kwargs)


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def run_train(model, x, dy_seed=1, lengths=None):
    """Forward (training) and backward: y, final state, dx, dstate0 and the gradients."""
    y, st = model.forward(x, lengths=lengths, training=True)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(np.float32)
    model.zero_grad()
    dx, dst = model.backward(dy)
    grads = {k: v.copy() for k, v in model.grads.items()}
    return {"y": y, "state": flat(st), "dx": dx, "dstate": flat(dst), "grads": grads}


def assert_same(a, b, atol=1e-6, rtol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, dict):
            assert_same(va, vb, atol, rtol)
        elif isinstance(va, list):
            for p, q in zip(va, vb, strict=True):
                np.testing.assert_allclose(p, q, rtol=rtol, atol=atol, err_msg=key)
        else:
            np.testing.assert_allclose(va, vb, rtol=rtol, atol=atol, err_msg=key)


@contextlib.contextmanager
def probe_at(probe, value):
    """A test probe (_core._delay_workers, _delay_steps, _set_row_sweep_bytes) set to
    `value` for the block, then to 0 (off, or the default)."""
    probe(value)
    try:
        yield
    finally:
        probe(0)


def inputs(T=32, B=16, I=64, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


def delayed_runs(kind, x, H, probe, us, count, warm=0):
    """Training step and inference on 1 and 2 threads, the delay probe at `us` on 2 (after
    `warm` inference calls): {n: results}, {n: how far count() moved}."""
    results, moved = {}, {}
    for n in (1, 2):
        m = make(kind, I=x.shape[2], H=H, num_threads=n)
        before = count()
        with probe_at(probe, us if n == 2 else 0):
            for _ in range(warm):
                m(x)
            results[n] = run_train(m, x)
            results[n]["inference"], _ = m(x)
        moved[n] = count() - before
    return results, moved


# ---------------------------------------------------------------------------- settings


def test_get_set_num_threads():
    rf.set_num_threads(0)
    default = rf.get_num_threads()
    assert isinstance(default, int) and default >= 1
    for n in (1, 2, 3, 7, 1):
        rf.set_num_threads(n)
        assert rf.get_num_threads() == n
    rf.set_num_threads(0)
    assert rf.get_num_threads() == default
    rf.set_num_threads(2)
    with pytest.raises(ValueError, match="set_num_threads"):
        rf.set_num_threads(-1)
    assert rf.get_num_threads() == 2


def test_default_honours_omp_num_threads():
    code = ("import rnnfast as rf; a = rf.get_num_threads(); rf.set_num_threads(5); "
            "b = rf.get_num_threads(); rf.set_num_threads(0); print(a, b, rf.get_num_threads())")
    for omp in ("1", "3"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": omp})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [omp, "5", omp]


def test_barrier_probe():
    # the bench's hand-off probe: seconds per barrier of the call's threads, 0 on one
    assert _core._barrier_probe(200, 1) == 0.0
    assert 0 < _core._barrier_probe(200, 2) < 0.01
    with pytest.raises(ValueError, match="rounds"):
        _core._barrier_probe(0)


def runs(choices):
    """(value, length) of each run of equal choices, in order."""
    edges = np.flatnonzero(np.diff(choices)) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [len(choices)]))
    return [(int(choices[a]), int(b - a)) for a, b in zip(starts, ends)]


def test_stream_thread_choice_follows_the_faster():
    # A batch-1 stream on more than one thread probes its count (0) against one thread (1)
    # each cycle and runs the rest on the faster (cpp/threading.h, StepThreadChoice).
    n = 20000
    for count_us, one_us, faster in ((1.0, 2.0, 0), (2.0, 2.4, 0), (2.4, 2.0, 1)):
        got = _core._step_thread_choice(np.full(n, count_us * 1e-6), np.full(n, one_us * 1e-6))
        assert got.dtype == np.int8 and got.shape == (n,)
        parts = runs(got)
        # the first steps run on the count (a warm-up, then the probe's first block)
        assert parts[0][0] == 0 and parts[0][1] >= 4
        longest = max(length for value, length in parts if value == faster)
        assert longest >= 200  # the cycles' runs
        # the probes and warm-ups cost a few percent over the faster choice throughout
        took = np.where(got == 1, one_us, count_us).sum()
        assert took <= 1.05 * n * min(count_us, one_us)
    with pytest.raises(ValueError, match="one length"):
        _core._step_thread_choice(np.zeros(3), np.zeros(4))


def test_stream_thread_choice_not_misled_by_a_slow_start():
    # A worker that has idled is asleep (or its CPU is): the first steps on two threads run
    # slow for a while (on the Zen 4 VM 0.1-0.4 ms). The choice is made after that, so the
    # stream runs on its count, not on one thread for a long cycle.
    n = 8000
    count = np.full(n, 3e-6)
    count[:10] = 25e-6  # 250 us slow, then three times faster than one thread
    got = _core._step_thread_choice(count, np.full(n, 5e-6))
    assert np.count_nonzero(got[:10]) == 0  # the slow steps: the warm-up's
    assert np.count_nonzero(got) <= 8 * 2  # one thread only in probes (one or two cycles)
    # one thread twice as fast for good: the first probe's choice gives a short cycle
    # (the slow start above would look the same), the second a long one; each cycle on one
    # thread is followed by a warm-up on the count before the next probe
    got = _core._step_thread_choice(np.full(n, 10e-6), np.full(n, 5e-6))
    parts = runs(got)
    ones = [length for value, length in parts if value == 1]
    assert max(ones) >= 16 * 256 - 16  # the long cycle
    first_long = next(i for i, (v, length) in enumerate(parts) if v == 1 and length > 200)
    assert parts[first_long][1] < 300  # the first cycle on one thread: a short one
    warm = parts[first_long + 1]
    assert warm[0] == 0 and warm[1] == 32 + 4  # 32 count steps after a short cycle, a block
    # after the long cycle the worker has slept: count steps for 0.5 ms, then a probe block
    long_cycle = next(i for i, (v, length) in enumerate(parts) if v == 1 and length > 4000)
    warm = parts[long_cycle + 1]
    assert warm[0] == 0 and 50 + 4 <= warm[1] <= 51 + 4  # 0.5 ms of 10 us steps (rounding)


def test_call_thread_choice_probes_again_when_a_slow_spell_starts():
    # Sequence calls' choice (cycles of 1024, watched): two threads 1.67x faster than one,
    # so after the first probe the cycle is 16 x 1024 calls long. From call 3000 on, two
    # threads take 1.4x one thread's time (a slow spell of the second core). Watched, 8
    # calls over 1.5x the chosen arm's probe median end the cycle: a probe (blocks of 4,
    # the count's first), then one thread. A stream's choice (not watched) keeps the count
    # until its cycle ends.
    n = 8000
    count = np.full(n, 0.3e-3)
    count[3000:] = 0.7e-3
    one = np.full(n, 0.5e-3)
    watched = _core._step_thread_choice(count, one, cycle=1024, watch=True)
    plain = _core._step_thread_choice(count, one, cycle=1024, watch=False)
    np.testing.assert_array_equal(watched[:3008], plain[:3008])
    assert np.count_nonzero(plain[3000:]) == 0
    assert not watched[3008:3012].any() and watched[3012:3016].all()  # the probe's blocks
    # then one thread: a short cycle (1024 / 16), checked by a probe, then cycles of
    # 0.25 s (500 calls here), each followed by a probe (4 + 8 calls on the count)
    assert watched[3020:3068].all() and watched[3088:3580].all()
    assert 0.95 < np.mean(watched[3020:]) < 0.98
    took = np.where(watched[3000:] == 1, one[3000:], count[3000:]).sum()
    assert took <= 1.02 * one[3000:].sum()
    # A first probe misled (two threads slow for the first 30 calls only): one thread for
    # 1024 / 16 calls, not a whole cycle.
    count = np.full(n, 0.3e-3)
    count[:30] = 0.9e-3
    watched = _core._step_thread_choice(count, one, cycle=1024, watch=True)
    plain = _core._step_thread_choice(count, one, cycle=1024, watch=False)
    assert plain[16:1000].all()
    assert watched[16:64].all() and not watched[100:].any()
    # A spell that makes two threads 2x slower than one, then ends at call 3000: unwatched,
    # the second probe's choice of one thread (1.5x faster, twice) holds 16 cycles; watched,
    # cycles on one thread last 0.25 s, and the count is back within 500 calls.
    n = 20000
    count = np.full(n, 0.3e-3)
    count[:3000] = 1.0e-3
    one = np.full(n, 0.5e-3)
    watched = _core._step_thread_choice(count, one, cycle=1024, watch=True)
    plain = _core._step_thread_choice(count, one, cycle=1024, watch=False)
    assert plain[3000:17000].all()
    assert np.mean(watched[100:3000]) > 0.95 and not watched[3500:19000].any()
    # Noise alone (each call's time varying by up to 1.5x either way in 1 of 3 calls, the
    # count always faster) seldom ends a cycle: the probes cost under 1% over the count.
    rng = np.random.default_rng(0)
    count = 0.3e-3 * rng.lognormal(0, 0.4, 50000)
    one = 0.5e-3 * rng.lognormal(0, 0.4, 50000)
    got = _core._step_thread_choice(count, one, cycle=1024, watch=True)
    assert np.where(got == 1, one, count).sum() <= 1.01 * count.sum()
    with pytest.raises(ValueError, match="cycle"):
        _core._step_thread_choice(np.zeros(3), np.zeros(3), cycle=16)


def test_pool_gives_the_threads_asked_for():
    assert _core._team_threads(1) == 1
    for n in (2, 3, 8):
        assert _core._team_threads(n) == min(n, CPUS)
    # Python threads calling at once get teams of their own, workers added as needed, of
    # the CPUs the others leave (at least the caller)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(_core._team_threads, [3] * 64))
    assert all(1 <= n <= min(3, CPUS) for n in got)
    assert _core._team_threads(3) == min(3, CPUS)  # alone again: all of them


def test_pool_cpus_probe_sets_the_largest_team():
    with teams_of_up_to(8):
        for n in (3, 4, 8):
            assert _core._team_threads(n) == n
        assert _core._team_threads(16) == 8
    assert _core._team_threads(8) == min(8, CPUS)


# Teams of 3, 4 and 8 (more threads than this machine may have cores): every split of a
# step (by rows into n ranges, by panels with stealing, a batch-1 step's sized runs) gives
# the same bits as one thread, as on two. B = 1, 7, 11 and 33 give uneven ranges and short
# tiles; H = 200 gives steps worth 8 threads (rf_threads_for); lengths freeze rows; the
# reverse direction and a second layer come along. Rows and panels are forced as in
# test_row_split_steps_same_results.
@pytest.mark.parametrize("sweep", ["rows", "panels"])
def test_larger_teams_same_results(kind, sweep):
    with teams_of_up_to(8), probe_at(_core._set_row_sweep_bytes,
                                      4 << 20 if sweep == "rows" else 1):
        for B, H in ((1, 200), (7, 64), (11, 200), (33, 200)):
            x = inputs(12, B, I=24)
            lengths = np.maximum(1, 12 - 3 * (np.arange(B) % 5))
            for config in ({"num_layers": 2}, {"bidirectional": True}):
                results = {}
                for n in (1, 3, 4, 8):
                    m = make(kind, I=24, H=H, num_threads=n, **config)
                    results[n] = run_train(m, x, lengths=lengths)
                    results[n]["inference"], _ = m(x, lengths=lengths)
                for n in (3, 4, 8):
                    assert_same(results[1], results[n], atol=0, rtol=0)


def test_larger_teams_streams_same_results(kind):
    # Streams of batch 1 and 4 (runs sized by PanelSplit, the thread count chosen by
    # timing) and the plain call with T = 1 on teams of 3 and 8: the same bits as one
    # thread.
    with teams_of_up_to(8):
        for H, batch in ((128, 4), (256, 1), (512, 1)):
            x = inputs(24, batch, I=32)
            got = {}
            for n in (1, 3, 8):
                m = make(kind, I=32, H=H, num_threads=n)
                s = m.stream(batch_size=batch if batch > 1 else None, num_threads=n)
                steps = [s.step(x[t] if batch > 1 else x[t, 0]) for t in range(len(x))]
                ys, state = [], None
                for t in range(8):
                    y, state = m(x[t:t + 1], state)
                    ys.append(y)
                got[n] = {"stream": np.stack(steps), "call": np.concatenate(ys),
                          "state": flat(state)}
            for n in (3, 8):
                assert_same(got[1], got[n], atol=0, rtol=0)


def test_larger_teams_with_a_late_or_slow_thread_same_results(kind):
    # Teams of 4 with every worker 3 ms late to its job (its caller runs its share where
    # no barrier waits for it: a stream's step, rows split), or with thread 1 waiting 2 ms
    # before each of its steps (the others steal its panels, or help with its rows): the
    # same bits as one thread, and late shares and steals happened. (Helps need thread 1
    # to have started before the others finish their rows, which threads taking turns on
    # fewer cores do not promise: under ThreadSanitizer none came.)
    counts = {"late": _core._late_shares_run, "steals": _core._steals}
    before = {k: f() for k, f in counts.items()}
    with teams_of_up_to(4):
        for probe, us in ((_core._delay_workers, 3000), (_core._delay_steps, 2000)):
            for sweep in (4 << 20, 1):
                with probe_at(_core._set_row_sweep_bytes, sweep):
                    for B, H in ((1, 256), (16, 128), (33, 200)):
                        x = inputs(6, B, I=32)
                        results = {}
                        for n in (1, 4):
                            m = make(kind, I=32, H=H, num_threads=n)
                            with probe_at(probe, us if n > 1 else 0):
                                results[n] = run_train(m, x)
                                results[n]["inference"], _ = m(x)
                                s = m.stream(batch_size=B, num_threads=n)  # single steps
                                results[n]["stream"] = np.stack([s.step(x[t]) for t in range(4)])
                        assert_same(results[1], results[4], atol=0, rtol=0)
    for k, f in counts.items():
        assert f() > before[k], k


def test_not_a_forked_child():
    assert not _core.in_forked_child()


# ---------------------------------------------------------------------------- 1 vs 2 threads


@pytest.mark.parametrize("shape", [(32, 16), (8, 4), (1, 1)], ids=["many-rows", "few-rows",
                                                                   "one-row"])
def test_global_threads_same_results(kind, shape):
    T, B = shape
    x = inputs(T, B)
    lengths = np.maximum(1, T - np.arange(B) % T)
    results = {}
    for n in (1, 2):
        rf.set_num_threads(n)
        # A fresh model per count, so that dropout draws the same masks.
        m = make(kind, num_layers=2, bidirectional=True, dropout=0.3)
        results[n] = run_train(m, x, lengths=lengths)
        results[n]["inference"], _ = m(x, lengths=lengths)
        results[n]["unbatched"], _ = m(x[:, 0])
    assert_same(results[1], results[2])


@pytest.mark.parametrize("sweep", ["rows", "panels"])
@pytest.mark.parametrize("H", [128, 256])
@pytest.mark.parametrize("B", [7, 8, 13, 16, 32])
def test_row_split_steps_same_results(kind, B, H, sweep):
    # Two threads split a step's rows (each runs its rows through every step, no barrier
    # per step) where a step's weights are at most _row_sweep_bytes() (3/4 of one core's
    # L2), else its panels; the limit is set here so that both run on any machine ("rows":
    # 4 MiB, over every layer below; "panels": 1 byte). Forward and backward give the same
    # bits as one thread. Each thread's rows are tiled on their own: B = 7 splits 3 + 4 and
    # pads the first thread's tile, which must leave the second thread's rows alone (a
    # mutant that let it write them failed B = 7 for every cell); B = 32 splits 16 + 16
    # (AVX-512: tiles of 6 and 5 rows). Lengths freeze rows, so later stretches run fewer
    # rows; the reverse direction and a second layer (a wider input) come along.
    # The probe _row_sweeps counts the time loops split by rows: on two threads at least
    # 6 a model here (2 layers or directions; the training forward, the backward and
    # inference; a loop may run in stretches as rows end), or none. B = 7: the backward
    # splits rows (4 + 3) in each layer or direction, but where one tile holds all 7 rows
    # (GRU on AVX-512: 8- and 7-row tiles) the forward keeps to panels.
    x = inputs(20, B, I=32)
    lengths = np.maximum(1, 20 - 3 * (np.arange(B) % 5))
    with probe_at(_core._set_row_sweep_bytes, 4 << 20 if sweep == "rows" else 1):
        for config in ({"num_layers": 2}, {"bidirectional": True}):
            results, sweeps = {}, {}
            for n in (1, 2):
                m = make(kind, I=32, H=H, num_threads=n, **config)
                before = _core._row_sweeps()
                results[n] = run_train(m, x, lengths=lengths)
                results[n]["inference"], _ = m(x, lengths=lengths)
                sweeps[n] = _core._row_sweeps() - before
            assert_same(results[1], results[2], atol=0, rtol=0)
            assert sweeps[1] == 0
            if sweep == "panels":
                assert sweeps[2] == 0
            elif B >= 8:
                assert sweeps[2] >= 6
            else:
                assert sweeps[2] >= 2


@pytest.mark.skipif(CPUS < 2, reason="the split needs a team of two")
def test_uneven_row_split_where_the_extra_rows_are_cheap():
    # B = 11 gives one thread 6 rows and the other 5. An RNN with H = 128 still splits by
    # rows, since half a row of its step is cheaper than a barrier. An LSTM with H = 128 has
    # four times the work per row, so it splits by panels. Either way the bits match one
    # thread's. (This split used to go by panels on two threads and ran 2x slower a row than
    # B = 12 when the VM's barriers slowed.)
    x = inputs(20, 11, I=128)
    for kind, by_rows in (("RNN", True), ("LSTM", False)):
        outs, sweeps = {}, {}
        for n in (1, 2):
            m = make(kind, I=128, H=128, num_threads=n)
            before = _core._row_sweeps()
            outs[n] = m(x)[0]
            sweeps[n] = _core._row_sweeps() - before
        np.testing.assert_array_equal(outs[1], outs[2])
        assert sweeps[1] == 0
        assert (sweeps[2] > 0) == by_rows, kind


def _cache_from_os(level):
    """The OS's word on cpu0's level-2 or level-3 cache (sysfs, else sysconf; 0: unknown),
    read here apart from the library."""
    for leaf in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        read = lambda name: (leaf / name).read_text().strip()  # noqa: E731
        if read("level") == str(level) and read("type") != "Instruction":
            size = read("size")
            return int(size[:-1]) << {"K": 10, "M": 20}[size[-1].upper()] \
                if size[-1].isalpha() else int(size)
    name = f"SC_LEVEL{level}_CACHE_SIZE"
    if hasattr(os, "sysconf") and name in os.sysconf_names:
        return max(0, os.sysconf(name))
    return 0


def test_row_sweep_limit_is_three_quarters_of_the_l2():
    # An unknown L2 counts as 1 MiB, and it is held to 256 KiB-4 MiB.
    l2 = _cache_from_os(2)
    assert _core._l2_cache_bytes() == l2
    want = min(max(l2 or 1 << 20, 256 << 10), 4 << 20) // 4 * 3
    assert _core._row_sweep_bytes() == want
    with probe_at(_core._set_row_sweep_bytes, 12345):
        assert _core._row_sweep_bytes() == 12345
    assert _core._row_sweep_bytes() == want


def test_row_sweep_limit_grows_with_rows_a_thread():
    # Beyond 4 rows a thread, the limit is the base times rows / 4, at most 8 times and at
    # most a quarter of the L3; the base alone where the L3 is unknown.
    l3 = _cache_from_os(3)
    assert _core._l3_cache_bytes() == l3
    base = 300 << 10
    with probe_at(_core._set_row_sweep_bytes, base):
        for rows, times in ((1, 1), (4, 1), (6, 1.5), (16, 4), (32, 8), (200, 8)):
            want = base if times == 1 or not l3 else max(base, min(int(base * times), l3 // 4))
            assert _core._row_sweep_bytes_for(rows) == want, rows


@pytest.mark.skipif(CPUS < 2 or _core._l3_cache_bytes() < 4 << 20,
                    reason="needs a team of two and a known L3 of 4 MiB or more")
def test_more_rows_a_thread_split_larger_weights_by_rows(kind):
    # A base limit of a third of W_hh (H = 160): with 4 rows a thread (B = 8) the forward
    # and the backward split panels; with 16 (B = 32) the limit is 4 times the base, over
    # W_hh and the forward's [W_ih | W_hh] (I = 16), so both split rows. The bits match one
    # thread's either way.
    H = 160
    w_hh = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind] * H * H * 4
    with probe_at(_core._set_row_sweep_bytes, w_hh // 3):
        for B, by_rows in ((8, False), (32, True)):
            x = inputs(12, B, I=16)
            results, sweeps = {}, {}
            for n in (1, 2):
                m = make(kind, I=16, H=H, num_threads=n)
                before = _core._row_sweeps()
                results[n] = run_train(m, x)
                sweeps[n] = _core._row_sweeps() - before
            assert_same(results[1], results[2], atol=0, rtol=0)
            assert sweeps[1] == 0
            assert sweeps[2] >= 2 if by_rows else sweeps[2] == 0, B


@pytest.mark.skipif(CPUS < 2, reason="a late worker needs a team of two")
def test_late_workers_shares_run_by_their_callers(kind):
    # Regions whose threads never wait for each other (a single step; rows split with no
    # barrier per step) do not wait for a worker that has not taken its job: the caller
    # runs that share itself. With every worker 20 ms late, the results are the same bits
    # as on one thread and the callers ran the shares; regions with barriers (panels split
    # over a sequence) wait for the late workers and get the same bits too.
    x8 = inputs(20, 8, I=32)
    x1 = inputs(30, 1, I=32)
    want = {}
    for n in (1, 2):
        with probe_at(_core._delay_workers, 20000 if n == 2 else 0):
            small = make(kind, I=32, H=128, num_threads=n)  # rows split, no barrier
            wide = make(kind, I=32, H=256, num_threads=n)  # panels split, a barrier a step
            before = _core._late_shares_run()
            s = wide.stream(num_threads=n)
            got = {"rows": small(x8)[0], "panels": wide(x1)[0],
                   "stream": np.stack([s.step(x1[t, 0]) for t in range(5)])}
            late = _core._late_shares_run() - before
        if n == 1:
            want = got
            assert late == 0
        else:
            # the stream's first four steps (its first probe block runs on its count, the
            # next on one thread: cpp/engine.h), and the row-split call where the ISA's
            # tiles split B = 8 evenly (AVX-512's)
            assert late >= 4
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.skipif(CPUS < 2, reason="stealing needs a team of two")
def test_steps_stolen_from_a_late_worker_same_results(kind):
    # Over a sequence with panels split (a barrier a step), a thread done with its share of
    # a step takes the other's remaining tasks. A worker 20 ms late to each job leaves its
    # whole first step to the caller: a steal in each of the three time loops' jobs (the
    # training forward, the backward, inference), and the outputs, the training forward and
    # the gradients are the same bits as on one thread. (Panels are split here on any L2:
    # no row sweeps.) More steals come only from the threads' own imbalance: GRU had 3 in
    # one of 15 runs, which is why this asks for 3, not 4.
    with probe_at(_core._set_row_sweep_bytes, 1):
        results, steals = delayed_runs(kind, inputs(12, 8, I=32), 512, _core._delay_workers,
                                       20000, _core._steals)
    assert steals[1] == 0 and steals[2] >= 3
    assert_same(results[1], results[2], atol=0, rtol=0)


@pytest.mark.skipif(CPUS < 2, reason="stealing needs a team of two")
def test_every_phase_stolen_from_a_slow_thread_same_results(kind):
    # Thread 1 waits 5 ms before its share of each phase that threads steal from (well over
    # a share's work, under ThreadSanitizer too): the caller takes tasks from it in every
    # step of both forwards and in both phases of each backward step, T + T + 2T phases.
    T = 4
    with probe_at(_core._set_row_sweep_bytes, 1):
        results, steals = delayed_runs(kind, inputs(T, 8, I=32), 512, _core._delay_steps,
                                       5000, _core._steals)
    assert steals[1] == 0 and steals[2] >= 4 * T
    assert_same(results[1], results[2], atol=0, rtol=0)


@pytest.mark.parametrize("n,lag,rate", [
    (12, [0, 0], [1, 2]),             # a CPU half as fast: 8 and 4
    (16, [0, 3], [1, 1]),             # a worker 3 tasks late
    (64, [0, 5, 1], [1.0, 0.7, 2.5]),
    (40, [0, 2, 2, 0], [1, 1, 3, 1.5]),
])
def test_panel_split_runs_finish_together(n, lag, rate):
    # A batch-1 step's runs of panels (PanelSplit) converge to the sizes with which every
    # member, starting lag[i] after the call at rate[i] a task, finishes at the same time:
    # sum over i of (end - lag[i]) / rate[i] = n. Each run within a task of that.
    lag, rate = np.array(lag, float), np.array(rate, float)
    first = _core._panel_split(n, lag, rate, 0)
    np.testing.assert_array_equal(first, np.arange(len(lag) + 1) * n // len(lag))  # equal
    end = (n + np.sum(lag / rate)) / np.sum(1 / rate)
    want = np.concatenate([[0], np.cumsum((end - lag) / rate)])
    first = _core._panel_split(n, lag, rate, 200)
    assert first[0] == 0 and first[-1] == n and np.all(np.diff(first) >= 1)
    assert np.all(np.abs(first - want) <= 1), (first, want)
    # a member that would get nothing keeps one task (its rate stays measured), and the
    # others share the rest as if it were not there
    first = _core._panel_split(8, np.array([0.0, 100.0]), np.array([1.0, 1.0]), 200)
    np.testing.assert_array_equal(first, [0, 7, 8])
    first = _core._panel_split(30, np.array([0.0, 100.0, 4.0]), np.ones(3), 200)
    np.testing.assert_array_equal(first, [0, 17, 18, 30])  # 17 and 13 end together
    # fewer tasks than members: equal runs
    np.testing.assert_array_equal(_core._panel_split(3, np.zeros(4), np.ones(4), 50),
                                  [0, 0, 1, 2, 3])
    # timings no clock could give (members' clocks apart): a lag below 0, or a run that
    # ends after the call on its caller's clock; the runs stay equal
    equal = np.arange(len(lag) + 1) * n // len(lag)
    for skew in (-(lag + 1), np.full(len(lag), float(n))):
        skew[0] = 0  # the caller's own clock
        np.testing.assert_array_equal(_core._panel_split(n, lag, rate, 200, skew), equal)


@pytest.mark.skipif(CPUS < 2, reason="a late worker needs a team of two")
@pytest.mark.parametrize("batch", [1, 4])
def test_one_step_runs_move_to_the_caller_of_a_late_worker_same_results(kind, batch):
    # A single step on two threads (tasks split statically: batch 1, or weights too big for
    # a split by rows) sizes their runs by how soon each finished before. With the worker
    # 20 ms late to every job, its caller ran the worker's run too, after its own, so the
    # caller's run grows call after call; the outputs and the states stay the same bits as
    # on one thread.
    x = inputs(40, batch, I=32)
    got = {}
    for n in (1, 2):
        m = make(kind, I=32, H=256, num_threads=n)
        before = _core._splits()
        with probe_at(_core._delay_workers, 20000 if n == 2 else 0):
            ys, state = [], None
            for t in range(len(x)):  # the plain call, one step: always on the model's count
                y, state = m(x[t:t + 1], state)
                ys.append(y)
            got[n] = (np.concatenate(ys), flat(state))
        toward = _core._splits()[0] - before[0]
        assert toward == 0 if n == 1 else toward >= len(x) // 2
    np.testing.assert_array_equal(got[1][0], got[2][0])
    for a, b in zip(got[1][1], got[2][1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(CPUS < 2, reason="a slow thread needs a team of two")
def test_batch1_sequence_runs_move_off_a_slow_thread_same_results(kind):
    # A batch-1 sequence (panels split, a barrier a step, no stealing) sizes the threads'
    # runs by the time each spent in its last ones. Thread 1 waits 2 ms before each step of
    # its run (well over a step's work, under ThreadSanitizer too, where 300 us was not):
    # call after call the caller's run grows, and inference, the training forward and the
    # gradients are the same bits as on one thread.
    results, toward = delayed_runs(kind, inputs(6, 1, I=32), 256, _core._delay_steps, 2000,
                                   lambda: _core._splits()[0], warm=12)
    assert toward[1] == 0 and toward[2] >= 6
    assert_same(results[1], results[2], atol=0, rtol=0)


@pytest.mark.skipif(CPUS < 2, reason="helping needs a team of two")
def test_rows_of_a_slow_thread_helped_same_results(kind):
    # Rows split (small weights: each thread runs its rows through every step, no barrier),
    # a thread done with its rows helps the other with the rest of its steps: both take the
    # step's tasks and wait for its last. Thread 1 waits 300 us before each step it runs,
    # alone or helped: the other finishes first and helps, and takes every task of the
    # joint steps before thread 1 arrives. Inference, the training forward and the gradients
    # are the same bits as on one thread. (Which batches split by rows depends on the ISA's
    # tiles: B = 8 or 12 for each cell. RNN's steps at H = 128 are too short to share.)
    helps = 0
    H = 256 if kind == "RNN" else 128
    for batch in (8, 12):
        results, moved = delayed_runs(kind, inputs(12, batch, I=32), H, _core._delay_steps,
                                      300, _core._helps)
        assert moved[1] == 0
        helps += moved[2]
        assert_same(results[1], results[2], atol=0, rtol=0)
    assert helps >= 1


def test_small_calls_choose_one_thread_where_the_other_is_slow(kind):
    # Sequence calls of at most Engine::kChoiceFlops time one thread against the count now
    # and then, as streams do. Thread 1 waits 2 ms before each step it runs (well over a
    # step's work, under ThreadSanitizer too), so on two threads a call of 6 steps takes
    # over 12 ms: after the first probe (4 calls to warm up, then blocks of 4 on each
    # choice) the rest of the cycle runs on one thread, for inference, the training forward
    # and the backward alike, and every call gives one thread's bits. A call over the limit
    # runs on the count: within 12 calls its probe would have run 4 on one thread.
    x = inputs(6, 8, I=32)
    ref = make(kind, I=32, H=128, num_threads=1)  # steps worth two threads (rf_threads_for)
    want, want_train = ref(x)[0], run_train(ref, x)
    m = make(kind, I=32, H=128, num_threads=2)
    before = _core._calls_on_one_thread()
    with probe_at(_core._delay_steps, 2000):
        for _ in range(40):
            np.testing.assert_array_equal(m(x)[0], want)
        for _ in range(30):
            assert_same(run_train(m, x), want_train, atol=0, rtol=0)
    # inference 8 + 20 calls on one thread, the training forward and backward 8 + 10 each
    assert _core._calls_on_one_thread() - before >= 50
    big = make(kind, I=32, H=512, num_threads=2)  # 2 steps of 64 rows: over 50 MFLOP
    x = inputs(2, 64, I=32)
    before = _core._calls_on_one_thread()
    with probe_at(_core._delay_steps, 2000):
        for _ in range(12):
            big(x)
            run_train(big, x)
    assert _core._calls_on_one_thread() == before


def test_small_calls_probe_again_when_the_other_thread_turns_slow(kind):
    # The calls' choice is watched: where the count was chosen (cycles up to 16 x 1024
    # calls), thread 1 turning slow (2 ms a step) ends the cycle within 8 calls, and after
    # the probe the calls run on one thread, with one thread's bits.
    x = inputs(6, 8, I=32)
    want = make(kind, I=32, H=128, num_threads=1)(x)[0]
    m = make(kind, I=32, H=128, num_threads=2)
    for _ in range(100):
        m(x)
    before = _core._calls_on_one_thread()
    for _ in range(100):
        m(x)
    # where one thread won a probe here (a machine on which it is faster), the calls below
    # run on one thread anyway, and only the probe's 8 are certain
    count_chosen = _core._calls_on_one_thread() == before
    before = _core._calls_on_one_thread()
    with probe_at(_core._delay_steps, 2000):
        for _ in range(40):
            np.testing.assert_array_equal(m(x)[0], want)
    # 8 slow calls, then blocks of 4 alternating (8 on one thread), then the rest
    on_one = _core._calls_on_one_thread() - before
    assert on_one >= (8 + 12 if count_chosen else 8), on_one


def test_model_num_threads_same_results(kind):
    x = inputs()
    results = {}
    for n, other in ((1, 2), (2, 1)):
        rf.set_num_threads(other)  # the model's own setting wins over the global one
        m = make(kind, num_layers=2, num_threads=n)
        results[n] = run_train(m, x)
        results[n]["inference"], _ = m(x)
    assert_same(results[1], results[2])


def test_float64_threads_same_results(kind):
    x = inputs(16, 8).astype(np.float64)
    results = {}
    for n in (1, 2):
        m = make(kind, dtype=np.float64, num_threads=n)
        results[n] = run_train(m, x)
    assert_same(results[1], results[2], atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------- Python threads


def _calls(n_calls, seed=7):
    """Varied inference calls: shapes, states, lengths, unbatched."""
    rng = np.random.default_rng(seed)
    calls = []
    for i in range(n_calls):
        T, B = int(rng.integers(1, 12)), int(rng.integers(1, 9))
        if i % 5 == 4:
            calls.append((rng.standard_normal((T, 64)).astype(np.float32), None, None))
            continue
        x = rng.standard_normal((T, B, 64)).astype(np.float32)
        lengths = rng.integers(1, T + 1, size=B) if i % 3 == 0 else None
        calls.append((x, i % 2 == 0, lengths))
    return calls


def _infer(m, call):
    x, with_state, lengths = call
    state = None
    if with_state:
        h = np.full((m.num_layers * m.num_directions, x.shape[1], m.hidden_size), 0.1,
                    np.float32)
        state = (h, -h) if isinstance(m, rf.LSTM) else h
    y, st = m(x, state=state, lengths=lengths)
    return [y, *flat(st)]


@pytest.mark.parametrize("threads", ["global-1", "global-2", "model-2"])
def test_concurrent_inference_matches_serial(kind, threads):
    if threads.startswith("global"):
        rf.set_num_threads(int(threads[-1]))
        m = make(kind, H=128, num_layers=2, bidirectional=True)
    else:
        m = make(kind, H=128, num_layers=2, bidirectional=True, num_threads=2)
    calls = _calls(80)  # 4 threads x 20 calls
    serial = [_infer(m, c) for c in calls]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_infer, m, c) for c in calls]
        parallel = [f.result(timeout=TIMEOUT) for f in futures]
    for i, (a, b) in enumerate(zip(serial, parallel)):
        for p, q in zip(a, b, strict=True):
            np.testing.assert_array_equal(p, q, err_msg=f"call {i}")


def test_concurrent_training_of_separate_models(kind):
    xs = [inputs(12, 4, seed=s) for s in range(8)]
    models = [make(kind, H=64, num_layers=2, seed=s) for s in range(8)]
    serial = [run_train(m, x) for m, x in zip(models, xs)]
    models = [make(kind, H=64, num_layers=2, seed=s) for s in range(8)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(run_train, models, xs, timeout=TIMEOUT))
    for a, b in zip(serial, parallel):
        assert_same(a, b, atol=0, rtol=0)


def test_inference_while_loading_weights(kind):
    """A forward never sees half-loaded weights: each result is one of the two models'."""
    m = make(kind, H=128, seed=1)
    sd1 = m.state_dict()
    sd2 = make(kind, H=128, seed=2).state_dict()
    x = inputs(6, 4)
    m.load_state_dict(sd1)
    y1, _ = m(x)
    m.load_state_dict(sd2)
    y2, _ = m(x)
    stop = threading.Event()

    def loader():
        i = 0
        while not stop.is_set():
            m.load_state_dict(sd1 if i % 2 else sd2)
            i += 1
        return i

    def reader():
        seen = set()
        for _ in range(40):
            y, _ = m(x)
            if np.array_equal(y, y1):
                seen.add(1)
            elif np.array_equal(y, y2):
                seen.add(2)
            else:
                raise AssertionError("a forward saw a mix of old and new weights")
        return seen

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        load = pool.submit(loader)
        reads = [pool.submit(reader) for _ in range(2)]
        try:
            for r in reads:
                r.result(timeout=TIMEOUT)
        finally:
            stop.set()
        assert load.result(timeout=TIMEOUT) > 0


# ---------------------------------------------------------------------------- fork and spawn


def _child_work(spec):
    """What a child computes: forward + backward of each model, plus its thread view."""
    out = {"in_forked_child": bool(_core.in_forked_child()),
           "num_threads": rf.get_num_threads()}
    rf.set_num_threads(2)  # asking for threads in a child must not hang it
    out["team"] = _core._team_threads(2)  # and it gets them
    for kind_, sd in spec["state_dicts"].items():
        m = make(kind_, num_layers=2, num_threads=spec["model_threads"])
        m.load_state_dict(sd)
        out[kind_] = run_train(m, spec["x"])
        out[kind_]["inference"], _ = m(spec["x"])
    return out


def _pipe_child(conn, spec):
    try:
        conn.send(("ok", _child_work(spec)))
    except BaseException as exc:  # report, then fail the child
        conn.send(("error", repr(exc)))
        raise
    finally:
        conn.close()


def _parent_spec(model_threads=None):
    x = inputs(24, 8)
    spec = {"x": x, "state_dicts": {}, "model_threads": model_threads}
    expected = {}
    rf.set_num_threads(2)
    for kind_ in KINDS:
        m = make(kind_, num_layers=2, seed=11)
        # A multi-threaded forward and backward in the parent before any fork.
        expected[kind_] = run_train(m, x)
        expected[kind_]["inference"], _ = m(x)
        spec["state_dicts"][kind_] = m.state_dict()
    return spec, expected


def _run_in_process(ctx, spec):
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_pipe_child, args=(child_conn, spec))
    proc.start()
    child_conn.close()
    try:
        # Read before joining: a child blocked on a full pipe would never exit.
        assert parent_conn.poll(TIMEOUT), "the child sent nothing in time (hung?)"
        status, payload = parent_conn.recv()
        proc.join(TIMEOUT)
        assert not proc.is_alive(), "the child did not exit in time"
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        parent_conn.close()
    assert status == "ok", payload
    assert proc.exitcode == 0
    return payload


def _check_child(got, expected):
    for kind_ in KINDS:
        assert_same(got[kind_], expected[kind_])


@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.parametrize("model_threads", [None, 2])
def test_fork_context_child_after_multithreaded_parent(model_threads):
    spec, expected = _parent_spec(model_threads)
    got = _run_in_process(multiprocessing.get_context("fork"), spec)
    assert got["in_forked_child"]
    assert got["num_threads"] == 2 and got["team"] == min(2, CPUS)  # the parent's setting, honoured
    _check_child(got, expected)
    # The parent still runs multi-threaded and gets the same results afterwards.
    m = make("LSTM", num_layers=2, seed=11)
    again = run_train(m, spec["x"])
    again["inference"], _ = m(spec["x"])
    assert_same(again, expected["LSTM"])


@pytest.mark.filterwarnings(FORK_WARNING)
def test_os_fork_child_after_multithreaded_parent(tmp_path):
    spec, expected = _parent_spec()
    out_file = tmp_path / "child.pkl"
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            result = _child_work(spec)
            with open(out_file, "wb") as f:
                pickle.dump(result, f)
            code = 0
        except BaseException:
            pass
        finally:
            os._exit(code)
    deadline = time.monotonic() + TIMEOUT
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(status) == 0
    with open(out_file, "rb") as f:
        got = pickle.load(f)
    assert got["in_forked_child"]
    assert got["num_threads"] == 2 and got["team"] == min(2, CPUS)
    _check_child(got, expected)


def test_spawn_context_child(monkeypatch):
    spec, expected = _parent_spec()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    got = _run_in_process(multiprocessing.get_context("spawn"), spec)
    assert not got["in_forked_child"]
    assert got["num_threads"] == 1 and got["team"] == min(2, CPUS)  # OMP_NUM_THREADS, then set to 2
    _check_child(got, expected)


def test_concurrent_calls_share_the_process_thread_budget():
    """No oversubscription: calls running at once from several Python threads divide the
    process-wide thread count; a model's own num_threads is honoured as given."""
    from rnnfast import _core

    rf.set_num_threads(4)
    assert _core._thread_budget_probe(0, 0.0) == 4

    def run(requested):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            barrier = threading.Barrier(4)

            def one(_):
                barrier.wait()
                return _core._thread_budget_probe(requested, 0.3)

            return list(pool.map(one, range(4)))

    shared = run(0)
    assert sum(shared) <= 4 + 3, shared  # the first caller may hold 4 before others arrive
    assert shared.count(1) >= 3, shared
    assert run(2) == [2, 2, 2, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="reads /proc; needs two CPUs")
def test_workers_keep_the_process_cpu_mask():
    """A worker created or woken on its caller's CPU moves itself by barring that CPU for a
    moment: afterwards every thread may again run on every CPU the process may (the mask is
    restored, not left narrowed), and 2-thread results stay those of one thread. Workers
    are created at the first call and woken after each pause longer than their 20 ms of
    spinning and yielding."""
    code = """
import os, time, numpy as np, rnnfast as rf
m1, m2 = rf.GRU(16, 64, num_threads=1), rf.GRU(16, 64, num_threads=2)
m2.load_state_dict(m1.state_dict())
x = np.random.default_rng(0).standard_normal((20, 8, 16)).astype(np.float32)
want = m1(x)[0]
for _ in range(15):
    assert np.array_equal(m2(x)[0], want)
    time.sleep(0.025)
mask = lambda path: [l for l in open(path) if l.startswith("Cpus_allowed_list")][0]
tasks = os.listdir("/proc/self/task")
assert len(tasks) >= 2, tasks
for t in tasks:
    assert mask(f"/proc/self/task/{t}/status") == mask("/proc/self/status"), t
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
