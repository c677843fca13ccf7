"""Tests of the pure-NumPy reference implementation (python/rnnfast/_reference_math.py).

The module is loaded by file path so these tests do not depend on the compiled part of the package.
"""

import importlib.util
import pathlib
import zlib

import numpy as np
import pytest
from numpy.testing import assert_allclose

pytestmark = pytest.mark.filterwarnings("error")

_PATH = pathlib.Path(__file__).resolve().parents[1] / "python" / "rnnfast" / "_reference_math.py"
_spec = importlib.util.spec_from_file_location("rnnfast_reference_math_under_test", _PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def make_params(rng, mode, I, H, L, bidirectional, bias=True, scale=1.0, dtype=np.float64):
    G = GATES[mode]
    D = 2 if bidirectional else 1
    k = scale / np.sqrt(H)
    params = {}
    for layer in range(L):
        in_size = I if layer == 0 else D * H
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            params["weight_ih" + sfx] = rng.uniform(-k, k, (G * H, in_size)).astype(dtype)
            params["weight_hh" + sfx] = rng.uniform(-k, k, (G * H, H)).astype(dtype)
            if bias:
                params["bias_ih" + sfx] = rng.uniform(-k, k, (G * H,)).astype(dtype)
                params["bias_hh" + sfx] = rng.uniform(-k, k, (G * H,)).astype(dtype)
    return params


def loss_value(mode, params, x, h0, c0, lengths, L, bidir, dy, dhn, dcn, **kw):
    y, hn, cn, _ = ref.forward(mode, params, x, h0, c0, lengths, L, bidir, **kw)
    total = np.sum(y * dy) + np.sum(hn * dhn)
    if mode == "LSTM":
        total += np.sum(cn * dcn)
    return total


# pure-Python-int implementation of the dropout formula, independent of the module
M = 2**64


def py_mix(z):
    z = (z + 0x9E3779B97F4A7C15) % M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M
    return z ^ (z >> 31)


def py_mask_value(seed, layer, e, p):
    base = py_mix((seed % M) ^ ((layer + 1) * 0xD1B54A32D192ED03 % M))
    r = py_mix((base + e) % M)
    u = (r >> 40) * 2.0**-24
    return 0.0 if u < p else 1.0 / (1.0 - p)


# ----------------------------------------------------------------------------------------------------
# 1. against PyTorch
# ----------------------------------------------------------------------------------------------------

# name: (T, B, I, H, L, bidirectional, lengths, bias, given_states)
TORCH_CONFIGS = {
    "1layer_uni": (5, 3, 4, 6, 1, False, None, True, False),
    "2layer_bidir_h0": (6, 4, 5, 7, 2, True, None, True, True),
    "3layer_bidir_lengths": (7, 5, 4, 6, 3, True, [3, 7, 1, 5, 7], True, True),
    "odd_sizes": (37, 3, 45, 77, 2, True, [20, 37, 1], True, False),
    "no_bias": (6, 3, 4, 5, 2, True, [2, 6, 4], False, True),
    "no_bias_uni_lengths": (5, 4, 3, 5, 2, False, [5, 1, 3, 2], False, False),
}


def torch_reference(torch, mode, params, x, h0, c0, lengths, L, bidir, bias, dy, dhn, dcn):
    T, B, I = x.shape
    H = params["weight_hh_l0"].shape[1]
    if mode == "LSTM":
        module = torch.nn.LSTM(I, H, num_layers=L, bias=bias, bidirectional=bidir)
    elif mode == "GRU":
        module = torch.nn.GRU(I, H, num_layers=L, bias=bias, bidirectional=bidir)
    else:
        nonlin = "tanh" if mode == "RNN_TANH" else "relu"
        module = torch.nn.RNN(I, H, num_layers=L, nonlinearity=nonlin, bias=bias, bidirectional=bidir)
    module = module.double()
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in params.items()})

    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0t = torch.from_numpy(h0.copy()).requires_grad_()
    c0t = torch.from_numpy(c0.copy()).requires_grad_()
    hx = (h0t, c0t) if mode == "LSTM" else h0t
    if lengths is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.as_tensor(lengths, dtype=torch.int64), enforce_sorted=False
        )
        out, state = module(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    else:
        y, state = module(xt, hx)
    hn, cn = state if mode == "LSTM" else (state, None)
    loss = (y * torch.from_numpy(dy)).sum() + (hn * torch.from_numpy(dhn)).sum()
    if cn is not None:
        loss = loss + (cn * torch.from_numpy(dcn)).sum()
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    return {
        "y": y.detach().numpy(),
        "hn": hn.detach().numpy(),
        "cn": None if cn is None else cn.detach().numpy(),
        "dx": xt.grad.numpy(),
        "dh0": h0t.grad.numpy(),
        "dc0": c0t.grad.numpy() if mode == "LSTM" else None,
        "grads": grads,
    }


@pytest.mark.parametrize("config", list(TORCH_CONFIGS))
@pytest.mark.parametrize("mode", MODES)
def test_matches_torch_float64(mode, config):
    torch = pytest.importorskip("torch")
    T, B, I, H, L, bidir, lengths, bias, given_states = TORCH_CONFIGS[config]
    D = 2 if bidir else 1
    rng = np.random.default_rng(zlib.crc32(f"{mode}/{config}".encode()))
    params = make_params(rng, mode, I, H, L, bidir, bias=bias, scale=1.5)
    x = rng.standard_normal((T, B, I))
    if given_states:
        h0 = rng.standard_normal((L * D, B, H)) * 0.5
        c0 = rng.standard_normal((L * D, B, H)) * 0.5
        h0_ref, c0_ref = h0, c0
    else:
        h0 = np.zeros((L * D, B, H))
        c0 = np.zeros((L * D, B, H))
        h0_ref, c0_ref = None, None  # exercise the "zeros" default
    dy = rng.standard_normal((T, B, D * H))
    dhn = rng.standard_normal((L * D, B, H))
    dcn = rng.standard_normal((L * D, B, H))
    lengths_arr = None if lengths is None else np.array(lengths)

    y, hn, cn, cache = ref.forward(
        mode, params, x, h0_ref, c0_ref if mode == "LSTM" else None, lengths_arr, L, bidir, training=True
    )
    dx, dh0, dc0, grads = ref.backward(cache, dy, dhn, dcn if mode == "LSTM" else None)

    want = torch_reference(torch, mode, params, x, h0, c0, lengths, L, bidir, bias, dy, dhn, dcn)

    tol = dict(rtol=1e-9, atol=1e-11)
    assert y.shape == (T, B, D * H) and y.dtype == np.float64
    assert_allclose(y, want["y"], **tol)
    assert_allclose(hn, want["hn"], **tol)
    assert_allclose(dx, want["dx"], **tol)
    assert_allclose(dh0, want["dh0"], **tol)
    if mode == "LSTM":
        assert_allclose(cn, want["cn"], **tol)
        assert_allclose(dc0, want["dc0"], **tol)
    else:
        assert cn is None and dc0 is None
    assert set(grads) == set(params) == set(want["grads"])
    for name, g in grads.items():
        assert g.shape == params[name].shape, name
        assert_allclose(g, want["grads"][name], err_msg=name, **tol)


@pytest.mark.parametrize("mode", MODES)
def test_float32_close_to_float64(mode):
    rng = np.random.default_rng(3)
    T, B, I, H, L = 6, 3, 5, 8, 2
    params = make_params(rng, mode, I, H, L, True)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 2, 4])
    dy = rng.standard_normal((T, B, 2 * H))
    y64, hn64, _, c64 = ref.forward(mode, params, x, lengths=lengths, num_layers=L, bidirectional=True)
    dx64, _, _, g64 = ref.backward(c64, dy)
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    y32, hn32, cn32, c32 = ref.forward(mode, params32, x.astype(np.float32), lengths=lengths,
                                       num_layers=L, bidirectional=True)
    dx32, dh032, dc032, g32 = ref.backward(c32, dy.astype(np.float32))
    assert y32.dtype == hn32.dtype == dx32.dtype == dh032.dtype == np.float32
    for v in g32.values():
        assert v.dtype == np.float32
    assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    assert_allclose(hn32, hn64, rtol=1e-4, atol=1e-5)
    assert_allclose(dx32, dx64, rtol=1e-3, atol=1e-4)
    for k in g64:
        assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4, err_msg=k)
    # float64 params with a float32 input: computation happens in float32
    y_mixed, _, _, _ = ref.forward(mode, params, x.astype(np.float32), lengths=lengths,
                                   num_layers=L, bidirectional=True)
    assert y_mixed.dtype == np.float32
    assert_allclose(y_mixed, y32, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------
# 2. finite differences
# ----------------------------------------------------------------------------------------------------


def _central_diff(f, arr, index, eps=1e-6):
    old = arr[index]
    arr[index] = old + eps
    fp = f()
    arr[index] = old - eps
    fm = f()
    arr[index] = old
    return (fp - fm) / (2 * eps)


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("mode", MODES)
def test_finite_differences(mode, dropout):
    rng = np.random.default_rng(100 + MODES.index(mode) + (10 if dropout else 0))
    T, B, I, H, L = 4, 2, 3, 5, 2
    D = 2
    lengths = np.array([2, 4])
    params = make_params(rng, mode, I, H, L, True, scale=1.5)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L * D, B, H)) * 0.5
    c0 = rng.standard_normal((L * D, B, H)) * 0.5 if mode == "LSTM" else None
    dy = rng.standard_normal((T, B, D * H))
    dhn = rng.standard_normal((L * D, B, H))
    dcn = rng.standard_normal((L * D, B, H)) if mode == "LSTM" else None
    kw = dict(dropout=dropout, training=True, seed=1234)

    y, hn, cn, cache = ref.forward(mode, params, x, h0, c0, lengths, L, True, **kw)
    if dropout:
        # make sure the mask actually dropped something between the layers
        assert cache["masks"][1] is not None and np.any(cache["masks"][1] == 0)
    dx, dh0, dc0, grads = ref.backward(cache, dy, dhn, dcn)

    def f():
        return loss_value(mode, params, x, h0, c0, lengths, L, True, dy, dhn, dcn, **kw)

    tol = dict(rtol=1e-6, atol=1e-8)
    num_dx = np.array([_central_diff(f, x, idx) for idx in np.ndindex(x.shape)]).reshape(x.shape)
    assert_allclose(dx, num_dx, **tol)
    assert np.all(dx[lengths[None, :] <= np.arange(T)[:, None]] == 0)  # padded steps get zero grad
    num_dh0 = np.array([_central_diff(f, h0, idx) for idx in np.ndindex(h0.shape)]).reshape(h0.shape)
    assert_allclose(dh0, num_dh0, **tol)
    if mode == "LSTM":
        num_dc0 = np.array([_central_diff(f, c0, idx) for idx in np.ndindex(c0.shape)]).reshape(c0.shape)
        assert_allclose(dc0, num_dc0, **tol)
    for name, p in params.items():
        flat_indices = rng.choice(p.size, size=min(p.size, 6), replace=False)
        for fi in flat_indices:
            idx = np.unravel_index(fi, p.shape)
            assert_allclose(grads[name][idx], _central_diff(f, p, idx), err_msg=f"{name}{idx}", **tol)


