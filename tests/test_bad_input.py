"""Bad input gets a clear exception naming the offending argument, and never a crash.

Every call with a malformed argument must raise ValueError or TypeError (MemoryError for a
model too large to allocate) with a message that names the argument, leave the model usable
and leave the caller's arrays untouched. The riskiest checks (the low-level engine, huge
allocations, NaN/inf data) run in a subprocess, so a segfault fails one test instead of
killing pytest.
"""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnfast as rf

KINDS = ["LSTM", "GRU", "RNN"]
BACKENDS = {"fast": rf, "reference": rf.reference}
I, H, T, B = 3, 4, 5, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(kind, backend="fast", *args, **kwargs):
    kwargs.setdefault("seed", 0)
    return getattr(BACKENDS[backend], kind)(*args or (I, H), **kwargs)


def state_for(kind, shape, fill=0.0, dtype=np.float32):
    h = np.full(shape, fill, dtype)
    return (h, h + 0.5) if kind == "LSTM" else h


def run_python(code, timeout=60, env=None):
    """Runs `code` in a fresh interpreter; a crash there is only a failed test here."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def assert_ok_with_address_space(limit, code):
    """Runs `code` in a fresh interpreter whose address space is capped at `limit` bytes (so a
    huge allocation fails instead of swapping); it must exit cleanly printing OK."""
    proc = run_python("import resource\n"
                      f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
                      + textwrap.dedent(code))
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "OK"


def assert_clean_exit(proc):
    assert proc.returncode == 0, (f"subprocess exited with {proc.returncode} "
                                  f"(negative = killed by that signal)\nstdout:\n{proc.stdout}"
                                  f"\nstderr:\n{proc.stderr}")


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    return request.param


@pytest.fixture
def x():
    return np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)


# ---------------------------------------------------------------------------- x


@pytest.mark.parametrize("shape", [(I,), (1, T, B, I), (1, 1, T, B, I)])
def test_x_wrong_ndim(kind, backend, shape):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=r"^x must be 3-D .*got shape"):
        m(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=r"^x must be 3-D"):
        m.forward(np.zeros(shape, np.float32), training=True)


def test_x_scalar_message_reports_its_shape(kind):
    # A 0-d x must be reported as shape (), not as the (1,) np.ascontiguousarray makes.
    with pytest.raises(ValueError, match=r"^x must be 3-D .*got shape \(\)"):
        make(kind)(np.float32(1.0))


@pytest.mark.parametrize("shape", [(T, B, I + 1), (T, B, 1), (T, I - 1), (B, T, I + 2)])
def test_x_wrong_feature_size(kind, backend, shape):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=rf"^x must have shape .*input_size {I} features"):
        m(np.zeros(shape, np.float32))


def test_x_batch_first_message(kind):
    m = make(kind, batch_first=True)
    with pytest.raises(ValueError, match=r"^x must have shape \(B, T, 3\)"):
        m(np.zeros((B, T, I + 1), np.float32))


@pytest.mark.parametrize("shape", [(0, B, I), (T, 0, I), (0, 0, I), (0, I)])
def test_x_empty(kind, backend, shape):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=r"^x must have at least one time step and one batch"):
        m(np.zeros(shape, np.float32))


def test_x_empty_batch_first(kind):
    m = make(kind, batch_first=True)
    with pytest.raises(ValueError, match=r"^x must have at least one time step"):
        m(np.zeros((B, 0, I), np.float32))
    with pytest.raises(ValueError, match=r"^x must have at least one time step"):
        m(np.zeros((0, T, I), np.float32))


@pytest.mark.parametrize("bad", [
    pytest.param(np.full((T, B, I), "a"), id="str-array"),
    pytest.param([[["a", "b", "c"]]], id="str-list"),
    pytest.param(np.zeros((T, B, I), dtype=object), id="object-array"),
    pytest.param(np.zeros((T, B, I), dtype=complex), id="complex"),
    pytest.param(np.zeros((T, B, I), dtype=np.complex64), id="complex64"),
    pytest.param(None, id="None"),
    pytest.param({"x": 1}, id="dict"),
    pytest.param([[[1.0, 2.0, 3.0]], [[1.0, 2.0]]], id="ragged"),
    pytest.param(np.zeros((T, B, I), dtype="datetime64[s]"), id="datetime"),
])
def test_x_non_numeric(kind, backend, bad):
    m = make(kind, backend)
    with pytest.raises(TypeError, match=r"^x must"):
        m(bad)
    with pytest.raises(TypeError, match=r"^x must"):
        m.forward(bad, training=True)


# ---------------------------------------------------------------------------- state


def test_state_wrong_shape(kind, backend, x):
    m = make(kind, backend, num_layers=2)
    first = r"state\[0\] \(h\)" if kind == "LSTM" else r"state"
    for shape in [(1, B, H), (2, B + 1, H), (2, B, H + 1), (2, H), (B, H), (2, 1, B, H)]:
        with pytest.raises(ValueError, match=rf"^{first} must have shape \(2, 2, 4\)"):
            m(x, state=state_for(kind, shape))
    # Unbatched input wants (L*D, H) state.
    with pytest.raises(ValueError, match=rf"^{first} must have shape \(2, 4\)"):
        m(x[:, 0], state=state_for(kind, (2, 1, H)))


def test_lstm_cell_state_wrong_shape(backend, x):
    m = make("LSTM", backend)
    h = np.zeros((1, B, H), np.float32)
    with pytest.raises(ValueError, match=r"^state\[1\] \(c\) must have shape \(1, 2, 4\)"):
        m(x, state=(h, np.zeros((1, B, H + 1), np.float32)))


def test_lstm_state_structure(backend, x):
    m = make("LSTM", backend)
    h = np.zeros((1, B, H), np.float32)
    for bad in [h, (h,), (h, h, h), [h], {"h": h, "c": h}, 3.0]:
        with pytest.raises(TypeError, match=r"^state must be a tuple \(h, c\)"):
            m(x, state=bad)


@pytest.mark.parametrize("kind_", ["GRU", "RNN"])
def test_single_state_given_tuple(kind_, backend, x):
    m = make(kind_, backend)
    h = np.zeros((1, B, H), np.float32)
    for bad in [(h,), (h, h)]:
        with pytest.raises(TypeError, match=r"^state must be one array h .*not a tuple"):
            m(x, state=bad)


def test_state_non_numeric(kind, backend, x):
    m = make(kind, backend)
    bad = np.full((1, B, H), "a")
    label = r"state\[0\] \(h\)" if kind == "LSTM" else r"state"
    with pytest.raises(TypeError, match=rf"^{label} must hold real numbers"):
        m(x, state=(bad, bad) if kind == "LSTM" else bad)
    cbad = np.zeros((1, B, H), complex)
    with pytest.raises(TypeError, match=rf"^{label} must hold real numbers"):
        m(x, state=(cbad, cbad) if kind == "LSTM" else cbad)


# ---------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("lengths", [[0, T], [T + 1, T], [-1, T], [T, 0], [T, 10**12],
                                     [T, -(2**40)], np.array([2**64 - 1, 1], np.uint64)],
                         ids=["0", "T+1", "-1", "second-0", "1e12", "-2**40", "uint64-max"])
def test_lengths_out_of_range(kind, backend, x, lengths):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=rf"^lengths must lie in \[1, {T}\]"):
        m(x, lengths=lengths)
    with pytest.raises(ValueError, match=r"^lengths must lie in"):
        m.forward(x, lengths=np.array(lengths), training=True)


@pytest.mark.parametrize("bad", [0, T + 1])
def test_lengths_and_starts_out_of_range_in_large_batches(kind, backend, bad):
    """Batches over 256 rows take NumPy's reductions for the range checks, smaller ones a
    list's min and max: both name the argument and the range."""
    big = np.zeros((T, 300, I), np.float32)
    m = make(kind, backend)
    lengths = np.full(300, T)
    lengths[137] = bad
    with pytest.raises(ValueError, match=rf"^lengths must lie in \[1, {T}\]"):
        m(big, lengths=lengths)
    starts = np.zeros(300, np.int64)
    starts[299] = 1 if bad else -1
    with pytest.raises(ValueError, match=r"^starts must satisfy 0 <= start and start \+ length"):
        m(big, lengths=np.full(300, T), starts=starts)


