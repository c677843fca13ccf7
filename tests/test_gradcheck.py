"""Finite-difference gradient checks of the C++ engine in float64 (an oracle independent
of the NumPy reference)."""

import numpy as np
import pytest
from conftest import flat_state, make_pair, state_like

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def loss_fn(model, x, state, lengths, dy, dfin, rng_state):
    model._rng.bit_generator.state = rng_state  # the same dropout mask every call
    y, fin = model.forward(x, state, lengths, training=True)
    total = float((y * dy).sum())
    for f, d in zip(flat_state(fin), dfin):
        total += float((f * d).sum())
    return total


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_finite_differences(isa, mode, dropout):
    T, B, I, H, L = 4, 3, 3, 5, 2
    fast, _ = make_pair(mode, I, H, L, bidirectional=True, dropout=dropout, seed=3)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, I))
    if mode == "RNN_RELU":  # keep pre-activations away from the kink at 0
        x *= 0.5
    state = state_like(mode, (L * 2, B, H), rng, np.float64)
    lengths = [4, 2, 3]
    rng_state = fast._rng.bit_generator.state
    y, fin = fast.forward(x, state, lengths, training=True)
    dy = rng.standard_normal(y.shape)
    dfin = [rng.standard_normal(f.shape) for f in flat_state(fin)]

    fast._rng.bit_generator.state = rng_state
    fast.forward(x, state, lengths, training=True)
    fast.zero_grad()
    dx, dstate = fast.backward(dy, tuple(dfin) if mode == "LSTM" else dfin[0])
    analytic_params = {k: v.copy() for k, v in fast.grads.items()}

    eps = 1e-6

    def numeric(arr, idx, rebuild):
        old = arr[idx]
        arr[idx] = old + eps
        rebuild()
        plus = loss_fn(fast, x, state, lengths, dy, dfin, rng_state)
        arr[idx] = old - eps
        rebuild()
        minus = loss_fn(fast, x, state, lengths, dy, dfin, rng_state)
        arr[idx] = old
        rebuild()
        return (plus - minus) / (2 * eps)

    def check(analytic, arr, rebuild, what, max_entries=None):
        idxs = list(np.ndindex(arr.shape))
        if max_entries is not None and len(idxs) > max_entries:
            pick = rng.choice(len(idxs), max_entries, replace=False)
            idxs = [idxs[i] for i in pick]
        for idx in idxs:
            num = numeric(arr, idx, rebuild)
            assert abs(num - analytic[idx]) <= 1e-6 + 1e-5 * abs(num), (what, idx, num,
                                                                         analytic[idx])

    check(dx, x, lambda: None, "dx")
    for a, s in zip(flat_state(dstate), flat_state(state)):
        check(a, s, lambda: None, "dstate0")
    views = fast._param_views()
    for name, view in views.items():
        check(analytic_params[name], view, fast._params_changed, name, max_entries=25)