# ----------------------------------------------------------------------------------------------------
# 3. dropout mask
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_values_and_fraction(p, dtype):
    shape = (64, 32, 128)
    m = ref.dropout_mask(7, 0, shape, p, dtype)
    assert m.shape == shape and m.dtype == dtype
    scale = dtype(1) / (dtype(1) - dtype(p))
    assert np.all((m == 0) | (m == scale))
    assert abs(np.mean(m == 0) - p) < 0.01


def test_dropout_mask_deterministic_and_distinct():
    shape = (10, 4, 30)
    a = ref.dropout_mask(5, 1, shape, 0.5, np.float64)
    assert np.array_equal(a, ref.dropout_mask(5, 1, shape, 0.5, np.float64))
    assert not np.array_equal(a, ref.dropout_mask(6, 1, shape, 0.5, np.float64))
    assert not np.array_equal(a, ref.dropout_mask(5, 0, shape, 0.5, np.float64))
    assert not np.array_equal(a, ref.dropout_mask(5, 2, shape, 0.5, np.float64))
    # element e depends only on the flat index, not on the shape
    flat = ref.dropout_mask(5, 1, (int(np.prod(shape)),), 0.5, np.float64)
    assert np.array_equal(a.reshape(-1), flat)


def test_dropout_mask_p_zero_and_one():
    assert np.array_equal(ref.dropout_mask(1, 0, (3, 4, 5), 0.0, np.float32), np.ones((3, 4, 5), np.float32))
    assert np.array_equal(ref.dropout_mask(1, 0, (3, 4, 5), 1.0, np.float64), np.zeros((3, 4, 5)))
    with pytest.raises(ValueError):
        ref.dropout_mask(1, 0, (3,), 1.5, np.float64)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 + 12345, 2**64 - 1, -3, 2**70 + 9])