@pytest.mark.parametrize("lengths", [[T], [T, T, T], [], [[T, T]], T])
def test_lengths_wrong_count(kind, backend, x, lengths):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=r"^lengths must have shape \(2,\)"):
        m(x, lengths=lengths)


@pytest.mark.parametrize("lengths", [
    pytest.param([1.5, 2], id="fraction"),
    pytest.param([np.nan, 2], id="nan"),
    pytest.param([np.inf, 2], id="inf"),
    pytest.param(["a", "b"], id="str"),
    pytest.param(np.array([2, 3], dtype=object), id="object"),
    pytest.param([True, True], id="bool"),
    pytest.param(np.array([2, 3], dtype=complex), id="complex"),
])
def test_lengths_non_integer(kind, backend, x, lengths):
    m = make(kind, backend)
    with pytest.raises(TypeError, match=r"^lengths must be integers"):
        m(x, lengths=lengths)


def test_lengths_ragged(kind, x):
    # Not numpy's own "inhomogeneous shape" error, which names no argument.
    m = make(kind)
    with pytest.raises((TypeError, ValueError), match=r"^lengths"):
        m(x, lengths=[[1, 2], [3]])


def test_lengths_integral_floats_accepted(kind, x):
    m = make(kind)
    a, _ = m(x, lengths=[3.0, 5.0])
    b, _ = m(x, lengths=np.array([3, 5], np.uint8))
    np.testing.assert_array_equal(a, b)


def test_lengths_with_unbatched_input(kind, backend, x):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=r"^lengths cannot be used with unbatched"):
        m(x[:, 0], lengths=[T])
    with pytest.raises(ValueError, match=r"^lengths cannot be used with unbatched"):
        m(x[:, 0], lengths=T)


# ---------------------------------------------------------------------------- backward


def test_backward_without_forward(kind, backend):
    m = make(kind, backend)
    with pytest.raises(ValueError, match=r"^backward\(\) needs a preceding forward"):
        m.backward(np.zeros((T, B, H), np.float32))


def test_backward_after_inference_only(kind, backend, x):
    m = make(kind, backend)
    m(x)
    m.forward(x, training=False)
    with pytest.raises(ValueError, match=r"^backward\(\) needs a preceding forward"):
        m.backward(np.zeros((T, B, H), np.float32))


def test_backward_after_training_then_inference(kind, backend, x):
    m = make(kind, backend)
    m.forward(x, training=True)
    m(x)  # an inference call discards what backward needed
    with pytest.raises(ValueError, match=r"^backward\(\) needs a preceding forward"):
        m.backward(np.zeros((T, B, H), np.float32))


