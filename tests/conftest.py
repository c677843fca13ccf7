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
