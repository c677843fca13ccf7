import contextlib

import numpy as np
import pytest

import rnnfast as rf
from rnnfast import _core

ALL_ISAS = rf.supported_isas()


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Runs a test once per kernel build this CPU supports (avx512, avx2, generic)."""
    before = _core.isa()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)


# The float64 references of _core._activation's kinds: 0 exp, 1 sigmoid, 2 tanh.
ACTIVATIONS = (np.exp, lambda v: 1 / (1 + np.exp(-v)), np.tanh)


def assert_activation_within(kind, x, got, rtol=1e-6):
    """got (float32 activation `kind` of x) within rtol of float64, exact where that is 0."""
    want = ACTIVATIONS[kind](np.asarray(x, np.float64))
    got = np.asarray(got, np.float64)
    nz = want != 0
    assert np.max(np.abs(got - want)[nz] / np.abs(want[nz])) < rtol, kind
    assert not got[~nz].any(), kind


def make_pair(mode, I, H, L=1, bidirectional=False, bias=True, batch_first=False, dropout=0.0,
              dtype=np.float64, seed=0):
    """The C++ model and the NumPy reference with the same weights and dropout seed."""
    kwargs = dict(num_layers=L, bias=bias, batch_first=batch_first, dropout=dropout,
                  bidirectional=bidirectional, dtype=dtype, seed=seed)
    if mode in ("RNN_TANH", "RNN_RELU"):
        kwargs["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
        fast, ref = rf.RNN(I, H, **kwargs), rf.reference.RNN(I, H, **kwargs)
    else:
        fast, ref = getattr(rf, mode)(I, H, **kwargs), getattr(rf.reference, mode)(I, H, **kwargs)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def state_like(mode, shape, rng, dtype):
    h = rng.standard_normal(shape).astype(dtype)
    if mode == "LSTM":
        return (h, rng.standard_normal(shape).astype(dtype))
    return h


def flat_state(state):
    return list(state) if isinstance(state, tuple) else [state]


@contextlib.contextmanager
def teams_of_up_to(n):
    """Teams of up to n threads on any machine (_core._set_pool_cpus) for the block: a
    2-core machine runs the splits a 16-core one makes, its threads taking turns."""
    _core._set_pool_cpus(n)
    try:
        yield
    finally:
        _core._set_pool_cpus(0)