def test_backward_after_failed_training_forward(kind, backend, x):
    m = make(kind, backend)
    with pytest.raises(ValueError):
        m.forward(x[..., :2], training=True)
    with pytest.raises(ValueError, match=r"^backward\(\) needs a preceding forward"):
        m.backward(np.zeros((T, B, H), np.float32))


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_dy_wrong_shape(kind, backend, x, layout):
    m = make(kind, backend, bidirectional=True, batch_first=layout == "batch_first")
    xin = x[:, 0] if layout == "unbatched" else x
    y, _ = m.forward(xin, training=True)
    want = r"\(" + ", ".join(map(str, y.shape)) + r"\)"
    for bad in [y[..., :H], y[:-1], y[None], y.reshape(-1), y.T]:
        if bad.shape == y.shape:
            continue
        with pytest.raises(ValueError, match=rf"^dy must have the shape of the forward output "
                                             rf"{want}"):
            m.backward(bad)
    with pytest.raises(TypeError, match=r"^dy must hold real numbers"):
        m.backward(y.astype(complex))
    with pytest.raises(TypeError, match=r"^dy must"):
        m.backward(None)
    m.backward(y)  # still usable


def test_dstate_wrong_shape(kind, backend, x):
    m = make(kind, backend, num_layers=2)
    y, _ = m.forward(x, training=True)
    label = r"dstate\[0\] \(h\)" if kind == "LSTM" else r"dstate"
    for shape in [(1, B, H), (2, B, H + 1), (2, H)]:
        with pytest.raises(ValueError, match=rf"^{label} must have shape \(2, 2, 4\)"):
            m.backward(y, dstate=state_for(kind, shape))
    if kind == "LSTM":
        h = np.zeros((2, B, H), np.float32)
        with pytest.raises(ValueError, match=r"^dstate\[1\] \(c\) must have shape"):
            m.backward(y, dstate=(h, h[:1]))
        with pytest.raises(TypeError, match=r"^dstate must be a tuple \(h, c\)"):
            m.backward(y, dstate=h)
    else:
        with pytest.raises(TypeError, match=r"^dstate must be one array h"):
            m.backward(y, dstate=(np.zeros((2, B, H)),))
    m.backward(y, dstate=state_for(kind, (2, B, H)))  # still usable


# ---------------------------------------------------------------------------- state_dict


def _params_of(m):
    return {k: v.copy() for k, v in m.state_dict().items()}


def test_state_dict_missing_entry(kind, backend):
    m = make(kind, backend)
    before = _params_of(m)
    sd = m.state_dict()
    del sd["bias_hh_l0"]
    with pytest.raises(ValueError, match=r"state_dict does not match.*missing keys "
                                         r"\['bias_hh_l0'\]"):
        m.load_state_dict(sd)
    _assert_same_params(m, before)


def test_state_dict_extra_entry(kind, backend):
    m = make(kind, backend)
    sd = m.state_dict()
    sd["weight_ih_l1"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match=r"state_dict does not match.*unexpected keys "
                                         r"\['weight_ih_l1'\]"):
        m.load_state_dict(sd)
    m.load_state_dict(sd, strict=False)  # non-strict ignores it


@pytest.mark.parametrize("name,delta", [("weight_ih_l0", (0, 1)), ("weight_hh_l0", (1, 0)),
                                        ("bias_ih_l0", (1,)), ("bias_hh_l0", None)])
def test_state_dict_misshapen_entry(kind, backend, name, delta):
    m = make(kind, backend)
    before = _params_of(m)
    sd = m.state_dict()
    good = sd[name].shape
    sd[name] = (np.zeros(tuple(s + d for s, d in zip(good, delta)), np.float32) if delta
                else np.zeros(good + (1,), np.float32))
    for strict in (True, False):
        with pytest.raises(ValueError, match=rf"^state_dict\['{name}'\] must have shape"):
            m.load_state_dict(sd, strict=strict)
    # A failed load leaves every parameter as it was (nothing half-loaded).
    _assert_same_params(m, before)


@pytest.mark.parametrize("bad", [
    pytest.param("abc", id="str"), pytest.param(None, id="None"),
    pytest.param(np.zeros((4, 4), dtype=object), id="object"),
    pytest.param(np.zeros((4, 4), dtype=complex), id="complex"),
    pytest.param([[1.0, 2.0], [3.0]], id="ragged")])
def test_state_dict_non_numeric(kind, backend, bad):
    m = make(kind, backend)
    before = _params_of(m)
    sd = m.state_dict()
    sd["weight_hh_l0"] = bad
    with pytest.raises(TypeError, match=r"^state_dict\['weight_hh_l0'\] must"):
        m.load_state_dict(sd)
    _assert_same_params(m, before)


@pytest.mark.parametrize("bad", [None, [("weight_ih_l0", np.zeros(3))], "weights", 3])
def test_state_dict_not_a_mapping(kind, backend, bad):
    m = make(kind, backend)
    with pytest.raises(TypeError, match=r"^state_dict must be a mapping"):
        m.load_state_dict(bad)


def _assert_same_params(m, before):
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)


# ---------------------------------------------------------------------------- constructor


@pytest.mark.parametrize("arg", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -1, -(10**20)])
def test_non_positive_sizes(kind, backend, arg, value):
    sizes = {"input_size": I, "hidden_size": H, "num_layers": 1, arg: value}
    with pytest.raises(ValueError, match=rf"^{arg} must be positive, got {value}"):
        getattr(BACKENDS[backend], kind)(**sizes)


@pytest.mark.parametrize("arg", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [2.5, 2.0, True, False, "3", None, np.float64(3.0), [3]])
def test_non_int_sizes(kind, backend, arg, value):
    sizes = {"input_size": I, "hidden_size": H, "num_layers": 1, arg: value}
    with pytest.raises(TypeError, match=rf"^{arg} must be an int"):
        getattr(BACKENDS[backend], kind)(**sizes)


