"""Pure-NumPy reference implementation of rnnfast's recurrent layers.

Multi-layer, optionally bidirectional vanilla RNN (tanh / relu), LSTM and GRU: forward pass and full
back-propagation through time.  Equations, parameter names and layouts are exactly PyTorch's (see
``shared/rnn-equations.md``): LSTM gate rows i, f, g, o; GRU gate rows r, z, n with ``b_hn`` inside the
reset product.  Variable sequence lengths follow PyTorch's packed-sequence semantics, and dropout
between layers uses the deterministic counter-based mask :func:`dropout_mask`, which the compiled
kernels reproduce bit for bit.

This module is the ground truth the fast kernels are tested against, so it favours clarity over
speed: it loops over layers, directions and time steps and vectorises over batch and hidden units.
It depends on NumPy only and works in float32 or float64 (the dtype of ``x``).

Public API::

    dropout_mask(seed, layer, shape, p, dtype) -> mask
    forward(mode, params, x, h0=None, c0=None, lengths=None, num_layers=1, bidirectional=False,
            dropout=0.0, training=False, seed=0) -> (y, h_n, c_n_or_None, cache)
    backward(cache, dy, dh_n=None, dc_n=None) -> (dx, dh0, dc0_or_None, grads)
"""

from __future__ import annotations

import numpy as np

__all__ = ["MODES", "dropout_mask", "forward", "backward"]

#: Number of gates per cell for each mode.
MODES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}

# ----------------------------------------------------------------------------------------------------
# Dropout mask (splitmix64 counter-based generator)
# ----------------------------------------------------------------------------------------------------

_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_LAYER_MULT = 0xD1B54A32D192ED03


def _mix_int(z: int) -> int:
    """splitmix64 finalizer on a Python int (arithmetic modulo 2**64)."""
    z = (z + _GOLDEN) & _U64
    z = ((z ^ (z >> 30)) * _MIX1) & _U64
    z = ((z ^ (z >> 27)) * _MIX2) & _U64
    return z ^ (z >> 31)