@pytest.mark.parametrize("layer", [0, 1, 5])
def test_dropout_mask_matches_python_int_definition(seed, layer):
    shape = (9, 7, 13)
    p = 0.37
    m = ref.dropout_mask(seed, layer, shape, p, np.float64).reshape(-1)
    n = m.size
    for e in [0, 1, 2, 3, 100, 517, n - 2, n - 1]:
        assert m[e] == py_mask_value(seed, layer, e, p), e
    # and the whole mask, for one combination, element by element
    if seed == 42 and layer == 1:
        want = np.array([py_mask_value(seed, layer, e, p) for e in range(n)])
        assert np.array_equal(m, want)


def test_dropout_applied_between_layers_only():
    rng = np.random.default_rng(11)
    mode, T, B, I, H = "GRU", 5, 3, 4, 6
    params = make_params(rng, mode, I, H, 3, True)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([5, 3, 1])
    p, seed = 0.3, 99
    y, hn, _, _ = ref.forward(mode, params, x, lengths=lengths, num_layers=3, bidirectional=True,
                              dropout=p, training=True, seed=seed)
    # rebuild layer by layer with single-layer calls and explicit masks
    inp = x
    h_parts = []
    for k in range(3):
        pk = {name.replace(f"_l{k}", "_l0"): v for name, v in params.items() if f"_l{k}" in name}
        if k > 0:
            inp = inp * ref.dropout_mask(seed, k - 1, inp.shape, p, np.float64)
        inp, hk, _, _ = ref.forward(mode, pk, inp, lengths=lengths, num_layers=1, bidirectional=True)
        h_parts.append(hk)
    assert_allclose(y, inp, rtol=1e-13, atol=1e-14)
    assert_allclose(hn, np.concatenate(h_parts), rtol=1e-13, atol=1e-14)
    # no dropout in eval mode or with dropout=0
    y_eval, _, _, _ = ref.forward(mode, params, x, lengths=lengths, num_layers=3, bidirectional=True,
                                  dropout=p, training=False, seed=seed)
    y_nodrop, _, _, _ = ref.forward(mode, params, x, lengths=lengths, num_layers=3, bidirectional=True,
                                    dropout=0.0, training=True, seed=seed)
    assert np.array_equal(y_eval, y_nodrop)
    assert not np.allclose(y_eval, y)