def test_numpy_int_sizes_accepted(kind):
    m = make(kind, "fast", np.int64(I), np.int32(H), num_layers=np.uint8(2))
    assert (m.input_size, m.hidden_size, m.num_layers) == (I, H, 2)
    assert all(type(v) is int for v in (m.input_size, m.hidden_size, m.num_layers))


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, -1e-12, float("nan"), float("inf")])
def test_dropout_out_of_range(kind, backend, value):
    with pytest.raises(ValueError, match=r"^dropout must be in \[0, 1\)"):
        make(kind, backend, num_layers=2, dropout=value)


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1], 0.1j])
def test_dropout_non_numeric(kind, backend, value):
    with pytest.raises(TypeError, match=r"^dropout must be a number"):
        make(kind, backend, num_layers=2, dropout=value)


@pytest.mark.parametrize("value", ["sigmoid", "Tanh", "RELU", "", None, 1, ["tanh"]])
def test_unknown_nonlinearity(backend, value):
    with pytest.raises(ValueError, match=r"^nonlinearity must be 'tanh' or 'relu'"):
        BACKENDS[backend].RNN(I, H, nonlinearity=value)


@pytest.mark.parametrize("value", [np.float16, np.int32, np.complex64, "int8"])
def test_unsupported_dtype(kind, backend, value):
    with pytest.raises(TypeError, match=r"^dtype must be float32 or float64"):
        make(kind, backend, dtype=value)


def test_unknown_dtype_names_argument(kind):
    # Not np.dtype's own "data type 'foo' not understood", which names no argument.
    with pytest.raises(TypeError, match=r"dtype must"):
        make(kind, dtype="not-a-dtype")


@pytest.mark.parametrize("value", ["abc", 2.5, True])
def test_num_threads_wrong_type(value):
    # Checked at construction, not at the first call, and never silently truncated.
    for kind_ in KINDS:
        with pytest.raises(TypeError, match=r"num_threads"):
            make(kind_, num_threads=value)


@pytest.mark.parametrize("value", [-1, 2**40])
def test_num_threads_out_of_range(value):
    for kind_ in KINDS:
        with pytest.raises(ValueError, match=r"num_threads"):
            make(kind_, num_threads=value)


def test_num_threads_valid_values_accepted(kind, x):
    ys = [make(kind, num_threads=n)(x)[0] for n in (None, 0, 1, 2, np.int64(2))]
    for y in ys[1:]:
        np.testing.assert_allclose(y, ys[0], rtol=0, atol=1e-6)


def test_set_num_threads_wrong_type():
    before = rf.get_num_threads()
    for bad in ["abc", 2.5, None]:
        with pytest.raises(TypeError, match=r"set_num_threads"):
            rf.set_num_threads(bad)
    assert rf.get_num_threads() == before


# ---------------------------------------------------------------------------- memory


def test_model_too_large_raises_memory_error():
    # A limit on the address space turns any attempt to really allocate into a failure
    # instead of swapping; the layers must refuse before trying.
    assert_ok_with_address_space(8 << 30, """
        import numpy as np, rnnfast as rf
        for backend in (rf, rf.reference):
            for cls, kw in [(backend.LSTM, {}), (backend.GRU, {}), (backend.RNN, {}),
                            (backend.RNN, {"nonlinearity": "relu"}),
                            (backend.LSTM, {"bidirectional": True, "num_layers": 3})]:
                for I, H in [(10**6, 10**6), (10, 10**6), (2**40, 1), (2**62, 2**62)]:
                    try:
                        cls(I, H, **kw)
                    except MemoryError as e:
                        assert "GiB" in str(e), str(e)
                    else:
                        raise AssertionError(f"{cls} {I} {H}: no MemoryError")
        # The process is fine afterwards.
        y, _ = rf.LSTM(3, 4, seed=0)(np.zeros((2, 1, 3), np.float32))
        assert y.shape == (2, 1, 4)
        print("OK")
    """)


def test_huge_num_layers_raises_memory_error_before_allocating():
    # The size check must not itself need memory in proportion to the model (e.g. by
    # listing 4 * num_layers parameter names before checking).
    assert_ok_with_address_space(1 << 30, """
        import rnnfast as rf
        for backend in (rf, rf.reference):
            for cls in (backend.LSTM, backend.GRU, backend.RNN):
                try:
                    cls(3, 4, num_layers=10**9, bidirectional=True)
                except MemoryError as e:
                    assert "GiB" in str(e), f"{cls}: bare MemoryError {e!r}"
                else:
                    raise AssertionError(f"{cls}: no MemoryError")
        print("OK")
    """)


def test_engine_too_large_raises_memory_error():
    assert_ok_with_address_space(8 << 30, """
        from rnnfast import _core
        for E in (_core.EngineF32, _core.EngineF64):
            for cell in (_core.LSTM, _core.GRU, _core.RNN_TANH):
                for I, H in [(10**6, 10**6), (10**5, 10**5)]:
                    try:
                        E(cell, I, H, 1, False, True)
                    except MemoryError:
                        pass
                    else:
                        raise AssertionError(f"{E} {cell} {I} {H}: no MemoryError")
        print("OK")
    """)


# ---------------------------------------------------------------------------- low-level engine

