"""Bad input gets a clear exception naming the argument; the process survives; inputs are
never modified."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnfast as rf

CLASSES = [rf.LSTM, rf.GRU, rf.RNN]


def make(cls, *args, **kw):
    return cls(*args, **kw)


def state_for(cls, shape):
    h = np.zeros(shape, np.float32)
    return (h, h.copy()) if cls is rf.LSTM else h


@pytest.mark.parametrize("cls", CLASSES)
class TestForwardInputs:
    def test_x_rank(self, cls):
        m = cls(3, 4)
        with pytest.raises(ValueError, match=r"x must be 3-D"):
            m(np.zeros(5, np.float32))
        with pytest.raises(ValueError, match=r"x must be 3-D"):
            m(np.zeros((2, 3, 4, 3), np.float32))

    def test_feature_size(self, cls):
        m = cls(3, 4, batch_first=True)
        with pytest.raises(ValueError, match=r"x must have shape \(B, T, 3\)"):
            m(np.zeros((2, 5, 4), np.float32))
        with pytest.raises(ValueError, match=r"x must have shape \(T, 3\)"):
            m(np.zeros((5, 2), np.float32))

    def test_empty(self, cls):
        m = cls(3, 4)
        with pytest.raises(ValueError, match="at least one time step"):
            m(np.zeros((0, 2, 3), np.float32))
        with pytest.raises(ValueError, match="at least one time step"):
            m(np.zeros((4, 0, 3), np.float32))

    @pytest.mark.parametrize("bad", [np.array([["a", "b", "c"]]), np.zeros((2, 1, 3), complex),
                                     np.array([[[object()] * 3]]), "abc", [[1, 2], [3]]])
    def test_non_numeric(self, cls, bad):
        with pytest.raises(TypeError, match="x must"):
            cls(3, 4)(bad)

    def test_state_shape(self, cls):
        m = cls(3, 4, num_layers=2)
        x = np.zeros((5, 2, 3), np.float32)
        with pytest.raises(ValueError, match=r"must have shape \(2, 2, 4\)"):
            m(x, state_for(cls, (1, 2, 4)))
        with pytest.raises(ValueError, match=r"must have shape \(2, 4\)"):
            m(x[:, 0], state_for(cls, (2, 2, 4)))

    def test_state_structure(self, cls):
        m = cls(3, 4)
        x = np.zeros((5, 2, 3), np.float32)
        h = np.zeros((1, 2, 4), np.float32)
        if cls is rf.LSTM:
            with pytest.raises(TypeError, match=r"state must be a tuple \(h, c\)"):
                m(x, h)
            with pytest.raises(TypeError, match=r"state must be a tuple \(h, c\)"):
                m(x, (h, h, h))
        else:
            with pytest.raises(TypeError, match="state must be one array"):
                m(x, (h, h))

    @pytest.mark.parametrize("lengths,err,match", [
        ([0, 5], ValueError, r"lengths must lie in \[1, 5\]"),
        ([6, 5], ValueError, r"lengths must lie in \[1, 5\]"),
        ([-1, 5], ValueError, r"lengths must lie in \[1, 5\]"),
        ([5], ValueError, r"lengths must have shape \(2,\)"),
        ([5, 5, 5], ValueError, r"lengths must have shape \(2,\)"),
        ([2.5, 5], TypeError, "lengths must be integers"),
        (["a", "b"], TypeError, "lengths must be integers"),
    ])
    def test_lengths(self, cls, lengths, err, match):
        with pytest.raises(err, match=match):
            cls(3, 4)(np.zeros((5, 2, 3), np.float32), lengths=lengths)

    def test_lengths_unbatched(self, cls):
        with pytest.raises(ValueError, match="lengths cannot be used with unbatched"):
            cls(3, 4)(np.zeros((5, 3), np.float32), lengths=[5])


@pytest.mark.parametrize("cls", CLASSES)
class TestBackwardInputs:
    def test_backward_needs_training_forward(self, cls):
        m = cls(3, 4)
        with pytest.raises(ValueError, match="backward.*training=True"):
            m.backward(np.zeros((5, 2, 4), np.float32))
        m(np.zeros((5, 2, 3), np.float32))  # inference keeps nothing
        with pytest.raises(ValueError, match="backward.*training=True"):
            m.backward(np.zeros((5, 2, 4), np.float32))

    def test_dy_shape(self, cls):
        m = cls(3, 4, bidirectional=True)
        m.forward(np.zeros((5, 2, 3), np.float32), training=True)
        with pytest.raises(ValueError, match=r"dy must have the shape of the forward output "
                                             r"\(5, 2, 8\)"):
            m.backward(np.zeros((5, 2, 4), np.float32))

    def test_dstate_shape(self, cls):
        m = cls(3, 4)
        m.forward(np.zeros((5, 2, 3), np.float32), training=True)
        with pytest.raises(ValueError, match=r"dstate.* must have shape \(1, 2, 4\)"):
            m.backward(np.zeros((5, 2, 4), np.float32), state_for(cls, (1, 3, 4)))


@pytest.mark.parametrize("cls", CLASSES)
class TestStateDict:
    def test_missing_extra_misshapen(self, cls):
        m = cls(3, 4)
        sd = m.state_dict()
        missing = dict(sd)
        del missing["weight_hh_l0"]
        with pytest.raises(ValueError, match=r"missing keys \['weight_hh_l0'\]"):
            m.load_state_dict(missing)
        with pytest.raises(ValueError, match=r"unexpected keys \['weight_ih_l1'\]"):
            m.load_state_dict({**sd, "weight_ih_l1": sd["weight_ih_l0"]})
        bad = dict(sd, bias_ih_l0=np.zeros(3, np.float32))
        with pytest.raises(ValueError, match=r"state_dict\['bias_ih_l0'\] must have shape"):
            m.load_state_dict(bad)
        with pytest.raises(TypeError, match=r"state_dict\['weight_ih_l0'\] must hold real"):
            m.load_state_dict(dict(sd, weight_ih_l0=np.full(sd["weight_ih_l0"].shape, "x")))
        with pytest.raises(TypeError, match="mapping"):
            m.load_state_dict([1, 2])
        # a failed load changes nothing
        np.testing.assert_array_equal(m.state_dict()["bias_ih_l0"], sd["bias_ih_l0"])


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("arg", ["input_size", "hidden_size", "num_layers"])
def test_sizes(cls, arg):
    kw = dict(input_size=3, hidden_size=4, num_layers=1)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"{arg} must be positive"):
            cls(**dict(kw, **{arg: bad}))
    for bad in (2.5, True, "3", None):
        with pytest.raises(TypeError, match=f"{arg} must be an int"):
            cls(**dict(kw, **{arg: bad}))


@pytest.mark.parametrize("cls", CLASSES)
def test_dropout_range(cls):
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            cls(3, 4, dropout=bad)
    with pytest.raises(TypeError, match="dropout must be a number"):
        cls(3, 4, dropout="0.5")


def test_nonlinearity_and_dtype():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        rf.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        rf.LSTM(3, 4, dtype=np.int32)


def run_python(code, timeout=120):
    """Runs code in a fresh interpreter, so that a crash fails one test, not the session."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def test_too_large_model_raises_memory_error():
    out = run_python("""
        import rnnfast as rf
        for args in [(10**6, 10**6), (10, 10**7), (3, 60000)]:
            try:
                rf.LSTM(*args)
            except MemoryError as e:
                print("MemoryError", e)
            else:
                print("no error for", args)
    """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("MemoryError") for line in lines), out.stdout