# ----------------------------------------------------------------------------------------------------
# 4. NaN propagation and robustness
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_only_within_batch_element(mode):
    rng = np.random.default_rng(21)
    T, B, I, H = 8, 4, 3, 5
    t0, b0 = 3, 2
    x = rng.standard_normal((T, B, I))
    xn = x.copy()
    xn[t0, b0, 1] = np.nan
    others = [b for b in range(B) if b != b0]

    # unidirectional, 2 layers: steps < t0 of b0 unaffected, steps >= t0 NaN
    params = make_params(rng, mode, I, H, 2, False)
    y, hn, _, _ = ref.forward(mode, params, x, num_layers=2)
    y2, hn2, cn2, _ = ref.forward(mode, params, xn, num_layers=2)
    assert_allclose(y2[:, others], y[:, others], rtol=1e-14, atol=0)
    assert_allclose(hn2[:, others], hn[:, others], rtol=1e-14, atol=0)
    assert_allclose(y2[:t0, b0], y[:t0, b0], rtol=1e-14, atol=0)
    assert np.all(np.isnan(y2[t0:, b0]))
    assert np.all(np.isnan(hn2[:, b0]))
    if mode == "LSTM":
        assert np.all(np.isnan(cn2[:, b0]))

    # bidirectional: every step of b0 is reached by one of the directions
    params = make_params(rng, mode, I, H, 2, True)
    y, hn, _, _ = ref.forward(mode, params, x, num_layers=2, bidirectional=True)
    y2, hn2, _, _ = ref.forward(mode, params, xn, num_layers=2, bidirectional=True)
    assert_allclose(y2[:, others], y[:, others], rtol=1e-14, atol=0)
    assert_allclose(hn2[:, others], hn[:, others], rtol=1e-14, atol=0)
    assert np.all(np.isnan(y2[:, b0]))