_ENGINE_SCRIPT = r"""
import numpy as np
from rnnfast import _core

def attempt(label, fn):
    try:
        fn()
    except Exception as e:
        print(f"{label}|{type(e).__name__}|{str(e).splitlines()[0] if str(e) else ''}",
              flush=True)
    else:
        print(f"{label}|no exception|", flush=True)

E = _core.EngineF32
f32 = np.float32
attempt("ctor-cell-7", lambda: E(7, 3, 4, 1, False, True))
attempt("ctor-cell-neg", lambda: E(-1, 3, 4, 1, False, True))
attempt("ctor-input-0", lambda: E(_core.LSTM, 0, 4, 1, False, True))
attempt("ctor-hidden-neg", lambda: E(_core.GRU, 3, -4, 1, False, True))
attempt("ctor-layers-0", lambda: E(_core.RNN_TANH, 3, 4, 0, False, True))
attempt("ctor-overflow", lambda: E(_core.LSTM, 2**31, 4, 1, False, True))

for cell in ("LSTM", "GRU", "RNN_TANH"):
    e = E(getattr(_core, cell), 3, 4, 2, True, True)
    x = np.zeros((5, 2, 3), f32)
    st = np.zeros((4, 2, 4), f32)
    p = cell + "-"
    attempt(p + "fwd-x-1d", lambda: e.forward(np.zeros(3, f32)))
    attempt(p + "fwd-x-2d", lambda: e.forward(np.zeros((5, 3), f32)))
    attempt(p + "fwd-x-4d", lambda: e.forward(np.zeros((1, 5, 2, 3), f32)))
    attempt(p + "fwd-x-features", lambda: e.forward(np.zeros((5, 2, 4), f32)))
    attempt(p + "fwd-x-T0", lambda: e.forward(np.zeros((0, 2, 3), f32)))
    attempt(p + "fwd-x-B0", lambda: e.forward(np.zeros((5, 0, 3), f32)))
    attempt(p + "fwd-x-str", lambda: e.forward("abc"))
    attempt(p + "fwd-x-None", lambda: e.forward(None))
    attempt(p + "fwd-h0-shape", lambda: e.forward(x, np.zeros((4, 2, 5), f32)))
    attempt(p + "fwd-h0-1d", lambda: e.forward(x, np.zeros(3, f32)))
    attempt(p + "fwd-h0-str", lambda: e.forward(x, "abc"))
    if cell == "LSTM":
        attempt(p + "fwd-c0-shape", lambda: e.forward(x, st, np.zeros((1,), f32)))
    attempt(p + "fwd-len-0", lambda: e.forward(x, None, None, np.array([0, 1])))
    attempt(p + "fwd-len-T+1", lambda: e.forward(x, None, None, np.array([6, 1])))
    attempt(p + "fwd-len-neg", lambda: e.forward(x, None, None, np.array([-1, 1])))
    attempt(p + "fwd-len-int32-wrap", lambda: e.forward(x, None, None, np.array([2**32 + 1, 1])))
    attempt(p + "fwd-len-count", lambda: e.forward(x, None, None, np.array([1, 1, 1])))
    attempt(p + "fwd-len-2d", lambda: e.forward(x, None, None, np.array([[1, 1]])))
    attempt(p + "fwd-len-str", lambda: e.forward(x, None, None, "ab"))
    attempt(p + "fwd-dropout", lambda: e.forward(x, None, None, None, True, 1.5))
    attempt(p + "fwd-dropout-nan", lambda: e.forward(x, None, None, None, True, float("nan")))
    attempt(p + "bwd-no-forward", lambda: e.backward(np.zeros((5, 2, 8), f32)))
    e.forward(x, None, None, None, False)
    attempt(p + "bwd-after-inference", lambda: e.backward(np.zeros((5, 2, 8), f32)))
    e.forward(x, None, None, None, True)
    attempt(p + "bwd-dy-shape", lambda: e.backward(np.zeros((5, 2, 4), f32)))
    attempt(p + "bwd-dy-1d", lambda: e.backward(np.zeros(3, f32)))
    attempt(p + "bwd-dy-T", lambda: e.backward(np.zeros((6, 2, 8), f32)))
    attempt(p + "bwd-dh-shape", lambda: e.backward(np.zeros((5, 2, 8), f32), st[:1]))
    if cell == "LSTM":
        attempt(p + "bwd-dc-shape", lambda: e.backward(np.zeros((5, 2, 8), f32), st, st[:, :1]))
    attempt(p + "assign-shape", lambda: e.assign_params(np.zeros(3, f32)))
    attempt(p + "assign-str", lambda: e.assign_params("abc"))
    # Still works after all that.
    y, hn, cn = e.forward(x, st, st if cell == "LSTM" else None, np.array([5, 3]), True)
    dx, dh0, dc0 = e.backward(np.ones_like(y))
    assert y.shape == (5, 2, 8) and dx.shape == (5, 2, 3) and np.isfinite(dx).all()
    print(p + "usable|ok|", flush=True)
print("END", flush=True)
"""

_CELLS = ("LSTM", "GRU", "RNN_TANH")
_ENGINE_CASES = (
    [(c, ("ValueError",)) for c in ("ctor-cell-7", "ctor-cell-neg", "ctor-input-0",
                                     "ctor-hidden-neg", "ctor-layers-0")]
    + [("ctor-overflow", ("ValueError", "TypeError", "OverflowError", "MemoryError"))]
    + [(f"{cell}-{c}", exc) for cell in _CELLS for c, exc in [
        ("fwd-x-1d", ("ValueError",)), ("fwd-x-2d", ("ValueError",)),
        ("fwd-x-4d", ("ValueError",)), ("fwd-x-features", ("ValueError",)),
        ("fwd-x-T0", ("ValueError",)), ("fwd-x-B0", ("ValueError",)),
        ("fwd-x-str", ("TypeError", "ValueError")), ("fwd-x-None", ("TypeError", "ValueError")),
        ("fwd-h0-shape", ("ValueError",)), ("fwd-h0-1d", ("ValueError",)),
        ("fwd-h0-str", ("TypeError",)),
        ("fwd-len-0", ("ValueError",)), ("fwd-len-T+1", ("ValueError",)),
        ("fwd-len-neg", ("ValueError",)), ("fwd-len-int32-wrap", ("ValueError", "OverflowError")),
        ("fwd-len-count", ("ValueError",)), ("fwd-len-2d", ("ValueError",)),
        ("fwd-len-str", ("TypeError", "ValueError")),
        ("fwd-dropout", ("ValueError",)), ("fwd-dropout-nan", ("ValueError",)),
        ("bwd-no-forward", ("ValueError",)), ("bwd-after-inference", ("ValueError",)),
        ("bwd-dy-shape", ("ValueError",)), ("bwd-dy-1d", ("ValueError",)),
        ("bwd-dy-T", ("ValueError",)), ("bwd-dh-shape", ("ValueError",)),
        ("assign-shape", ("ValueError",)), ("assign-str", ("TypeError", "ValueError")),
        ("usable", ("ok",))]
       + ([("fwd-c0-shape", ("ValueError",)), ("bwd-dc-shape", ("ValueError",))]
          if cell == "LSTM" else [])]
)
# Names the message must mention, where the engine has one to name.
_ENGINE_NAMES = {"fwd-x-": "x", "fwd-h0-": "h0", "fwd-c0-": "c0", "fwd-len-": "lengths",
                 "fwd-dropout": "dropout", "bwd-dy-": "dy", "bwd-dh-": "dh_n", "bwd-dc-": "dc_n",
                 "bwd-no": "backward", "bwd-after": "backward", "assign-": "params"}


