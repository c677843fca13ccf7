"""The C++ engine against the NumPy reference: forward, dx, dstate0 and every parameter
gradient, over random shapes and every option, on every kernel build."""

import itertools
import os

import numpy as np
import pytest
from conftest import (assert_activation_within, flat_state, make_pair, state_like,
                      teams_of_up_to)

import rnnfast as rf
from rnnfast import _core

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def run_both(mode, T, B, I, H, L=1, bidirectional=False, bias=True, batch_first=False,
             dropout=0.0, lengths=None, with_state=False, unbatched=False, dtype=np.float64,
             seed=0, threads=None):
    rng = np.random.default_rng(seed + 1000)
    fast, ref = make_pair(mode, I, H, L, bidirectional, bias, batch_first, dropout, dtype, seed)
    fast.num_threads = threads
    if unbatched:
        x = rng.standard_normal((T, I))
    elif batch_first:
        x = rng.standard_normal((B, T, I))
    else:
        x = rng.standard_normal((T, B, I))
    D = 2 if bidirectional else 1
    sshape = (L * D, H) if unbatched else (L * D, B, H)
    state = state_like(mode, sshape, rng, np.float64) if with_state else None
    results = []
    for model in (fast, ref):
        y, st = model.forward(x, state, lengths, training=True)
        results.append((y, st))
    dy = rng.standard_normal(results[0][0].shape)
    dstate = state_like(mode, sshape, rng, np.float64)
    grads = []
    for model in (fast, ref):
        dx, dst = model.backward(dy, dstate)
        grads.append((dx, dst, {k: v.copy() for k, v in model.grads.items()}))
    return results, grads