def test_low_level_engine_rejects_bad_shapes():
    out = run_python("""
        import numpy as np
        from rnnfast import _core
        e = _core.EngineF32(_core.LSTM, 3, 4, 2, True, True)
        cases = [
            lambda: e.forward(np.zeros((5, 3), np.float32)),
            lambda: e.forward(np.zeros((5, 2, 4), np.float32)),
            lambda: e.forward(np.zeros((0, 2, 3), np.float32)),
            lambda: e.forward(np.zeros((5, 2, 3), np.float32), np.zeros((1, 2, 4), np.float32)),
            lambda: e.forward(np.zeros((5, 2, 3), np.float32), None, np.zeros((4, 3, 4))),
            lambda: e.forward(np.zeros((5, 2, 3), np.float32), lengths=np.array([0, 5])),
            lambda: e.forward(np.zeros((5, 2, 3), np.float32), lengths=np.array([5])),
            lambda: e.forward(np.zeros((5, 2, 3), np.float32), dropout=1.0),
            lambda: e.backward(np.zeros((5, 2, 8), np.float32)),
            lambda: e.assign_params(np.zeros(3, np.float32)),
            lambda: _core.EngineF32(_core.LSTM, 0, 4, 1, False, True),
            lambda: _core.EngineF32(7, 3, 4, 1, False, True),
        ]
        for i, case in enumerate(cases):
            try:
                case()
            except (ValueError, TypeError) as exc:
                print(i, type(exc).__name__, exc)
            else:
                print(i, "no error")
        e.forward(np.zeros((5, 2, 3), np.float32), training=True)
        try:
            e.backward(np.zeros((5, 2, 4), np.float32))
        except ValueError as exc:
            print("dy", exc)
        print("alive")
    """)
    assert out.returncode == 0, out.stderr
    assert "no error" not in out.stdout, out.stdout
    assert out.stdout.strip().endswith("alive")
    assert "dy must have shape (5, 2, 8)" in out.stdout