def _mix_array(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        return z ^ (z >> np.uint64(31))


def dropout_mask(seed: int, layer: int, shape: tuple, p: float, dtype) -> np.ndarray:
    """Deterministic inverted-dropout mask of ``shape`` for the output of layer ``layer``.

    Element ``e`` (flat C-order index over ``shape``) is kept with scale ``1/(1-p)`` unless
    ``u(e) < p``, where ``u(e) = (mix(base + e) >> 40) * 2**-24`` is a 24-bit uniform in [0, 1),
    ``mix`` the splitmix64 finalizer and ``base = mix(seed ^ ((layer + 1) * 0xD1B54A32D192ED03))``
    (all modulo 2**64).  The comparison ``u < p`` is done in float64 with ``p`` as a double; the
    kept value ``1/(1-p)`` is computed in ``dtype``.  ``p >= 1`` drops everything.
    """
    dtype = np.dtype(dtype)
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    shape = tuple(int(s) for s in shape)
    if p == 0.0:
        return np.ones(shape, dtype=dtype)
    if p >= 1.0:
        return np.zeros(shape, dtype=dtype)
    base = _mix_int((int(seed) & _U64) ^ (((int(layer) + 1) * _LAYER_MULT) & _U64))
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    counters = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        counters = counters + np.uint64(base)
    r = _mix_array(counters)
    u = (r >> np.uint64(40)).astype(np.float64) * 2.0**-24
    scale = dtype.type(1) / (dtype.type(1) - dtype.type(p))
    mask = np.where(u < p, dtype.type(0), scale).astype(dtype, copy=False)
    return mask.reshape(shape)


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, accurate and overflow-free for any magnitude; NaN propagates."""
    e = np.exp(-np.abs(a))
    one = np.ones((), dtype=a.dtype)
    return np.where(a >= 0, one / (one + e), e / (one + e))


def _num_gates(mode: str) -> int:
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}") from None


def _param_name(kind: str, layer: int, direction: int) -> str:
    return f"{kind}_l{layer}" + ("_reverse" if direction == 1 else "")


def _valid_mask(lengths, T: int, B: int, starts=None) -> np.ndarray:
    """(T, B) boolean array: True where step t is inside sequence b."""
    if lengths is None:
        return np.ones((T, B), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {lengths.shape}")
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        if not np.all(lengths == np.round(lengths)):
            raise ValueError("lengths must be integers")
    lengths = lengths.astype(np.int64)
    if np.any(lengths < 1) or np.any(lengths > T):
        raise ValueError(f"lengths must satisfy 1 <= len <= T={T}, got {lengths.tolist()}")
    if starts is None:
        return np.arange(T)[:, None] < lengths[None, :]
    starts = np.asarray(starts).astype(np.int64)
    if starts.shape != (B,) or np.any(starts < 0) or np.any(starts + lengths > T):
        raise ValueError(f"starts must have shape ({B},) with 0 <= start <= T - len")
    t = np.arange(T)[:, None]
    return (t >= starts[None, :]) & (t < (starts + lengths)[None, :])


def _state(value, shape, dtype, name):
    if value is None:
        return np.zeros(shape, dtype=dtype)
    value = np.asarray(value, dtype=dtype)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    return value


def _layer_params(params, layer, direction, dtype, G, H, in_size, has_bias):
    """Weights of one layer/direction, cast to the computation dtype and shape-checked."""
    names = {kind: _param_name(kind, layer, direction) for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    expected = {
        "weight_ih": (G * H, in_size),
        "weight_hh": (G * H, H),
        "bias_ih": (G * H,),
        "bias_hh": (G * H,),
    }
    out = {"names": names}
    for kind, name in names.items():
        if kind.startswith("bias") and not has_bias:
            out[kind] = np.zeros(expected[kind], dtype=dtype)
            continue
        if name not in params:
            raise KeyError(f"missing parameter {name!r}")
        value = np.asarray(params[name], dtype=dtype)
        if value.shape != expected[kind]:
            raise ValueError(f"parameter {name!r} must have shape {expected[kind]}, got {value.shape}")
        out[kind] = value
    return out


# ----------------------------------------------------------------------------------------------------
# One layer, one direction
# ----------------------------------------------------------------------------------------------------


def _time_order(T: int, reverse: bool):
    return range(T - 1, -1, -1) if reverse else range(T)


def _direction_forward(mode, w, X, valid, h0, c0, reverse):
    """Run one direction of one layer over the whole sequence.

    Returns (outputs (T,B,H), h_last, c_last_or_None, cache dict).
    """
    T, B, _ = X.shape
    H = h0.shape[1]
    G = MODES[mode]
    dtype = X.dtype
    W_hh, b_hh = w["weight_hh"], w["bias_hh"]

    # Input projection for every step at once: (T, B, G*H).
    XW = X @ w["weight_ih"].T + w["bias_ih"]

    ys = np.zeros((T, B, H), dtype=dtype)
    h_prev_all = np.zeros((T, B, H), dtype=dtype)
    gates_all = np.zeros((T, B, G * H), dtype=dtype)  # post-activation gate values
    extra = {}
    if mode == "LSTM":
        extra["c_prev"] = np.zeros((T, B, H), dtype=dtype)
        extra["tanh_c"] = np.zeros((T, B, H), dtype=dtype)
    elif mode == "GRU":
        extra["hn"] = np.zeros((T, B, H), dtype=dtype)  # W_hn h + b_hn

    h = h0
    c = c0
    for t in _time_order(T, reverse):
        v = valid[t][:, None]
        h_prev_all[t] = h
        gh = h @ W_hh.T + b_hh
        if mode == "RNN_TANH":
            h_new = np.tanh(XW[t] + gh)
            gates_all[t] = h_new
        elif mode == "RNN_RELU":
            h_new = np.maximum(XW[t] + gh, 0)
            gates_all[t] = h_new
        elif mode == "LSTM":
            a = XW[t] + gh
            i = _sigmoid(a[:, 0 * H:1 * H])
            f = _sigmoid(a[:, 1 * H:2 * H])
            g = np.tanh(a[:, 2 * H:3 * H])
            o = _sigmoid(a[:, 3 * H:4 * H])
            c_new = f * c + i * g
            tc = np.tanh(c_new)
            h_new = o * tc
            gates_all[t] = np.concatenate([i, f, g, o], axis=1)
            extra["c_prev"][t] = c
            extra["tanh_c"][t] = tc
            c = np.where(v, c_new, c)
        else:  # GRU
            xw = XW[t]
            r = _sigmoid(xw[:, 0 * H:1 * H] + gh[:, 0 * H:1 * H])
            z = _sigmoid(xw[:, 1 * H:2 * H] + gh[:, 1 * H:2 * H])
            hn = gh[:, 2 * H:3 * H]
            n = np.tanh(xw[:, 2 * H:3 * H] + r * hn)
            h_new = (1 - z) * n + z * h
            gates_all[t] = np.concatenate([r, z, n], axis=1)
            extra["hn"][t] = hn
        # Steps past a sequence's end leave its state alone and output zeros.
        ys[t] = np.where(v, h_new, 0)
        h = np.where(v, h_new, h)

    cache = {"X": X, "w": w, "reverse": reverse, "h_prev": h_prev_all, "gates": gates_all, **extra}
    return ys, h, (c if mode == "LSTM" else None), cache


def _direction_backward(mode, dc, valid, dys, dh_last, dc_last):
    """BPTT through one direction of one layer.

    ``dys`` (T,B,H) is the gradient of this direction's outputs (already zero at padded steps).
    Returns (dX (T,B,I), dh0, dc0_or_None, {kind: grad}).
    """
    X, w, reverse = dc["X"], dc["w"], dc["reverse"]
    T, B, _ = X.shape
    H = dh_last.shape[1]
    G = MODES[mode]
    dtype = X.dtype
    W_hh = w["weight_hh"]
    gates = dc["gates"]

    dgx_all = np.zeros((T, B, G * H), dtype=dtype)  # d(pre-activation), input-projection part
    dgh_all = np.zeros((T, B, G * H), dtype=dtype)  # d(pre-activation), recurrent-product part

    dh = dh_last
    dcell = dc_last
    for t in reversed(list(_time_order(T, reverse))):
        v = valid[t][:, None]
        dh_tot = dh + dys[t]
        dh_new = np.where(v, dh_tot, 0)  # gradient reaching this step's new state
        dh_skip = np.where(v, 0, dh_tot)  # padded step: state passes through unchanged
        dh_direct = None
        if mode == "RNN_TANH":
            h_new = gates[t]
            dgx = dh_new * (1 - h_new * h_new)
            dgh = dgx
        elif mode == "RNN_RELU":
            h_new = gates[t]
            dgx = np.where(h_new > 0, dh_new, 0)
            dgh = dgx
        elif mode == "LSTM":
            g_t = gates[t]
            i = g_t[:, 0 * H:1 * H]
            f = g_t[:, 1 * H:2 * H]
            g = g_t[:, 2 * H:3 * H]
            o = g_t[:, 3 * H:4 * H]
            tc = dc["tanh_c"][t]
            c_prev = dc["c_prev"][t]
            dc_new = np.where(v, dcell + dh_new * o * (1 - tc * tc), 0)
            di = dc_new * g
            df = dc_new * c_prev
            dg = dc_new * i
            do = dh_new * tc
            dgx = np.concatenate(
                [di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1
            )
            dgh = dgx
            dcell = np.where(v, dc_new * f, dcell)  # padded step: cell state passes through
        else:  # GRU
            g_t = gates[t]
            r = g_t[:, 0 * H:1 * H]
            z = g_t[:, 1 * H:2 * H]
            n = g_t[:, 2 * H:3 * H]
            hn = dc["hn"][t]
            h_prev = dc["h_prev"][t]
            dn = dh_new * (1 - z) * (1 - n * n)  # d(pre-activation of n)
            dz = dh_new * (h_prev - n) * z * (1 - z)
            dr = dn * hn * r * (1 - r)
            dgx = np.concatenate([dr, dz, dn], axis=1)
            dgh = np.concatenate([dr, dz, dn * r], axis=1)
            dh_direct = dh_new * z
        # Padded steps contribute nothing (guards against non-finite values computed there).
        dgx = np.where(v, dgx, 0)
        dgh = np.where(v, dgh, 0)
        dgx_all[t] = dgx
        dgh_all[t] = dgh
        dh = dgh @ W_hh + dh_skip
        if dh_direct is not None:
            dh = dh + np.where(v, dh_direct, 0)

    # Weight gradients as large matrix products after the sweep.
    Xv = np.where(valid[:, :, None], X, 0)
    dgx2 = dgx_all.reshape(T * B, G * H)
    dgh2 = dgh_all.reshape(T * B, G * H)
    grads = {
        "weight_ih": dgx2.T @ Xv.reshape(T * B, -1),
        "weight_hh": dgh2.T @ dc["h_prev"].reshape(T * B, H),
        "bias_ih": dgx2.sum(axis=0),
        "bias_hh": dgh2.sum(axis=0),
    }
    dX = dgx_all @ w["weight_ih"]
    return dX, dh, (dcell if mode == "LSTM" else None), grads


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def forward(mode, params, x, h0=None, c0=None, lengths=None, num_layers=1, bidirectional=False,
            dropout=0.0, training=False, seed=0, starts=None):
    """Forward pass of a (multi-layer, optionally bidirectional) RNN / LSTM / GRU.

    Parameters
    ----------
    mode : "RNN_TANH", "RNN_RELU", "LSTM" or "GRU".
    params : dict of PyTorch-named arrays ``weight_ih_l{k}[_reverse]`` (G*H, I_k),
        ``weight_hh_l{k}[_reverse]`` (G*H, H) and optionally ``bias_ih_l{k}[_reverse]``,
        ``bias_hh_l{k}[_reverse]`` (G*H,).  Absent bias keys mean bias=False.
    x : (T, B, I) time-major input; its dtype is the computation dtype.
    h0, c0 : (L*D, B, H) initial states or None (zeros).  ``c0`` is used by LSTM only.
    lengths : None or (B,) ints with 1 <= len <= T (any order): packed-sequence semantics.
    starts : None or (B,) ints: row b's valid steps are [start, start + len) instead of
        [0, len) (sequences padded in front); the steps outside stay frozen as padding is.
    dropout, training, seed : dropout between layers, applied only when ``training`` and
        ``dropout > 0``; layer k >= 1 reads ``y_{k-1} * dropout_mask(seed, k-1, y_{k-1}.shape, ...)``.

    Returns
    -------
    y : (T, B, D*H) last layer's outputs (forward direction first, zeros at padded steps).
    h_n : (L*D, B, H) final hidden states.
    c_n : (L*D, B, H) final cell states (LSTM) or None.
    cache : dict holding everything :func:`backward` needs.
    """
    G = _num_gates(mode)
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (T, B, I), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    dtype = x.dtype
    T, B, I = x.shape
    L = int(num_layers)
    if L < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    D = 2 if bidirectional else 1
    if "weight_hh_l0" not in params:
        raise KeyError("missing parameter 'weight_hh_l0'")
    H = int(np.shape(params["weight_hh_l0"])[1])
    has_bias = "bias_ih_l0" in params
    valid = _valid_mask(lengths, T, B, starts)
    p = float(dropout)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    use_dropout = bool(training) and p > 0.0 and L > 1

    h0 = _state(h0, (L * D, B, H), dtype, "h0")
    c0 = _state(c0, (L * D, B, H), dtype, "c0") if mode == "LSTM" else None

    h_n = np.zeros((L * D, B, H), dtype=dtype)
    c_n = np.zeros((L * D, B, H), dtype=dtype) if mode == "LSTM" else None
    layer_caches = []
    masks = []
    layer_input = x
    for k in range(L):
        mask = None
        if k > 0 and use_dropout:
            mask = dropout_mask(seed, k - 1, layer_input.shape, p, dtype)
            layer_input = layer_input * mask
        masks.append(mask)
        in_size = layer_input.shape[2]
        out = np.zeros((T, B, D * H), dtype=dtype)
        dir_caches = []
        for d in range(D):
            idx = k * D + d
            w = _layer_params(params, k, d, dtype, G, H, in_size, has_bias)
            ys, h_last, c_last, dcache = _direction_forward(
                mode, w, layer_input, valid, h0[idx], None if c0 is None else c0[idx], reverse=(d == 1)
            )
            out[:, :, d * H:(d + 1) * H] = ys
            h_n[idx] = h_last
            if c_n is not None:
                c_n[idx] = c_last
            dir_caches.append(dcache)
        layer_caches.append(dir_caches)
        layer_input = out
    y = layer_input

    cache = {
        "mode": mode,
        "dtype": dtype,
        "T": T, "B": B, "I": I, "H": H, "L": L, "D": D, "G": G,
        "has_bias": has_bias,
        "valid": valid,
        "masks": masks,  # masks[k]: dropout mask applied to layer k's input (None if none)
        "layers": layer_caches,  # layers[k][d]: per-direction cache (inputs, weights, states, gates)
    }
    return y, h_n, c_n, cache


def backward(cache, dy, dh_n=None, dc_n=None):
    """Full BPTT backward pass matching :func:`forward`.

    Parameters
    ----------
    cache : the cache returned by :func:`forward`.
    dy : (T, B, D*H) gradient of the outputs; entries at padded steps are ignored.
    dh_n, dc_n : (L*D, B, H) gradients of the final states or None (zeros).

    Returns
    -------
    dx : (T, B, I) gradient of the input (zero at padded steps).
    dh0 : (L*D, B, H) gradient of the initial hidden state.
    dc0 : (L*D, B, H) gradient of the initial cell state (LSTM) or None.
    grads : dict of parameter gradients keyed like ``params`` (bias grads only when biases exist).
    """
    mode = cache["mode"]
    dtype = cache["dtype"]
    T, B, I, H, L, D = (cache[k] for k in ("T", "B", "I", "H", "L", "D"))
    valid = cache["valid"]
    shape_state = (L * D, B, H)

    if dy is None:
        dy = np.zeros((T, B, D * H), dtype=dtype)
    dy = np.asarray(dy, dtype=dtype)
    if dy.shape != (T, B, D * H):
        raise ValueError(f"dy must have shape {(T, B, D * H)}, got {dy.shape}")
    dh_n = _state(dh_n, shape_state, dtype, "dh_n")
    dc_n = _state(dc_n, shape_state, dtype, "dc_n") if mode == "LSTM" else None

    dh0 = np.zeros(shape_state, dtype=dtype)
    dc0 = np.zeros(shape_state, dtype=dtype) if mode == "LSTM" else None
    grads = {}

    # Gradient of the current layer's output; outputs at padded steps are constants.
    dout = np.where(valid[:, :, None], dy, 0)
    for k in reversed(range(L)):
        dir_caches = cache["layers"][k]
        din = None
        for d in range(D):
            idx = k * D + d
            dX, dh_first, dc_first, g = _direction_backward(
                mode, dir_caches[d], valid, dout[:, :, d * H:(d + 1) * H],
                dh_n[idx], None if dc_n is None else dc_n[idx],
            )
            din = dX if din is None else din + dX
            dh0[idx] = dh_first
            if dc0 is not None:
                dc0[idx] = dc_first
            names = dir_caches[d]["w"]["names"]
            for kind, value in g.items():
                if kind.startswith("bias") and not cache["has_bias"]:
                    continue
                grads[names[kind]] = value
        mask = cache["masks"][k]
        if mask is not None:
            din = din * mask
        dout = din
    dx = dout
    return dx, dh0, dc0, grads
