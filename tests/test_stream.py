"""Step-by-step inference (model.stream()) and the batch-1 kernels, against the NumPy
reference run on whole sequences, on every kernel build."""

import gc
import threading
import weakref

import numpy as np
import pytest
from conftest import flat_state, make_pair, state_like

import rnnfast as rf

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [None, 1, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_matches_whole_sequence(isa, mode, batch, dtype):
    # H = 77 and I = 45 leave partial vectors and panels; two layers chain the steps.
    T, I, H, L = 6, 45, 77, 2
    fast, ref = make_pair(mode, I, H, L, dtype=dtype, seed=3)
    rng = np.random.default_rng(7)
    B = 1 if batch is None else batch
    x = rng.standard_normal((T, B, I))
    state = state_like(mode, (L, B, H), rng, np.float64)
    want_y, want_state = ref.forward(x, state)
    if batch is None:  # unbatched streams take (I,) steps and keep (L, H) states
        state = tuple(s[:, 0] for s in state) if mode == "LSTM" else state[:, 0]
    s = fast.stream(batch_size=batch, state=state)
    ys = [s.step(x[t, 0] if batch is None else x[t]) for t in range(T)]
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for t in range(T):
        assert ys[t].dtype == dtype
        got = ys[t] if batch is not None else ys[t][None]
        np.testing.assert_allclose(got, want_y[t], **tol, err_msg=f"y[{t}]")
    got_state = s.state
    if batch is None:
        want_state = tuple(w[:, 0] for w in want_state) if mode == "LSTM" else want_state[:, 0]
    for a, b in zip(flat_state(got_state), flat_state(want_state)):
        np.testing.assert_allclose(a, b, **tol, err_msg="state")


@pytest.mark.parametrize("batch", [None, 3])
def test_lstm_stream_cell_state_updated_where_it_lies(isa, batch):
    # A stream's step updates its c in place (cpp/engine.cpp), on two threads that split
    # the units (H = 256: panels split): each step's outputs and the state between steps
    # are the reference's after as many steps.
    T, I, H, L = 8, 32, 256, 2
    fast, ref = make_pair("LSTM", I, H, L, dtype=np.float32, seed=5)
    fast.num_threads = 2
    rng = np.random.default_rng(11)
    B = 1 if batch is None else batch
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = state_like("LSTM", (L, B, H), rng, np.float32)
    state = (h0[:, 0], c0[:, 0]) if batch is None else (h0, c0)
    s = fast.stream(batch_size=batch, state=state)
    tol = dict(rtol=2e-5, atol=2e-5)
    for t in range(T):
        y = s.step(x[t, 0] if batch is None else x[t])
        want_y, (want_h, want_c) = ref.forward(x[:t + 1].astype(np.float64), (h0, c0))
        got = y if batch is not None else y[None]
        np.testing.assert_allclose(got, want_y[t], **tol, err_msg=f"y[{t}]")
        for got_s, want_s in zip(s.state, (want_h, want_c)):
            np.testing.assert_allclose(got_s if batch is not None else got_s[:, None], want_s,
                                       **tol, err_msg=f"state after step {t}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T,B", [(1, 1), (5, 1), (1, 3)])
def test_batch_one_and_single_step_float32(isa, mode, T, B):
    # The plain call: batch 1 runs the one-row kernel, T = 1 the fused [x | h] product
    # (GRU keeps its x and h sums apart there); float32 against the float64 reference.
    I, H = 45, 77
    fast, ref = make_pair(mode, I, H, dtype=np.float32, seed=5)
    x = np.random.default_rng(9).standard_normal((T, B, I)).astype(np.float32)
    state = state_like(mode, (1, B, H), np.random.default_rng(2), np.float32)
    y, st = fast(x, state)
    ry, rst = ref(x.astype(np.float64), state)
    np.testing.assert_allclose(y, ry, rtol=2e-5, atol=2e-5)
    for a, b in zip(flat_state(st), flat_state(rst)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_stream_out_reset_and_weight_changes():
    m = rf.LSTM(8, 16)
    s = m.stream()
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    out = np.empty(16, np.float32)
    assert s.step(x[0], out=out) is out
    first = out.copy()
    second = s(x[1])
    assert not np.allclose(first, second)  # the state moved on
    s.reset()
    np.testing.assert_array_equal(s.step(x[0]), first)
    s.reset()
    sd = m.state_dict()
    m.load_state_dict({k: v * 0.5 for k, v in sd.items()})
    halved = s.step(x[0])
    want, _ = m(x[:1])
    np.testing.assert_allclose(halved, want[0], rtol=1e-6)  # follows the new weights
    assert not np.allclose(halved, first)


def test_stream_bad_input():
    m = rf.GRU(8, 16)
    s = m.stream(batch_size=2)
    with pytest.raises(ValueError, match="x"):
        s.step(np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="x"):
        s.step(np.zeros(8, np.float32))  # (I,) only for batch 1
    with pytest.raises(TypeError):
        s.step(np.zeros((2, 8)), out=np.zeros((2, 16)))  # float64 out for a float32 model
    with pytest.raises(ValueError, match="out"):
        s.step(np.zeros((2, 8)), out=np.zeros((2, 15), np.float32))
    with pytest.raises(ValueError, match="out.*writeable"):
        readonly = np.zeros((2, 16), np.float32)
        readonly.flags.writeable = False
        s.step(np.zeros((2, 8)), out=readonly)
    with pytest.raises(ValueError, match="state"):
        m.stream(batch_size=2, state=np.zeros((1, 3, 16)))
    with pytest.raises(ValueError, match="batch_size"):
        m.stream(batch_size=0)
    with pytest.raises(ValueError, match="bidirectional"):
        rf.LSTM(4, 4, bidirectional=True).stream()
    ref = rf.reference.GRU(8, 16).stream(batch_size=2)
    with pytest.raises(ValueError, match="x"):
        ref.step(np.zeros((3, 8)))


@pytest.mark.parametrize("backend", [rf, rf.reference])
def test_step_out_of_any_layout(backend):
    # out= takes any writeable array of the dtype and shape, as NumPy's out= does: the
    # engine writes a C-contiguous aligned one in place and any other through a copy.
    rng = np.random.default_rng(3)
    m = backend.LSTM(8, 16)
    x = rng.standard_normal((4, 2, 8)).astype(np.float32)
    plain, other = m.stream(batch_size=2), m.stream(batch_size=2)
    bases = [np.zeros((16, 2), np.float32).T,  # Fortran order
             np.zeros((2, 32), np.float32)[:, ::2],  # strided
             np.frombuffer(bytearray(2 * 16 * 4 + 1), np.float32, 32, offset=1).reshape(2, 16),
             np.zeros((2, 16), np.float32)]
    for t, out in enumerate(bases):
        want = plain.step(x[t])
        got = other.step(x[t], out=out)
        assert got is out
        np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(other.state[0], plain.state[0])
    readonly = np.zeros((2, 16), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        other.step(x[0], out=readonly)
    with pytest.raises(ValueError, match="out must have shape"):
        other.step(x[0], out=np.zeros((2, 15), np.float32))
    np.testing.assert_array_equal(other.state[0], plain.state[0])  # a refused step moves nothing
    # out over x (feeding a step's output back, I = H): the step reads x while writing.
    m = backend.LSTM(128, 128)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    plain, other = m.stream(batch_size=2), m.stream(batch_size=2)
    want = plain.step(x)
    np.testing.assert_array_equal(other.step(x, out=x), want)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_direct_step_matches_checked_step(dtype, batch):
    # Stream.step is the binding's direct callable: exact arrays run at once, anything else
    # (other dtype, byte order, strides, alignment, lists, keywords) goes through the
    # checked pybind11 method. Both must give the same bits as the checked method alone.
    I, H = 6, 9
    m = rf.GRU(I, H, dtype=dtype)
    direct, checked = m.stream(batch_size=batch), m.stream(batch_size=batch)
    assert direct.step is not direct._core.step
    shape = (I,) if batch is None else (batch, I)
    other = np.float64 if dtype == np.float32 else np.float32
    rng = np.random.default_rng(4)
    base = rng.standard_normal(shape).astype(dtype)
    unaligned = np.frombuffer(bytearray(base.nbytes + 1), dtype=dtype, offset=1).reshape(shape)
    unaligned[...] = base
    inputs = [
        base,
        base.astype(other),
        base.astype(base.dtype.newbyteorder()),
        np.repeat(base, 2, axis=-1)[..., ::2],  # strided
        unaligned,
        base.tolist(),
    ]
    readonly = base.copy()
    readonly.flags.writeable = False
    inputs.append(readonly)
    for i, x in enumerate(inputs):
        want = checked._core.step(np.ascontiguousarray(np.asarray(x), dtype=dtype))
        got = direct.step(x)
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"input {i}")
    out = np.empty_like(want)
    assert direct.step(x=base, out=out) is out
    np.testing.assert_array_equal(out, checked._core.step(base))
    # out= runs direct too where it is exact (positional or keyword, None as no out);
    # other outs (strided, other dtype, read-only, over x) go to the checked method.
    for call in (lambda o: direct.step(base, o), lambda o: direct.step(base, out=o)):
        want = checked._core.step(base)
        out = np.empty_like(want)
        assert call(out) is out
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(call(None), checked._core.step(base))
    strided = np.zeros(want.shape[:-1] + (2 * H,), dtype)[..., ::2]
    assert direct.step(base, out=strided) is strided
    np.testing.assert_array_equal(strided, checked._core.step(base))
    with pytest.raises(TypeError, match="out"):
        direct.step(base, out=np.empty_like(want, dtype=other))
    frozen = np.empty_like(want)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        direct.step(base, out=frozen)
    np.testing.assert_array_equal(direct.state, checked.state)
    with pytest.raises(ValueError, match="x"):
        direct.step(np.zeros((2, I + 1), dtype))
    with pytest.raises(TypeError):
        direct.step()
    with pytest.raises(TypeError):
        direct.step(base, out=None, extra=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_plain_call_direct_path_matches_forward(mode, dtype, batch):
    # m(x, state) hands inputs usable as they are to the engine's direct callable and
    # everything else to forward(); either way the result must be forward()'s, bit for bit.
    T, I, H, L = 3, 6, 9, 2
    m = getattr(rf, mode.split("_")[0])(I, H, num_layers=L, bidirectional=True, dtype=dtype,
                                        **({"nonlinearity": "relu"} if mode == "RNN_RELU"
                                           else {}))
    rng = np.random.default_rng(5)
    lead = (T,) if batch is None else (T, batch)
    sshape = (2 * L, H) if batch is None else (2 * L, batch, H)
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    parts = [rng.standard_normal(sshape).astype(dtype) for _ in range(2 if mode == "LSTM" else 1)]
    state = tuple(parts) if mode == "LSTM" else parts[0]
    other = np.float64 if dtype == np.float32 else np.float32
    unaligned = np.frombuffer(bytearray(x.nbytes + 1), dtype=dtype, offset=1).reshape(x.shape)
    unaligned[...] = x

    def same(got, want):
        (gy, gs), (wy, ws) = got, want
        assert gy.dtype == dtype and gy.shape == wy.shape
        np.testing.assert_array_equal(gy, wy)
        assert type(gs) is type(ws)
        for a, b in zip(flat_state(gs), flat_state(ws)):
            assert a.shape == b.shape and a.dtype == dtype
            np.testing.assert_array_equal(a, b)

    # exact inputs take the direct path
    for st in (None, state):
        assert m._direct_call(x, st, 0) is not NotImplemented
        same(m(x, st), m.forward(x, st))
    # anything else is forward()'s business, with the same answer
    for xi in (x.astype(other), unaligned, np.repeat(x, 2, axis=-1)[..., ::2], x.tolist()):
        assert m._direct_call(xi, state, 0) is NotImplemented
        same(m(xi, state), m.forward(np.asarray(xi, dtype=dtype), state))
    odd = [p.astype(other) for p in parts]
    odd_state = tuple(odd) if mode == "LSTM" else odd[0]
    assert m._direct_call(x, odd_state, 0) is NotImplemented
    same(m(x, odd_state), m.forward(x, odd_state))
    if mode == "LSTM":
        assert m._direct_call(x, list(state), 0) is NotImplemented
        same(m(x, list(state)), m.forward(x, state))
    # bad input still gets forward()'s errors
    with pytest.raises(ValueError, match="x must have shape"):
        m(np.zeros(lead + (I + 1,), dtype))
    with pytest.raises(ValueError, match="state"):
        m(x, tuple(p[:1] for p in parts) if mode == "LSTM" else parts[0][:1])
    with pytest.raises(ValueError, match="at least one time step"):
        m(np.zeros((0,) + lead[1:] + (I,), dtype))
    if mode != "LSTM":
        with pytest.raises(TypeError, match="not a tuple"):
            m(x, (state,))


def test_direct_call_keeps_its_engine_alive():
    m = rf.LSTM(4, 8)
    x = np.ones((2, 1, 4), np.float32)
    want = m(x)[0]
    call = m._direct_call
    del m
    gc.collect()
    np.testing.assert_array_equal(call(x, None, 0)[0], want)


def test_plain_call_runs_a_subclass_forward():
    class Doubled(rf.GRU):
        def forward(self, x, state=None, lengths=None, training=False, *, starts=None):
            y, h = super().forward(x, state, lengths, training, starts=starts)
            return 2 * y, h

    m, ref = Doubled(3, 4, seed=1), rf.GRU(3, 4, seed=1)
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(m(x)[0], 2 * ref(x)[0])


def test_plain_call_keeps_layout_options():
    # batch_first and stateful layers keep forward()'s handling of layout and carried state.
    x = np.random.default_rng(2).standard_normal((2, 5, 3)).astype(np.float32)  # (B, T, I)
    m = rf.GRU(3, 4, batch_first=True, seed=1)
    ref = rf.GRU(3, 4, seed=1)
    y, h = m(x)
    want_y, want_h = ref(np.ascontiguousarray(x.transpose(1, 0, 2)))
    np.testing.assert_array_equal(y, want_y.transpose(1, 0, 2))
    np.testing.assert_array_equal(h, want_h)
    s = rf.LSTM(3, 4, stateful=True, seed=1)
    ref = rf.LSTM(3, 4, seed=1)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    s(xt[:2])
    y2, _ = s(xt[2:])
    _, st = ref(xt[:2])
    np.testing.assert_array_equal(y2, ref(xt[2:], st)[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_plain_call_direct_path_batch_first_and_stateful(mode):
    # One step of a batch-first layer, and a stateful layer's batched steps, take the direct
    # path too (forward() is made to fail below to prove it), with forward()'s results.
    B, I, H, T = 3, 5, 7, 4
    cls = getattr(rf, mode)
    xs = np.random.default_rng(8).standard_normal((T, B, I)).astype(np.float32)
    ref = cls(I, H, num_layers=2, seed=3)
    want_y, want_st, st = [], [], None
    for t in range(T):
        y, st = ref.forward(xs[t:t + 1], st)
        want_y.append(y[0])
        want_st.append(st)

    def no_forward(*args, **kwargs):
        raise AssertionError("took forward()")

    for kwargs in ({"batch_first": True}, {"stateful": True},
                   {"batch_first": True, "stateful": True}):
        m = cls(I, H, num_layers=2, seed=3, **kwargs)
        m.forward = no_forward
        st = None
        for t in range(T):
            x = np.ascontiguousarray(xs[t][:, None, :] if m.batch_first else xs[t:t + 1])
            y, st = m(x, None if m.stateful else st)
            assert y.shape == ((B, 1, H) if m.batch_first else (1, B, H))
            np.testing.assert_array_equal(y.reshape(B, H), want_y[t])
            for a, b in zip(flat_state(st), flat_state(want_st[t])):
                np.testing.assert_array_equal(a, b)
            if m.stateful:  # the carried state is a copy of the returned one
                for a in flat_state(st):
                    a[...] = 0
        del m.forward  # the class's forward() again
        if m.stateful:
            # the carried state came through every step, untouched by the zeroed returns
            x0 = np.ascontiguousarray(xs[0][:, None, :] if m.batch_first else xs[:1])
            np.testing.assert_array_equal(m(x0)[0].reshape(B, H),
                                          ref.forward(xs[:1], want_st[-1])[0][0])
            with pytest.raises(ValueError, match="batch"):
                m(x0[:2] if m.batch_first else x0[:, :2])
            m.reset_states()
            np.testing.assert_array_equal(m(x0)[0].reshape(B, H), ref.forward(xs[:1])[0][0])
        if m.batch_first:  # a strided step (a slice of a longer batch) goes to forward()
            long_x = np.ascontiguousarray(xs.transpose(1, 0, 2))
            m.reset_states()
            np.testing.assert_array_equal(m(long_x[:, :1])[0].reshape(B, H), want_y[0])


def test_direct_step_keeps_its_stream_alive():
    m = rf.LSTM(4, 8)
    want = m.stream().step(np.ones(4, np.float32))
    step = m.stream().step  # the Stream object and then the model go out of scope
    del m
    gc.collect()
    np.testing.assert_array_equal(step(np.ones(4, np.float32)), want)


@pytest.mark.parametrize("batch", [None, 2])
def test_direct_step_reuses_only_outputs_nothing_else_can_reach(batch):
    # A step writes into an output it returned before only where nothing else refers to
    # it: outputs kept by the caller, a view, a memoryview or a weak reference stay as
    # they were; a dropped output's memory is written again (no allocation per step).
    I, H, T = 5, 7, 12
    m = rf.LSTM(I, H)
    ref = m.stream(batch_size=batch)
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((T, I) if batch is None else (T, batch, I)).astype(np.float32)
    want = [ref._core.step(x).copy() for x in xs]  # the checked method: a new array each
    s = m.stream(batch_size=batch)
    kept = s.step(xs[0])
    view = s.step(xs[1])[1:]
    mv = memoryview(s.step(xs[2]))
    y3 = s.step(xs[3])
    weak = weakref.ref(y3)
    del y3
    dropped = s.step(xs[4])  # y3, free but for the weak reference, was not written
    assert weak() is not None and weak() is not dropped
    np.testing.assert_array_equal(weak(), want[3])
    address = dropped.ctypes.data
    del dropped
    blocker = np.empty_like(want[4])  # takes the memory of an array freed just now
    again = s.step(xs[5])
    assert again.ctypes.data == address != blocker.ctypes.data  # dropped, not freed: reused
    np.testing.assert_array_equal(again, want[5])
    held = again
    for t in range(6, T):
        y = s.step(xs[t])  # the loop `y = s.step(x)`: y and the last output alternate
        np.testing.assert_array_equal(y, want[t])
        np.testing.assert_array_equal(held, want[t - 1])
        held = y
    np.testing.assert_array_equal(kept, want[0])
    np.testing.assert_array_equal(view, want[1][1:])
    np.testing.assert_array_equal(np.asarray(mv), want[2])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_plain_call_reuses_only_outputs_nothing_else_can_reach(mode):
    # The loop `y, state = m(x_t, state)` writes each call's y and state into the arrays of
    # the call before last (dropped by then), and never into arrays still referred to.
    I, H, B, T = 4, 6, 3, 10
    m = getattr(rf, mode)(I, H)
    xs = np.random.default_rng(2).standard_normal((T, 1, B, I)).astype(np.float32)
    want_y, _ = m.forward(xs[:, 0])
    def parts(st):
        return st if isinstance(st, tuple) else (st,)

    state, kept = None, []
    for t in range(T):
        y, state = m(xs[t], state)
        np.testing.assert_array_equal(y[0], want_y[t])
        if t % 3 == 0:
            kept.append((t, y, [p.copy() for p in parts(state)], parts(state)))
    for t, y, copies, arrays in kept:  # later calls left what was kept alone
        np.testing.assert_array_equal(y[0], want_y[t])
        for c, a in zip(copies, arrays):
            np.testing.assert_array_equal(a, c)
    fresh = getattr(rf, mode)(I, H)
    y, state = fresh(xs[0], None)
    address = y.ctypes.data
    del y
    blocker = np.empty((1, B, H), np.float32)  # takes the memory of an array freed just now
    y, _ = fresh(xs[1], state)
    assert y.ctypes.data == address != blocker.ctypes.data  # dropped, not freed: reused
    y_long = m(np.zeros((20000, B, I), np.float32))[0]  # over 1 MiB: not kept for reuse
    gone = weakref.ref(y_long)
    del y_long
    assert gone() is None


@pytest.mark.parametrize("count", ["process", "own"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_long_stream_probing_thread_counts(mode, count):
    # A stream on more than one thread (the process-wide count, or its own) times its
    # steps and runs each cycle of 256 on one thread or on all (cpp/engine.h): 600 steps
    # hold probe steps of both choices and, unless one was far faster, three cycles; they
    # must give what the whole sequence gives.
    previous = rf.get_num_threads()
    rf.set_num_threads(2)
    try:
        m = getattr(rf, mode)(16, 40)
        x = np.random.default_rng(3).standard_normal((600, 16)).astype(np.float32)
        s = m.stream() if count == "process" else m.stream(num_threads=2)
        if count == "own":
            rf.set_num_threads(1)  # no bearing on a stream with a count of its own
        got = np.stack([s.step(x_t) for x_t in x])
        want, state = m(x)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        for a, b in zip(flat_state(s.state), flat_state(state)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    finally:
        rf.set_num_threads(0)
        if rf.get_num_threads() != previous:  # the session had set one explicitly
            rf.set_num_threads(previous)


def test_streams_of_one_model_in_threads():
    m = rf.LSTM(32, 64, num_layers=2)
    xs = np.random.default_rng(1).standard_normal((4, 50, 32)).astype(np.float32)
    want = [m(x[:, None, :])[0][:, 0] for x in xs]
    got = [None] * len(xs)

    def run(i):
        s = m.stream()
        got[i] = np.stack([s.step(x) for x in xs[i]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_stream_threads_setting():
    m = rf.RNN(16, 32, num_threads=2)
    inherited = m.stream()  # the model's own count, not the process-wide one
    assert inherited.num_threads == 2 and inherited._core.num_threads == 2
    assert rf.RNN(16, 32).stream()._core.num_threads == 0
    s = m.stream(num_threads=1)
    assert s.num_threads == 1 and s._core.num_threads == 1
    s.num_threads = None
    assert s.num_threads is None and s._core.num_threads == 0
    with pytest.raises(ValueError, match="num_threads"):
        s.num_threads = -1
    with pytest.raises(TypeError, match="num_threads"):
        m.stream(num_threads=1.5)
    x = np.ones(16, np.float32)
    np.testing.assert_allclose(s.step(x), m(x[None])[0][0], rtol=1e-6)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spaced_step_rows_read_in_place(isa, mode, dtype):
    # A step sliced from a batch-first (B, T, I) array, x[:, t:t+1] for the plain call and
    # x[:, t] for a stream, has rows T * I values apart: both read them where they lie
    # (forward() is made to fail below to prove it for the plain call), with the results
    # of contiguous copies. Rows that are not a whole number of rows apart, or run
    # backwards, take the converting path and give the same results.
    B, T, I, H = 3, 6, 5, 7
    cls = getattr(rf, mode)
    m = cls(I, H, num_layers=2, batch_first=True, dtype=dtype, seed=2)
    x = np.random.default_rng(9).standard_normal((B, T, I)).astype(dtype)
    want, _ = m(x)

    def no_forward(*args, **kwargs):
        raise AssertionError("took forward()")

    m.forward = no_forward
    st, ys = None, []
    for t in range(T):
        y, st = m(x[:, t:t + 1], st)
        ys.append(y)
    del m.forward
    np.testing.assert_array_equal(np.concatenate(ys, axis=1), want)
    s = m.stream(batch_size=B)
    np.testing.assert_array_equal(np.stack([s.step(x[:, t]) for t in range(T)], axis=1), want)
    wide = np.zeros((B, T, I + 1), dtype)  # rows (I + 1) values apart: not whole rows
    wide[:, :, :I] = x
    s.reset()
    np.testing.assert_array_equal(np.stack([s.step(wide[:, t, :I]) for t in range(T)], 1), want)
    st, ys = None, []
    for t in range(T):
        y, st = m(wide[:, t:t + 1, :I], st)
        ys.append(y)
    np.testing.assert_array_equal(np.concatenate(ys, axis=1), want)
    back = x[::-1]  # negative batch stride
    s.reset()
    np.testing.assert_array_equal(np.stack([s.step(back[:, t]) for t in range(T)], 1),
                                  m(np.ascontiguousarray(back))[0])