def assert_match(results, grads, rtol, atol):
    (yf, sf), (yr, sr) = results
    np.testing.assert_allclose(yf, yr, rtol=rtol, atol=atol, err_msg="y")
    for a, b in zip(flat_state(sf), flat_state(sr)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg="final state")
    (dxf, dsf, gf), (dxr, dsr, gr) = grads
    np.testing.assert_allclose(dxf, dxr, rtol=rtol, atol=atol, err_msg="dx")
    for a, b in zip(flat_state(dsf), flat_state(dsr)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg="dstate0")
    assert gf.keys() == gr.keys()
    for k in gf:
        np.testing.assert_allclose(gf[k], gr[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional,L", [(False, 1), (True, 2)])
@pytest.mark.parametrize("options", ["plain", "lengths", "state", "batch_first", "nobias",
                                     "dropout", "unbatched"])
def test_float64_matches_reference(isa, mode, bidirectional, L, options):
    T, B, I, H = 7, 5, 6, 9
    kw = dict(L=L, bidirectional=bidirectional)
    if options == "lengths":
        kw["lengths"] = [7, 3, 1, 7, 5]
    elif options == "state":
        kw["with_state"] = True
    elif options == "batch_first":
        kw.update(batch_first=True, lengths=[2, 7, 7, 4, 1], with_state=True)
    elif options == "nobias":
        kw.update(bias=False, lengths=[1, 2, 3, 4, 5])
    elif options == "dropout":
        kw.update(dropout=0.4, L=3, lengths=[7, 6, 5, 4, 3])
    elif options == "unbatched":
        kw.update(unbatched=True, with_state=True)
    results, grads = run_both(mode, T, B, I, H, **kw)
    assert_match(results, grads, rtol=1e-9, atol=1e-11)


# Random shapes around the SIMD widths: odd I and H, B = 1, T = 1, B not a multiple of
# the micro-kernel's rows (B = 22, 23, 64: tiles of 6 and 5 rows; B = 4, 7, 8: tiles
# of 4 on AVX-512, B = 2 and 3 one tile of theirs; K blocks on AVX2, e.g. 8 x 130 x 270);
# H and I past the 128- and 256-row K blocks of the recurrent product, with the input
# product inside the time loop (I <= 64, 2 I <= H, or I <= H with weights of at most 8 MiB,
# and every T = 1; B = 1 over several steps only with W_ih under 512 KiB, not 3 x 1 x 300 x
# 230) or not.
SHAPES = [(1, 1, 1, 1), (1, 3, 4, 5), (3, 1, 8, 16), (3, 1, 300, 230), (6, 2, 33, 40),
          (2, 7, 17, 15), (5, 13, 33, 31), (4, 4, 16, 64), (37, 3, 45, 77), (3, 9, 3, 130),
          (2, 8, 130, 270), (1, 8, 140, 150), (2, 5, 140, 150), (3, 22, 70, 140),
          (2, 23, 20, 300), (2, 64, 300, 290)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_random_shapes(isa, mode, shape):
    T, B, I, H = shape
    rng = np.random.default_rng(hash(shape) % 1000)
    lengths = rng.integers(1, T + 1, size=B) if T > 1 else None
    results, grads = run_both(mode, T, B, I, H, L=2, bidirectional=True, lengths=lengths,
                              with_state=True, seed=int(rng.integers(100)))
    assert_match(results, grads, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_batch_size_matches_reference(isa, mode, threads):
    # Each batch size has its own row tiles (plan_tiles: on AVX-512 LSTM heights 6 down to 4,
    # GRU 8 down to 4, as even as they go; a padded last tile where they fall short; 1-3
    # rows their own kernels), and on two threads each thread's range of rows its own (by
    # rows, small weights). B = 1-20 and 26 against the reference, with lengths so that rows
    # drop out mid-sequence; float32 (its own kernels) against the float64 reference.
    rng = np.random.default_rng(7)
    for B in [*range(1, 21), 26]:
        lengths = 1 + np.arange(B) % 4
        results, grads = run_both(mode, 4, B, 7, 20, lengths=lengths, with_state=True, seed=B,
                                  threads=threads)
        assert_match(results, grads, rtol=1e-9, atol=1e-10)
        fast = make_pair(mode, 7, 20, 1, False, dtype=np.float32, seed=B)[0]
        fast.num_threads = threads
        ref64 = make_pair(mode, 7, 20, 1, False, dtype=np.float64)[1]
        ref64.load_state_dict({k: v.astype(np.float64) for k, v in fast.state_dict().items()})
        x = rng.standard_normal((4, B, 7)).astype(np.float32)
        y, h = fast(x, lengths=lengths)
        y64, h64 = ref64(x.astype(np.float64), lengths=lengths)
        np.testing.assert_allclose(y, y64, rtol=1e-5, atol=2e-6, err_msg=f"B = {B}")
        for a, b in zip(flat_state(h), flat_state(h64)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6, err_msg=f"B = {B}")


@pytest.mark.parametrize("mode", ["RNN_TANH", "LSTM", "GRU"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_last_panel_matches_reference(isa, mode, dtype):
    # A partial last panel is packed compact on AVX-512 (compact_last: LSTM H = 100 keeps
    # its last 4 units of each gate in one vector): every remainder of H against a gate's
    # 16 or 8 units, and RNN's 64- or 32-unit panels with 1, 2, 3 and 4 vectors' worth of
    # units left; on the batch-1 row kernel, a 3-row tile and taller ones, with the input
    # product in the loop (I = 3) or not (I = 200: engine.cpp, fuse_input).
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=5e-6)
    for H in [*range(1, 36), 47, 50, 63, 65, 100]:
        for B, I in [(1, 3), (3, 200), (13, 3)]:
            results, grads = run_both(mode, 3, B, I, H, with_state=True, seed=H, dtype=dtype,
                                      threads=2)
            try:
                assert_match(results, grads, **tol)
            except AssertionError as e:
                raise AssertionError(f"H = {H}, B = {B}, I = {I}: {e}") from None


@pytest.mark.parametrize("mode", MODES)
def test_float32_close_to_float64_reference(isa, mode):
    T, B, I, H = 12, 6, 20, 37
    fast, ref = make_pair(mode, I, H, 2, True, dtype=np.float32)
    ref64 = make_pair(mode, I, H, 2, True, dtype=np.float64)[1]
    ref64.load_state_dict({k: v.astype(np.float64) for k, v in fast.state_dict().items()})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = [12, 1, 5, 12, 7, 3]
    y, _ = fast.forward(x, lengths=lengths, training=True)
    y64, _ = ref64.forward(x.astype(np.float64), lengths=lengths, training=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=2e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = fast.backward(dy)
    dx64, _ = ref64.backward(dy.astype(np.float64))
    np.testing.assert_allclose(dx, dx64, rtol=1e-4, atol=1e-5)
    for k in fast.grads:
        np.testing.assert_allclose(fast.grads[k], ref64.grads[k], rtol=1e-4, atol=2e-5, err_msg=k)


def test_gradients_accumulate_and_zero_grad():
    fast, ref = make_pair("LSTM", 4, 6, 1)
    x = np.random.default_rng(0).standard_normal((5, 2, 4))
    y, _ = fast.forward(x, training=True)
    dy = np.ones_like(y)
    fast.backward(dy)
    once = {k: v.copy() for k, v in fast.grads.items()}
    fast.backward(dy)
    for k in once:
        np.testing.assert_allclose(fast.grads[k], 2 * once[k], rtol=1e-12)
    fast.zero_grad()
    assert all(not v.any() for v in fast.grads.values())


def test_state_dict_round_trip_and_names():
    m = rf.GRU(3, 4, num_layers=2, bidirectional=True)
    sd = m.state_dict()
    assert list(sd) == [f"{w}_l{k}{s}" for k in range(2) for s in ("", "_reverse")
                        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert sd["weight_ih_l1"].shape == (12, 8) and sd["bias_hh_l0"].shape == (12,)
    assert all(v.dtype == np.float32 for v in sd.values())
    sd["weight_ih_l0"][...] = 0  # a copy: the model is unchanged
    assert m.state_dict()["weight_ih_l0"].any()
    m2 = rf.GRU(3, 4, num_layers=2, bidirectional=True, seed=7)
    m2.load_state_dict(m.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    np.testing.assert_array_equal(m(x)[0], m2(x)[0])


def test_load_state_dict_repacks_weights():
    fast, ref = make_pair("LSTM", 3, 5)
    x = np.random.default_rng(1).standard_normal((4, 2, 3))
    new = {k: v * 0.5 for k, v in fast.state_dict().items()}
    fast.load_state_dict(new)
    ref.load_state_dict(new)
    np.testing.assert_allclose(fast(x)[0], ref(x)[0], rtol=1e-12)


def test_inference_matches_training_forward():
    fast, _ = make_pair("GRU", 5, 7, 2, True, dropout=0.3)
    x = np.random.default_rng(2).standard_normal((6, 3, 5))
    y_inf, _ = fast(x)
    fast.dropout = 0.0
    y_tr, _ = fast.forward(x, training=True)
    np.testing.assert_allclose(y_inf, y_tr, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_padding_is_ignored(mode):
    """Steps past a sequence's end: zero output, frozen state, dy there ignored, and garbage
    (even NaN) in the padding of x affects nothing."""
    fast, _ = make_pair(mode, 3, 4, 2, True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2, 3))
    lengths = [6, 3]
    y, st = fast.forward(x, lengths=lengths, training=True)
    assert not y[3:, 1].any()
    dy = rng.standard_normal(y.shape)
    dx, _ = fast.backward(dy)
    g = {k: v.copy() for k, v in fast.grads.items()}
    x2, dy2 = x.copy(), dy.copy()
    x2[3:, 1] = np.nan
    dy2[3:, 1] = 1e6
    fast.zero_grad()
    y2, st2 = fast.forward(x2, lengths=lengths, training=True)
    dx2, _ = fast.backward(dy2)
    np.testing.assert_array_equal(y, y2)
    for a, b in zip(flat_state(st), flat_state(st2)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx, dx2)
    assert not dx2[3:, 1].any()
    for k in g:
        np.testing.assert_array_equal(g[k], fast.grads[k])


def test_dropout_masks_match_reference_and_vary():
    fast, ref = make_pair("LSTM", 4, 8, 3, True, dropout=0.5, seed=11)
    x = np.random.default_rng(4).standard_normal((5, 3, 4))
    y1, _ = fast.forward(x, training=True)
    r1, _ = ref.forward(x, training=True)
    np.testing.assert_allclose(y1, r1, rtol=1e-10)
    y2, _ = fast.forward(x, training=True)  # a new mask each training forward
    assert not np.allclose(y1, y2)
    r2, _ = ref.forward(x, training=True)
    np.testing.assert_allclose(y2, r2, rtol=1e-10)


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_vector_activations_error_bound(isa, kind):
    x = np.concatenate([np.linspace(-20, 20, 100001), np.linspace(-80, 80, 16001),
                        np.logspace(-10, 1.3, 4001), -np.logspace(-10, 1.3, 4001)])
    x = x.astype(np.float32)
    assert_activation_within(kind, x, _core._activation(kind, x))
    special = _core._activation(kind, np.array([np.nan, np.inf, -np.inf], np.float32))
    assert np.isnan(special[0])
    if kind == 0:  # exp is the others' building block, clamped to float range
        assert special[1] > 1e38 and 0 <= special[2] < 1e-37
    else:
        assert special[1] == 1.0
        assert special[2] == -1.0 if kind == 2 else 0 <= special[2] < 1e-37


# Shapes around the GEMM's blocking (6- or 12-row micro-panels, 96-row blocks, 512-row K
# blocks, 16- or 32-column panels) and the forms it takes: row-major A (forward input
# products, dx; read in place up to 8 panels of B, packed beyond) and A transposed (weight
# gradients, dA^T).
GEMM_SHAPES = [(1, 1, 1), (5, 3, 7), (6, 16, 8), (7, 17, 9), (13, 33, 511), (95, 15, 512),
               (96, 64, 513), (97, 31, 1030), (200, 1, 64), (1030, 70, 300), (37, 300, 1100),
               (400, 32, 512), (150, 260, 600)]


@pytest.fixture(params=[False, True], ids=["a_packed", "a_in_place"])
def transposed_in_place(request):
    """The GEMM's reading of a transposed A (columns an odd number of cache lines apart)
    in place, on or off whatever this CPU's default (dispatch.cpp)."""
    before = _core._set_transposed_a_in_place(request.param)
    assert _core._transposed_a_in_place() is request.param
    yield request.param
    _core._set_transposed_a_in_place(before)


@pytest.mark.parametrize("trans_a", [False, True])
def test_gemm_matches_numpy(isa, trans_a, transposed_in_place):
    rng = np.random.default_rng(3)
    for M, N, K in GEMM_SHAPES:
        a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        want = (a.T if trans_a else a).astype(np.float64) @ b.astype(np.float64)
        for nt in (1, 2, 3, 8):
            with teams_of_up_to(nt):  # teams of 3 and 8 on any machine
                got = _core._gemm(a, b, nthreads=nt, trans_a=trans_a)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(K),
                                       err_msg=f"M={M} N={N} K={K} nthreads={nt}")


# (M, N, K, gaps): GRU's dA shapes (m_at = k_at = 2H, skips H) and gaps off block edges.
GAPPED = [(21, 6, 15, (14, 7, 14, 7)), (384, 40, 400, (256, 128, 256, 128)),
          (300, 70, 1030, (13, 5, 700, 3)), (37, 300, 600, (0, 4, 0, 9)),
          (40, 20, 30, (40, 6, 30, 2)), (1536, 20, 64, (1024, 512, 1024, 512))]


@pytest.mark.parametrize("trans_a", [False, True])
def test_gapped_gemm_matches_numpy(isa, trans_a, transposed_in_place):
    """A read with gaps (GRU's one dA row [dr | dz | dn*r | dn]) against NumPy on the
    same A with the skipped rows and columns deleted."""
    rng = np.random.default_rng(4)
    for M, N, K, gaps in GAPPED:
        m_at, m_skip, k_at, k_skip = gaps
        full = rng.standard_normal((M + m_skip, K + k_skip)).astype(np.float64)
        used = np.delete(np.delete(full, np.s_[m_at:m_at + m_skip], 0),
                         np.s_[k_at:k_at + k_skip], 1)[:M, :K]  # a gap at the end: none
        b = rng.standard_normal((K, N)).astype(np.float32)
        want = used.astype(np.float32).astype(np.float64) @ b.astype(np.float64)
        a = (full.T if trans_a else full).astype(np.float32)
        for nt in (1, 2, 3, 8):
            with teams_of_up_to(nt):
                got = _core._gemm(np.ascontiguousarray(a), b, nthreads=nt, trans_a=trans_a,
                                  gaps=gaps)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(K),
                                       err_msg=f"M={M} N={N} K={K} gaps={gaps} nthreads={nt}")


# The weight gradients' dA, read in place or packed (float64: the GEMM's code is one
# template for both types, and _gemm above covers float32): B 8 and 5, [h | x] of 160 and
# 77 columns (several panels), in time order and compacted by lengths, one and two threads.
@pytest.mark.parametrize("mode", MODES)
def test_weight_gradients_with_da_in_place_or_packed(isa, mode, transposed_in_place):
    for (T, B, I, H), lengths, threads in itertools.product(
            [(9, 8, 32, 128), (6, 5, 13, 64)], (False, True), (1, 2)):
        lens = [T, 1, T - 2, 3, T, T, 2, T][:B] if lengths else None
        results, grads = run_both(mode, T, B, I, H, lengths=lens, threads=threads)
        assert_match(results, grads, rtol=1e-9, atol=1e-11)


def _transparent_huge_pages():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _transparent_huge_pages(),
                    reason="no transparent huge pages on this system")
def test_huge_pages_for_big_buffers():
    """Buffers of 2 MiB or more (the packed weights, gradients, workspaces) ask for huge
    pages unless RNNFAST_HUGE_PAGES=0: a process's huge-page count grows by more than
    NumPy's own when a model of ~30 MiB of buffers is made. Results are the same bits."""
    import subprocess
    import sys
    code = """
import numpy as np, rnnfast as rf
from rnnfast import _core
def huge_kib():
    for line in open('/proc/self/smaps_rollup'):
        if line.startswith('AnonHugePages'):
            return int(line.split()[1])
state = rf.LSTM(512, 512, seed=1).state_dict()
before = huge_kib()
m = rf.LSTM(512, 512)
m.load_state_dict(state)
y = m(np.ones((3, 2, 512), np.float32))[0]
print(_core._huge_pages(), huge_kib() - before, float(np.abs(y).sum().astype(np.float64)))
"""
    out = {}
    for setting in ("1", "0"):
        env = dict(os.environ, RNNFAST_HUGE_PAGES=setting)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        on, kib, checksum = proc.stdout.split()
        assert on == ("True" if setting == "1" else "False")
        out[setting] = (int(kib), checksum)
    assert out["1"][0] >= out["0"][0] + 8 * 1024, out  # the 8 MiB packed weights at least
    assert out["1"][1] == out["0"][1]


def test_isa_switch_and_env(tmp_path):
    import subprocess
    import sys
    code = "import rnnfast as rf; print(rf.get_isa())"
    env = dict(__import__("os").environ, RNNFAST_ISA="generic")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "generic", out.stderr
    assert rf.supported_isas()[-1] == "generic"
    with pytest.raises(ValueError, match="instruction set"):
        _core.set_isa("sse9")


# The engine reads batch-first input and writes batch-first outputs in place (no
# transposed copies): x read by the fused step (I <= 64), by the few-row projection (T*B
# <= 32) and by the general GEMM; y of the last layer; dy and dx in training.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(7, 5, 6, 9), (3, 4, 140, 100), (9, 7, 140, 100)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("L,bidirectional", [(1, False), (2, True)])
def test_batch_first_in_place_matches_time_major(isa, mode, shape, L, bidirectional):
    T, B, I, H = shape
    rng = np.random.default_rng(T * B)
    kw = dict(L=L, bidirectional=bidirectional, dtype=np.float32, seed=4)
    tm = make_pair(mode, I, H, **kw)[0]
    bf = make_pair(mode, I, H, batch_first=True, **kw)[0]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    lengths = rng.integers(1, T + 1, size=B)
    starts = rng.integers(0, T - lengths + 1)
    state = state_like(mode, (L * (2 if bidirectional else 1), B, H), rng, np.float32)

    def check(got, want):  # batch-first (y, state) against time-major
        np.testing.assert_array_equal(got[0], want[0].transpose(1, 0, 2))
        for a, b in zip(flat_state(got[1]), flat_state(want[1])):
            np.testing.assert_array_equal(a, b)

    for args in ((None, None, None), (state, lengths, None), (state, lengths, starts)):
        st, ln, sts = args
        check(bf.forward(xb, st, ln, starts=sts), tm.forward(x, st, ln, starts=sts))
    bf.forward = _no_forward  # the plain call takes the direct path, with forward()'s results
    check(bf(xb, state), tm(x, state))
    bf.batch_first = 1  # any true value
    check(bf(xb, state), tm(x, state))
    del bf.forward
    for ln, sts in ((None, None), (lengths, starts)):
        want = tm.forward(x, state, ln, training=True, starts=sts)
        check(bf.forward(xb, state, ln, training=True, starts=sts), want)
        dy = rng.standard_normal(want[0].shape).astype(np.float32)
        dstate = state_like(mode, flat_state(state)[0].shape, rng, np.float32)
        tm.zero_grad()
        bf.zero_grad()
        dx, dst = tm.backward(dy, dstate)
        dxb, dstb = bf.backward(np.ascontiguousarray(dy.transpose(1, 0, 2)), dstate)
        np.testing.assert_array_equal(dxb, dx.transpose(1, 0, 2))
        for a, b in zip(flat_state(dstb), flat_state(dst)):
            np.testing.assert_array_equal(a, b)
        for k, g in tm.grads.items():
            np.testing.assert_array_equal(bf.grads[k], g, err_msg=k)


def _no_forward(*args, **kwargs):
    raise AssertionError("took forward()")


def test_all_options_combined(isa):
    """Every option at once."""
    for mode, bf in itertools.product(MODES, (False, True)):
        results, grads = run_both(mode, 9, 4, 10, 12, L=3, bidirectional=True, batch_first=bf,
                                  dropout=0.25, lengths=[9, 2, 5, 8], with_state=True,
                                  dtype=np.float64)
        assert_match(results, grads, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_each_path_as_first_call_in_a_fresh_process(mode):
    """Per-thread workspaces are reused (they shrink only past 64 MiB): a path that forgot
    to size its buffer would pass after larger calls and fail (or crash) as a process's
    first call. Each call kind runs
    first in its own interpreter: fused single step, few-row projection, general GEMM."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path[:0] = {sys.path!r}
        from conftest import make_pair
        T, B = map(int, sys.argv[1:3])
        fast, ref = make_pair({mode!r}, 5, 7, 2, True, dtype=np.float64)
        x = np.random.default_rng(0).standard_normal((T, B, 5))
        y, _ = fast.forward(x, training=True)
        yr, _ = ref.forward(x, training=True)
        dx, _ = fast.backward(np.ones_like(y))
        dxr, _ = ref.backward(np.ones_like(yr))
        np.testing.assert_allclose(y, yr, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dx, dxr, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fast(x)[0], yr, rtol=1e-9, atol=1e-12)
        print("ok")
    """)
    for T, B in [(1, 1), (1, 6), (3, 4), (40, 3)]:
        out = subprocess.run([sys.executable, "-c", code, str(T), str(B)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (T, B, out.stderr[-2000:])


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_large_workspace_is_freed_by_a_smaller_call():
    """A call's per-thread scratch (here a 96 MiB input projection, and the backward's
    gate gradients) stays for calls of its size, and a buffer over 64 MiB is freed when a
    later call needs under a quarter of it; results after the shrink stay right."""
    import threading

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    fast, ref = make_pair("GRU", 512, 128, 1, False, dtype=np.float32)
    rng = np.random.default_rng(1)
    big = rng.standard_normal((1024, 64, 512)).astype(np.float32)  # T*B*3H floats: 96 MiB
    small = big[:5, :3]
    got = {}

    def run():  # a fresh thread: a fresh workspace
        y, _ = fast.forward(big, training=True)
        fast.backward(np.ones_like(y))
        del y
        got["big"] = rss()
        fast(big[:512])  # half the size: kept
        got["half"] = rss()
        got["y"], _ = fast.forward(small, training=True)
        got["dx"], _ = fast.backward(np.ones_like(got["y"]))
        got["small"] = rss()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got["half"] > got["big"] - (16 << 20)
    assert got["small"] < got["big"] - (150 << 20)  # projection and gate gradients freed
    want, _ = ref.forward(small.astype(np.float64), training=True)
    dx, _ = ref.backward(np.ones_like(want))
    np.testing.assert_allclose(got["y"], want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got["dx"], dx, rtol=2e-4, atol=2e-5)


def test_read_probe_reads_every_element(isa):
    buf = np.arange(1, 1003, dtype=np.float32)  # not a multiple of any vector width
    seconds, total = _core._read_probe(buf, 3, 2)
    assert seconds > 0 and total == 3 * float(buf.astype(np.float64).sum())
    with pytest.raises(ValueError, match="reps"):
        _core._read_probe(buf, 0)


@pytest.mark.parametrize("mode,H,dtype", [("LSTM", 512, np.float32), ("GRU", 300, np.float64),
                                          ("RNN_TANH", 520, np.float64)])
def test_batch1_far_weights_with_and_without_prefetch(isa, mode, H, dtype):
    """Batch-1 steps on weights over 4 MiB (from L3) prefetch them on some CPUs only: both
    ways give the reference's answer, the same bits. The stream's steps read [W_ih | W_hh]
    (over 4 MiB: prefetched); the sequence runs its input product as one GEMM first (W_ih
    over 512 KiB, engine.cpp fuse_input) and its steps read W_hh alone."""
    fast, ref = make_pair(mode, H, H, dtype=dtype, seed=3)
    assert sum(fast.state_dict()[k].nbytes for k in ("weight_ih_l0", "weight_hh_l0")) > 4 << 20
    x = np.random.default_rng(4).standard_normal((5, 1, H)).astype(dtype)
    want, _ = ref.forward(x.astype(np.float64))
    before = _core._far_prefetch()
    try:
        got = {}
        for on in (True, False):
            _core._set_far_prefetch(on)
            assert _core._far_prefetch() is on
            s = fast.stream()
            got[on] = (fast.forward(x)[0], np.stack([s.step(x[t]) for t in range(len(x))]))
    finally:
        _core._set_far_prefetch(before)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for y in got[True] + got[False]:
        np.testing.assert_allclose(y, want, **tol)
    for a, b in zip(got[True], got[False]):
        np.testing.assert_array_equal(a, b)


def _train_with_stream_cache(mode_flag, fast, x, lengths, dy, dstate, threads):
    before = _core._set_stream_cache(mode_flag)
    try:
        fast.num_threads = threads
        y, st = fast.forward(x, None, lengths, training=True)
        fast.zero_grad()
        dx, dst = fast.backward(dy, dstate)
    finally:
        _core._set_stream_cache(before)
    return [y, *flat_state(st), dx, *flat_state(dst), *[g.copy() for g in fast.grads.values()]]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("H,dtype", [(64, np.float32), (50, np.float32), (40, np.float64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_gate_cache_past_the_caches_matches(isa, mode, H, dtype, threads):
    """Training's gate cache written past the caches (vstore_stream, for caches over 3 MiB;
    forced here, and off) gives the reference's answer and the same bits either way, in
    both directions, with lengths, whole vectors or not (H 50: rows off vector alignment)."""
    fast, ref = make_pair(mode, 12, H, L=2, bidirectional=True, dtype=dtype, seed=5)
    rng = np.random.default_rng(6)
    T, B = 9, 7
    x = rng.standard_normal((T, B, 12)).astype(dtype)
    lengths = np.array([9, 3, 9, 1, 7, 9, 5])
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    dstate = state_like(mode, (4, B, H), rng, dtype)
    got = {flag: _train_with_stream_cache(flag, fast, x, lengths, dy, dstate, threads)
           for flag in (1, 0)}
    for a, b in zip(got[1], got[0]):
        np.testing.assert_array_equal(a, b)
    y, st = ref.forward(x.astype(np.float64), None, lengths, training=True)
    dx, dst = ref.backward(dy.astype(np.float64), tuple(s.astype(np.float64) for s in dstate)
                           if mode == "LSTM" else dstate.astype(np.float64))
    want = [y, *flat_state(st), dx, *flat_state(dst), *ref.grads.values()]
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-11)
    for a, b in zip(got[1], want):
        np.testing.assert_allclose(a, b, **tol)


def test_big_gate_cache_streams_by_size_and_matches():
    """The default rule on a 13 MB cache (over 3 MiB: streamed) gives the same bits as plain
    stores and the reference's answer."""
    fast, ref = make_pair("LSTM", 16, 128, dtype=np.float64, seed=7)
    rng = np.random.default_rng(8)
    T, B = 40, 64
    assert T * B * 5 * 128 * 8 > 3 << 20
    x = rng.standard_normal((T, B, 16))
    dy = rng.standard_normal((T, B, 128))
    dstate = state_like("LSTM", (1, B, 128), rng, np.float64)
    got = {flag: _train_with_stream_cache(flag, fast, x, None, dy, dstate, 2) for flag in (-1, 0)}
    for a, b in zip(got[-1], got[0]):
        np.testing.assert_array_equal(a, b)
    y, st = ref.forward(x, None, None, training=True)
    dx, dst = ref.backward(dy, dstate)
    want = [y, *flat_state(st), dx, *flat_state(dst), *ref.grads.values()]
    for a, b in zip(got[-1], want):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    assert _core._set_stream_cache(-1) == -1  # the default is left as it was


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_denormals_flushed_inside_kernels_only(isa, dtype):
    """Kernels run with flush-to-zero / denormals-are-zero (denormals make recurrent loops
    10-20x slower on some inputs) and restore the caller's floating-point mode."""
    tiny = np.finfo(dtype).smallest_subnormal * 64
    m = rf.RNN(4, 4, bias=False, dtype=dtype)
    m.load_state_dict({"weight_ih_l0": np.eye(4, dtype=dtype),
                       "weight_hh_l0": np.zeros((4, 4), dtype)})
    y, _ = m(np.full((3, 2, 4), tiny, dtype))
    assert not y.any()  # tanh(denormal) computed as tanh(0) = 0
    assert np.array(tiny, dtype) * dtype(1) == tiny  # the caller's mode is untouched
    y, _ = m(np.full((3, 2, 4), 1e-3, dtype))
    np.testing.assert_allclose(y, np.tanh(np.full((3, 2, 4), 1e-3)), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_starts_match_reference_and_shifted_sequences(isa, mode):
    # Rows with valid steps [start, start + len): the engine against the reference (forward,
    # dx, dstate0, every gradient), and against the same rows shifted to start at step 0.
    T, B, I, H, L = 7, 5, 4, 6, 2
    rng = np.random.default_rng(11)
    fast, ref = make_pair(mode, I, H, L, bidirectional=True, seed=2)
    lengths = np.array([7, 3, 5, 1, 4])
    starts = np.array([0, 4, 1, 6, 2])
    x = rng.standard_normal((T, B, I))
    state = state_like(mode, (2 * L, B, H), rng, np.float64)
    outs = []
    for model in (fast, ref):
        y, st = model.forward(x, state, lengths, training=True, starts=starts)
        outs.append((y, st))
    dy = rng.standard_normal(outs[0][0].shape)
    grads = []
    for model in (fast, ref):
        dx, dst = model.backward(dy, None)
        grads.append((dx, dst, {k: v.copy() for k, v in model.grads.items()}))
    assert_match(outs, grads, rtol=1e-9, atol=1e-10)
    # shifted: each row moved to start at 0 gives the same outputs there and the same state
    xs = np.zeros_like(x)
    for b in range(B):
        xs[:lengths[b], b] = x[starts[b]:starts[b] + lengths[b], b]
    ys, sts = fast(xs, state, lengths)
    y0, st0 = outs[0]
    for b in range(B):
        np.testing.assert_allclose(y0[starts[b]:starts[b] + lengths[b], b], ys[:lengths[b], b],
                                   rtol=1e-12)
        assert not y0[:starts[b], b].any() and not y0[starts[b] + lengths[b]:, b].any()
    for a, b in zip(flat_state(st0), flat_state(sts)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def _padded_batch(rng, T, B, I, front):
    """Distinct-ish lengths in a shuffled order (rows run sorted by length inside), padded at
    the end or, with front, in front (starts = T - lengths)."""
    lengths = np.concatenate([[T, T], rng.integers(1, T + 1, B - 2)])
    rng.shuffle(lengths)
    starts = T - lengths if front else None
    x = rng.standard_normal((T, B, I))
    inside = np.zeros((T, B), bool)
    for b in range(B):
        t0 = 0 if starts is None else starts[b]
        inside[t0:t0 + lengths[b], b] = True
    return x, lengths, starts, inside


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("front", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("I,H", [(9, 20), (70, 40)])
def test_padded_batch_matches_reference_and_never_reads_padding(isa, mode, front, threads, I, H):
    """A batch of many lengths (B 23: 6- and 5-row tiles, whose count shrinks step by step as
    rows end; rows split by rows or by panels): forward, dx, dstate0 and every gradient match
    the reference, and NaN in x and dy past each sequence's end changes nothing (the
    products run over the rows inside their sequences only; PyTorch's packed sequences ignore
    padding too). I 9, H 20: both layers' input products run inside the time loop; I 70,
    H 40: both layers project their gathered rows first."""
    T, B, L = 13, 23, 2
    rng = np.random.default_rng(5)
    fast, ref = make_pair(mode, I, H, L, bidirectional=True, seed=3)
    fast.num_threads = threads
    x, lengths, starts, inside = _padded_batch(rng, T, B, I, front)
    state = state_like(mode, (2 * L, B, H), rng, np.float64)
    dy = rng.standard_normal((T, B, 2 * H))
    dy[~inside] = 0
    dstate = state_like(mode, (2 * L, B, H), rng, np.float64)
    x_nan, dy_nan = x.copy(), dy.copy()
    x_nan[~inside] = np.nan
    dy_nan[~inside] = np.inf
    outs, grads = [], []
    for model, xi, dyi in ((fast, x_nan, dy_nan), (ref, x, dy)):
        outs.append(model.forward(xi, state, lengths, training=True, starts=starts))
        dx, dst = model.backward(dyi, dstate)
        grads.append((dx, dst, {k: v.copy() for k, v in model.grads.items()}))
    assert_match(outs, grads, rtol=1e-9, atol=1e-10)
    assert not outs[0][0][~inside].any() and not grads[0][0][~inside].any()
    y, st = fast(x_nan, state, lengths, starts=starts)  # inference
    np.testing.assert_allclose(y, outs[1][0], rtol=1e-9, atol=1e-10)
    for a, b in zip(flat_state(st), flat_state(outs[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_padded_batch_row_order_does_not_matter(mode):
    """The same sequences in another batch order give the same results in that order."""
    T, B, I, H = 11, 17, 7, 12
    rng = np.random.default_rng(8)
    x, lengths, _, _ = _padded_batch(rng, T, B, I, False)
    state = state_like(mode, (2, B, H), rng, np.float64)
    dy = rng.standard_normal((T, B, 2 * H))
    order = rng.permutation(B)
    model = make_pair(mode, I, H, 1, bidirectional=True, seed=4)[0]
    runs = []
    for o in (np.arange(B), order):
        st = tuple(s[:, o] for s in state) if mode == "LSTM" else state[:, o]
        model.zero_grad()
        y, hn = model.forward(x[:, o], st, lengths[o], training=True)
        dx, dh0 = model.backward(dy[:, o], None)
        runs.append((y, hn, dx, dh0, {k: v.copy() for k, v in model.grads.items()}))
    (y, hn, dx, dh0, g), (yo, hno, dxo, dh0o, go) = runs
    np.testing.assert_allclose(yo, y[:, order], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dxo, dx[:, order], rtol=1e-12, atol=1e-14)
    for a, b in zip(flat_state(hno) + flat_state(dh0o), flat_state(hn) + flat_state(dh0)):
        np.testing.assert_allclose(a, b[:, order], rtol=1e-12, atol=1e-14)
    for k in g:
        np.testing.assert_allclose(go[k], g[k], rtol=1e-10, atol=1e-12)


def test_row_plans_follow_shape_directions_and_lengths():
    """Calls without lengths reuse the thread's row plan while (T, B, directions) stay the
    same: a one-direction model, then a two-direction one, then a padded call, then a plain
    one again, each of the same T and B, all match the reference."""
    T, B, I, H = 6, 3, 5, 4
    x = np.random.default_rng(2).standard_normal((T, B, I))
    one = make_pair("GRU", I, H, seed=1)
    two = make_pair("GRU", I, H, bidirectional=True, seed=2)
    for fast, ref in (one, two, one, two):
        for lengths in (None, [6, 2, 4], None):
            y, h = fast(x, None, lengths)
            yr, hr = ref.forward(x, None, lengths)
            np.testing.assert_allclose(y, yr, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(h, hr, rtol=1e-10, atol=1e-12)


def test_starts_bad_input():
    m = rf.GRU(3, 4)
    x = np.zeros((5, 2, 3))
    with pytest.raises(ValueError, match="starts needs lengths"):
        m(x, starts=[0, 1])
    with pytest.raises(ValueError, match="start \\+ length"):
        m(x, lengths=[3, 3], starts=[0, 3])
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        m(x, lengths=[3, 3], starts=[0])
    with pytest.raises(TypeError, match="starts"):
        m(x, lengths=[3, 3], starts=["a", "b"])