@pytest.fixture(scope="module")
def engine_results():
    proc = run_python(_ENGINE_SCRIPT)
    results = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            label, exc, msg = line.split("|", 2)
            results[label] = (exc, msg)
    return proc, results


@pytest.mark.parametrize("label,expected", _ENGINE_CASES, ids=[c for c, _ in _ENGINE_CASES])
def test_engine_rejects_bad_call(engine_results, label, expected):
    proc, results = engine_results
    assert label in results, (f"the engine subprocess died (exit {proc.returncode}) before "
                              f"{label!r}\nstderr:\n{proc.stderr[-3000:]}")
    exc, msg = results[label]
    assert exc in expected, f"{label}: got {exc}: {msg!r}, expected one of {expected}"
    if exc in ("ValueError", "TypeError") and "-str" not in label:
        for prefix, name in _ENGINE_NAMES.items():
            if label.split("-", 1)[-1].startswith(prefix) or label.startswith(prefix):
                assert re.search(rf"\b{name}\b", msg), \
                    f"{label}: message {msg!r} does not name {name!r}"


def test_engine_subprocess_exits_cleanly(engine_results):
    proc, _ = engine_results
    assert_clean_exit(proc)
    assert proc.stdout.rstrip().endswith("END")


# ---------------------------------------------------------------------------- NaN and inf