def test_non_finite_inputs_do_not_crash():
    out = run_python("""
        import numpy as np
        import rnnfast as rf
        for cls in (rf.LSTM, rf.GRU, rf.RNN):
            m = cls(3, 4, num_layers=2, bidirectional=True)
            for v in (np.nan, np.inf, -np.inf, 1e38):
                x = np.full((6, 2, 3), v, np.float32)
                y, _ = m.forward(x, training=True)
                m.backward(np.ones_like(y))
        print("alive")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "alive", out.stderr


@pytest.mark.parametrize("cls", CLASSES)
def test_nan_affects_only_its_batch_element(cls):
    m = cls(3, 5, num_layers=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    y0, s0 = m(x)
    x[2, 1, 0] = np.nan
    y1, s1 = m(x)
    others = [0, 2, 3]
    np.testing.assert_array_equal(y1[:, others], y0[:, others])
    np.testing.assert_array_equal(y1[:2, 1], y0[:2, 1])  # before the NaN: unchanged
    assert np.isnan(y1[2:, 1]).all()
    for a, b in zip(s0 if isinstance(s0, tuple) else (s0,), s1 if isinstance(s1, tuple) else (s1,)):
        np.testing.assert_array_equal(a[:, others], b[:, others])


@pytest.mark.parametrize("cls", CLASSES)
def test_inputs_not_modified_and_layouts_accepted(cls):
    m = cls(3, 4, bidirectional=True, batch_first=True)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((2, 12, 3))
    x64 = base.copy()
    fortran = np.asfortranarray(base)
    strided = np.repeat(base, 2, axis=1)[:, ::2]
    state = state_for(cls, (2, 2, 4))
    lengths = np.array([12, 5])
    snapshot = [x64.copy(), fortran.copy(), strided.copy(), lengths.copy()]
    want, _ = m(base.astype(np.float32), state, lengths)
    for x in (x64, fortran, strided, base.tolist()):
        got, _ = m(x, state, lengths)
        np.testing.assert_array_equal(got, want)
    y, _ = m.forward(x64, state, lengths, training=True)
    dy = np.ones(y.shape)
    dy_copy = dy.copy()
    m.backward(dy, state)
    for a, b in zip([x64, fortran, strided, lengths], snapshot):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dy, dy_copy)
    sd = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    sd_copy = {k: v.copy() for k, v in sd.items()}
    m.load_state_dict(sd)
    for k in sd:
        np.testing.assert_array_equal(sd[k], sd_copy[k])