@pytest.mark.parametrize("mode", MODES)
def test_padding_content_is_ignored(mode):
    rng = np.random.default_rng(5)
    T, B, I, H, L = 6, 3, 4, 5, 2
    params = make_params(rng, mode, I, H, L, True)
    lengths = np.array([6, 2, 4])
    pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, 2 * H))
    y, hn, cn, cache = ref.forward(mode, params, x, lengths=lengths, num_layers=L, bidirectional=True)
    dx, dh0, dc0, grads = ref.backward(cache, dy)

    x_bad = x.copy()
    x_bad[pad] = np.nan
    dy_bad = dy.copy()
    dy_bad[pad] = np.nan
    y2, hn2, cn2, cache2 = ref.forward(mode, params, x_bad, lengths=lengths, num_layers=L, bidirectional=True)
    dx2, dh02, dc02, grads2 = ref.backward(cache2, dy_bad)
    assert np.all(y[pad] == 0)
    assert np.array_equal(y, y2) and np.array_equal(hn, hn2)
    assert np.array_equal(dx, dx2) and np.array_equal(dh0, dh02)
    assert np.all(dx[pad] == 0)
    for k in grads:
        assert np.array_equal(grads[k], grads2[k]), k
    if mode == "LSTM":
        assert np.array_equal(cn, cn2) and np.array_equal(dc0, dc02)


@pytest.mark.parametrize("mode", MODES)
def test_large_inputs_no_warnings_finite(mode):
    rng = np.random.default_rng(8)
    T, B, I, H = 5, 3, 4, 6
    params = make_params(rng, mode, I, H, 2, True, scale=50.0)
    x = rng.standard_normal((T, B, I)) * 1e4
    y, hn, cn, cache = ref.forward(mode, params, x, num_layers=2, bidirectional=True)
    dx, dh0, dc0, grads = ref.backward(cache, np.ones_like(y))
    if mode != "RNN_RELU":  # relu is unbounded; only check it does not warn
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
        for g in grads.values():
            assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------------------------------
# API details
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_api_defaults_and_shapes(mode):
    rng = np.random.default_rng(2)
    T, B, I, H, L = 4, 2, 3, 5, 2
    params = make_params(rng, mode, I, H, L, True)
    x = rng.standard_normal((T, B, I))
    zeros = np.zeros((2 * L, B, H))
    y, hn, cn, cache = ref.forward(mode, params, x, num_layers=L, bidirectional=True)
    y_z, hn_z, cn_z, _ = ref.forward(mode, params, x, zeros, zeros, np.full(B, T), L, True)
    assert np.array_equal(y, y_z) and np.array_equal(hn, hn_z)
    assert (cn is None) == (mode != "LSTM")
    dx, dh0, dc0, grads = ref.backward(cache, np.zeros_like(y))
    assert dx.shape == x.shape and dh0.shape == (2 * L, B, H)
    assert (dc0 is None) == (mode != "LSTM")
    assert np.all(dx == 0) and np.all(dh0 == 0)
    assert set(grads) == set(params)
    # bias=False: no bias keys in, no bias grads out
    nb = {k: v for k, v in params.items() if not k.startswith("bias")}
    _, _, _, cache = ref.forward(mode, nb, x, num_layers=L, bidirectional=True)
    _, _, _, g = ref.backward(cache, np.ones((T, B, 2 * H)))
    assert set(g) == set(nb)


def test_invalid_arguments():
    rng = np.random.default_rng(0)
    params = make_params(rng, "LSTM", 3, 4, 1, False)
    x = rng.standard_normal((5, 2, 3))
    with pytest.raises(ValueError):
        ref.forward("LSTM_X", params, x)
    with pytest.raises(ValueError):
        ref.forward("LSTM", params, x, lengths=np.array([0, 5]))
    with pytest.raises(ValueError):
        ref.forward("LSTM", params, x, lengths=np.array([6, 5]))
    with pytest.raises(ValueError):
        ref.forward("LSTM", params, x, h0=np.zeros((2, 2, 4)))
    with pytest.raises(KeyError):
        ref.forward("LSTM", params, x, num_layers=2)
    with pytest.raises(ValueError):
        ref.forward("GRU", params, x)  # LSTM-shaped weights