def test_nan_and_inf_inputs_subprocess():
    """NaN at (t0, b0) touches only batch element b0; inf/huge values neither crash nor
    diverge from the NumPy reference; NaN in padding past `lengths` touches nothing."""
    proc = run_python("""
        import numpy as np, rnnfast as rf
        np.seterr(all="ignore")
        rng = np.random.default_rng(0)
        kinds = [("LSTM", {}), ("GRU", {}), ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]
        for name, extra in kinds:
            for L, bidi in [(1, False), (2, True)]:
                kw = dict(num_layers=L, bidirectional=bidi, seed=3, **extra)
                fast = getattr(rf, name)(5, 8, **kw)
                ref = getattr(rf.reference, name)(5, 8, dtype=np.float32, **kw)
                ref.load_state_dict(fast.state_dict())
                for T, B in [(6, 3), (24, 4)]:   # few-row and many-row input projections
                    x = rng.standard_normal((T, B, 5)).astype(np.float32)
                    y0, s0 = fast.forward(x, training=True)
                    dy = rng.standard_normal(y0.shape).astype(np.float32)
                    dx0, _ = fast.backward(dy)
                    others = [b for b in range(B) if b != 1]
                    for val in (np.nan, np.inf, -np.inf, 1e30, -1e30):
                        xx = x.copy()
                        xx[2, 1, 0] = val
                        y, s = fast.forward(xx, training=True)
                        dx, _ = fast.backward(dy)
                        # Other batch elements are bit-identical to the clean run.
                        assert np.array_equal(y[:, others], y0[:, others]), (name, val)
                        assert np.array_equal(dx[:, others], dx0[:, others]), (name, val)
                        hs = list(s) if isinstance(s, tuple) else [s]
                        h0s = list(s0) if isinstance(s0, tuple) else [s0]
                        for a, b in zip(hs, h0s):
                            assert np.array_equal(a[:, others], b[:, others]), (name, val)
                        if not bidi:  # a one-way layer: steps before t0 are untouched
                            assert np.array_equal(y[:2, 1], y0[:2, 1]), (name, val)
                        if val != val:
                            assert np.isnan(y[2:, 1, :8]).all(), (name, "nan not propagated")
                        yr, _ = ref(xx)
                        assert np.array_equal(np.isnan(y), np.isnan(yr)), (name, val)
                        # relu passes 1e30 on: float32 rounding of huge sums differs a bit
                        rtol = 1e-3 if abs(val) == 1e30 else 1e-5
                        np.testing.assert_allclose(y, yr, rtol=rtol, atol=1e-5,
                                                   equal_nan=True, err_msg=f"{name} {val}")
                    # NaN and inf past a sequence's end take no part at all.
                    lengths = np.full(B, T)
                    lengths[1] = 2
                    clean = x.copy()
                    clean[2:, 1] = 0
                    dirty = x.copy()
                    dirty[2:, 1] = np.nan
                    dirty[3:, 1, 0] = np.inf
                    yc, sc = fast.forward(clean, lengths=lengths, training=True)
                    fast.zero_grad()
                    dxc, dsc = fast.backward(dy)
                    gc = {k: v.copy() for k, v in fast.grads.items()}
                    yd, sd = fast.forward(dirty, lengths=lengths, training=True)
                    fast.zero_grad()
                    dxd, dsd = fast.backward(dy)
                    assert np.array_equal(yc, yd), name
                    assert np.array_equal(dxc, dxd), name
                    for k in gc:
                        assert np.array_equal(gc[k], fast.grads[k]), (name, k)
                    yi, _ = fast(dirty, lengths=lengths)
                    assert np.array_equal(yi, yc), name
                    assert not np.isnan(yd).any(), name
        print("OK")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "OK"


def test_nan_in_state_and_weights_subprocess():
    proc = run_python("""
        import numpy as np, rnnfast as rf
        for name in ("LSTM", "GRU", "RNN"):
            m = getattr(rf, name)(3, 4, seed=0)
            x = np.ones((4, 3, 3), np.float32)
            h = np.zeros((1, 3, 4), np.float32)
            hn = h.copy(); hn[0, 0, 0] = np.nan
            s0 = (h, h) if name == "LSTM" else h
            s1 = (hn, h) if name == "LSTM" else hn
            y0, _ = m(x, state=s0)
            y1, _ = m(x, state=s1)
            assert np.array_equal(y0[:, 1:], y1[:, 1:]), name
            assert np.isnan(y1[:, 0]).all(), name
            sd = m.state_dict()
            sd["weight_hh_l0"][:] = np.inf
            m.load_state_dict(sd)   # accepted: values are the caller's business
            y, _ = m.forward(x, training=True)
            m.backward(np.ones_like(y))
        print("OK")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "OK"


# ---------------------------------------------------------------------------- inputs kept


def _snapshot(*arrays):
    return [np.array(a, copy=True) for a in arrays]


def test_inputs_never_modified(kind, backend):
    rng = np.random.default_rng(2)
    m = make(kind, backend, num_layers=2, bidirectional=True)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    st = state_for(kind, (4, B, H), 0.3)
    parts = list(st) if kind == "LSTM" else [st]
    lengths = np.array([T, 2])
    lengths_list = [T, 2]
    keep = _snapshot(x, *parts, lengths)
    y, _ = m(x, state=st, lengths=lengths)
    y, _ = m.forward(x, state=st, lengths=lengths, training=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dst = state_for(kind, (4, B, H), -0.2)
    dparts = list(dst) if kind == "LSTM" else [dst]
    keep_b = _snapshot(dy, *dparts)
    m.backward(dy, dstate=dst)
    for a, b in zip([x, *parts, lengths, dy, *dparts], keep + keep_b):
        np.testing.assert_array_equal(a, b)
    assert lengths_list == [T, 2]
    m(x, state=st, lengths=lengths_list)
    assert lengths_list == [T, 2]

    sd = m.state_dict()
    sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
    keep_sd = {k: v.copy() for k, v in sd64.items()}
    m.load_state_dict(sd64)
    for k in sd64:
        np.testing.assert_array_equal(sd64[k], keep_sd[k])
        assert sd64[k].dtype == np.float64


def test_model_does_not_alias_caller_arrays(kind, backend):
    rng = np.random.default_rng(3)
    m = make(kind, backend)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    y_ref, _ = m.forward(x.copy(), training=True)
    dy = np.ones_like(y_ref)
    m.zero_grad()
    dx_ref, _ = m.backward(dy)
    g_ref = {k: v.copy() for k, v in m.grads.items()}

    # Scribbling on x between forward and backward changes nothing.
    m.zero_grad()
    y, _ = m.forward(x, training=True)
    x[...] = 1e6
    dx, _ = m.backward(dy)
    np.testing.assert_array_equal(dx, dx_ref)
    for k in g_ref:
        np.testing.assert_array_equal(m.grads[k], g_ref[k])

    # Neither state_dict() results nor arrays given to load_state_dict are shared.
    sd = m.state_dict()
    xx = rng.standard_normal((T, B, I)).astype(np.float32)
    before, _ = m(xx)
    m.load_state_dict(sd)
    for v in sd.values():
        v[...] = 7.0
    after, _ = m(xx)
    np.testing.assert_array_equal(before, after)
    m.state_dict()["weight_ih_l0"][...] = 3.0
    np.testing.assert_array_equal(m(xx)[0], before)
    # Nor are earlier outputs.
    y1, _ = m(xx)
    y1[...] = 5.0
    np.testing.assert_array_equal(m(xx)[0], before)


def unaligned(a):
    """A C-contiguous copy of `a` one byte off its element alignment (as np.frombuffer at an
    odd offset gives, reading a binary record)."""
    u = np.frombuffer(bytearray(a.nbytes + 1), dtype=a.dtype, offset=1).reshape(a.shape)
    u[...] = a
    assert u.flags.c_contiguous and not u.flags.aligned
    return u


@pytest.mark.parametrize("layout", ["float64", "fortran", "strided", "transposed",
                                    "readonly", "list", "int", "unaligned"])
def test_unusual_layouts_match_contiguous_float32(kind, layout):
    rng = np.random.default_rng(4)
    m = make(kind, num_layers=2, bidirectional=True)
    base = rng.standard_normal((2 * T, B, I))
    if layout == "int":
        base = np.round(base * 2)
    x32 = np.ascontiguousarray(base[::2], dtype=np.float32)
    if layout == "float64":
        xin = base[::2].astype(np.float32).astype(np.float64)
    elif layout == "fortran":
        xin = np.asfortranarray(x32)
    elif layout == "strided":
        big = np.zeros((2 * T, B, I), np.float32)
        big[::2] = x32
        xin = big[::2]
    elif layout == "transposed":
        xin = np.ascontiguousarray(x32.transpose(1, 0, 2)).transpose(1, 0, 2)
    elif layout == "readonly":
        xin = x32.copy()
        xin.flags.writeable = False
    elif layout == "list":
        xin = x32.tolist()
    elif layout == "unaligned":
        xin = unaligned(x32)
    else:
        xin = x32.astype(np.int64)
    if layout in ("fortran", "strided", "transposed"):
        assert not xin.flags.c_contiguous

    st32 = state_for(kind, (4, B, H), 0.25)
    parts = list(st32) if kind == "LSTM" else [st32]
    odd = [unaligned(p) if layout == "unaligned" else np.asfortranarray(p.astype(np.float64))
           for p in parts]
    st_odd = tuple(odd) if kind == "LSTM" else odd[0]
    lengths = np.array([T, 3], np.int32)

    y_a, s_a = m.forward(x32, state=st32, lengths=lengths, training=True)
    dy = rng.standard_normal(y_a.shape).astype(np.float32)
    m.zero_grad()
    dx_a, ds_a = m.backward(dy, dstate=st32)
    g_a = {k: v.copy() for k, v in m.grads.items()}

    y_b, s_b = m.forward(xin, state=st_odd, lengths=[T, 3], training=True)
    dy_odd = unaligned(dy) if layout == "unaligned" else np.asfortranarray(dy.astype(np.float64))
    m.zero_grad()
    dx_b, ds_b = m.backward(dy_odd, dstate=st_odd)

    np.testing.assert_array_equal(y_a, y_b)
    for a, b in zip(np.atleast_1d(s_a) if kind != "LSTM" else s_a,
                    np.atleast_1d(s_b) if kind != "LSTM" else s_b):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(dx_a, dx_b)
    for a, b in zip(ds_a if kind == "LSTM" else [ds_a], ds_b if kind == "LSTM" else [ds_b]):
        np.testing.assert_array_equal(a, b)
    for k in g_a:
        np.testing.assert_array_equal(m.grads[k], g_a[k], err_msg=k)
    assert y_b.dtype == np.float32 and dx_b.dtype == np.float32


def test_bindings_align_their_inputs():
    # NumPy calls an array at any byte offset C-contiguous; the kernels read aligned T*
    # (a misaligned float* is undefined behaviour, and vectorized code may trap on it).
    # The conversion every binding applies to its inputs copies such an array, and only
    # such an array.
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    u = unaligned(base)
    got = rf._core._as_input(u)
    assert got.flags.aligned and got.flags.c_contiguous and got is not u
    np.testing.assert_array_equal(got, base)
    assert rf._core._as_input(base) is base


def test_unaligned_arrays_match_aligned(kind):
    rng = np.random.default_rng(7)
    m = make(kind)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    st = state_for(kind, (1, B, H), 0.25)
    st_u = tuple(unaligned(p) for p in st) if kind == "LSTM" else unaligned(st)
    # The plain call on one step (the engine's direct path declines unaligned arrays).
    (y_a, s_a), (y_b, s_b) = m(x[:1], st), m(unaligned(x[:1]), st_u)
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(np.asarray(s_a), np.asarray(s_b))
    # A stream's step: x unaligned through the direct callable; an unaligned `out` is
    # filled through a copy (the kernels write aligned ones in place).
    s1, s2 = m.stream(batch_size=B), m.stream(batch_size=B)
    for t in range(T):
        np.testing.assert_array_equal(s1.step(x[t]), s2.step(unaligned(x[t])))
    out = unaligned(np.zeros((B, H), np.float32))
    np.testing.assert_array_equal(s2.step(x[0], out=out), s1.step(x[0]))
    assert not out.flags.aligned and np.any(out != 0)
    # Feed-forward layers and a fused loss.
    d = rf.Dense(I, H, seed=0)
    y_a, _ = d.forward(x[0], training=True)
    dx_a = d.backward(np.ones_like(y_a))
    y_b, _ = d.forward(unaligned(x[0]), training=True)
    dx_b = d.backward(unaligned(np.ones_like(y_a)))
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(dx_a, dx_b)
    labels = np.array([1, 3], np.int64)
    loss = rf.losses.get_loss("sparse_categorical_crossentropy")
    (l_a, g_a, *_), (l_b, g_b, *_) = loss(y_a, labels), loss(unaligned(y_a), unaligned(labels))
    assert l_a == l_b
    np.testing.assert_array_equal(g_a, g_b)


def test_batch_first_and_unbatched_strided(kind):
    rng = np.random.default_rng(5)
    m = make(kind, batch_first=True)
    xb = rng.standard_normal((B, 2 * T, I)).astype(np.float32)
    a, _ = m(xb[:, ::2])
    b, _ = m(np.ascontiguousarray(xb[:, ::2]))
    np.testing.assert_array_equal(a, b)
    xu = rng.standard_normal((2 * T, I + 2))
    a, _ = m(xu[::2, 1:I + 1])
    b, _ = m(np.ascontiguousarray(xu[::2, 1:I + 1], dtype=np.float32))
    np.testing.assert_array_equal(a, b)


def test_float64_model_accepts_float32_input(kind):
    rng = np.random.default_rng(6)
    m = make(kind, dtype=np.float64)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    a, _ = m(x)
    b, _ = m(x.astype(np.float64))
    assert a.dtype == np.float64
    np.testing.assert_array_equal(a, b)


def test_model_usable_after_errors(kind, backend, x):
    m = make(kind, backend)
    good, _ = m(x)
    bad_calls = [
        lambda: m(x[..., :1]), lambda: m(np.zeros(3)), lambda: m("x"),
        lambda: m(x, lengths=[0, 1]), lambda: m(x, state=(1, 2, 3)),
        lambda: m.backward(np.zeros((T, B, H))), lambda: m.load_state_dict({}),
        lambda: m.forward(x[:0], training=True),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            call()
    again, _ = m(x)
    np.testing.assert_array_equal(good, again)
    y, _ = m.forward(x, training=True)
    m.backward(np.ones_like(y))
