"""Argument checking and layout shared by the C++-backed layers and the NumPy reference.

A subclass provides the arithmetic on batched arrays of the model's dtype, time-major or,
with ``batch_first``, batch-first:
``_compute_forward(x, h0, c0, lengths, training, seed, starts, batch_first) -> (y, h_n, c_n)``
and ``_compute_backward(dy, dh_n, dc_n) -> (dx, dh0, dc0)`` (dy and dx in the layout of the
training forward), plus parameter storage through
``_param_views()`` / ``_grad_views()`` (name -> live array) and ``_params_changed()``.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

from . import _seeding

_MODES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _check_size(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def _as_float_array(value, name, dtype):
    """Any array-like of real numbers -> ndarray of ``dtype`` (a copy only when needed)."""
    if type(value) is np.ndarray and (value.dtype is dtype or value.dtype == dtype) \
            and value.flags.c_contiguous:
        return value  # the common case, kept cheap for batch-1 streaming
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=dtype, order="C")  # keeps 0-d arrays 0-d, unlike ascontiguous


def _as_int_array(value, what):
    """Any array-like of integers (or integral floats) -> int64 ndarray; TypeError otherwise."""
    try:
        arr = np.asarray(value)
    except Exception:
        raise TypeError(f"{what} must be an array of integers") from None
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _min_max(arr):
    """(min, max) of a non-empty 1-D integer array; a list's for small ones (NumPy's
    reductions take ~1.7 us each on a few elements, a call's whole budget)."""
    if arr.size <= 256:
        values = arr.tolist()
        return min(values), max(values)
    return int(arr.min()), int(arr.max())


def _shape_str(shape):
    return str(tuple(int(s) for s in shape))


MAX_THREADS = 4096


def check_num_threads(value, name):
    """None/0 (the process-wide setting) or a positive int -> int."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= MAX_THREADS:
        raise ValueError(f"{name} must be in [0, {MAX_THREADS}] (0 = the process-wide setting), "
                         f"got {value}")
    return int(value)


def _physical_memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class _ThreadsSetting:
    @property
    def num_threads(self):
        """Threads for this object's calls; None uses the process-wide setting."""
        return self._num_threads or None

    @num_threads.setter
    def num_threads(self, value):
        self._num_threads = check_num_threads(value, "num_threads")


class RecurrentBase(_ThreadsSetting):
    """Common API of RNN, LSTM and GRU (PyTorch's constructor arguments and names)."""

    _mode = "LSTM"
    _stream_class = None  # set below: Stream, or a backend's faster subclass
    _direct_call = None  # a backend's f(x, state, num_threads) for plain calls, see __call__

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None,
                 num_threads=None, stateful=False):
        self.input_size = _check_size(input_size, "input_size")
        self.hidden_size = _check_size(hidden_size, "hidden_size")
        self.num_layers = _check_size(num_layers, "num_layers")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a number in [0, 1), got {type(dropout).__name__}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.num_threads = num_threads
        self._rng = _seeding.rng(seed)
        self._train_info = None
        self.stateful = bool(stateful)  # carry the final state into the next call (TBPTT)
        self._carried = None
        self._check_memory()

    # ------------------------------------------------------------------ sizes and names
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def gates(self):
        return _MODES[self._mode]

    def _param_shapes(self):
        """PyTorch's parameter names and shapes, in its state_dict order."""
        G, H, D = self.gates, self.hidden_size, self.num_directions
        out = {}
        for k in range(self.num_layers):
            in_k = self.input_size if k == 0 else D * H
            for d in range(D):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                out["weight_ih" + sfx] = (G * H, in_k)
                out["weight_hh" + sfx] = (G * H, H)
                if self.bias:
                    out["bias_ih" + sfx] = (G * H,)
                    out["bias_hh" + sfx] = (G * H,)
        return out

    def _check_memory(self):
        # Counted, not built: a huge num_layers must fail here, not while listing names.
        G, H, D, I = self.gates, self.hidden_size, self.num_directions, self.input_size
        per_dir = G * H * (H + (2 if self.bias else 0))
        n = D * (G * H * I + per_dir) + (self.num_layers - 1) * D * (G * H * D * H + per_dir)
        need = 5 * n * self.dtype.itemsize  # params, grads and three packed copies
        phys = _physical_memory_bytes()
        if phys is not None and need > phys:
            raise MemoryError(
                f"a {self._mode} with these sizes needs about {need / 2**30:.1f} GiB for its "
                f"parameters alone; this machine has {phys / 2**30:.1f} GiB")

    def _init_params(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, view in self._param_views().items():
            view[...] = self._rng.uniform(-bound, bound, size=view.shape)
        self._params_changed()

    # ------------------------------------------------------------------ parameters
    def state_dict(self):
        """Parameters by PyTorch name, as independent arrays of the model's dtype."""
        return {k: v.copy() for k, v in self._param_views().items()}

    def load_state_dict(self, state_dict, strict=True):
        """Loads PyTorch-named arrays (e.g. a torch state_dict converted with .numpy())."""
        if not hasattr(state_dict, "keys"):
            raise TypeError("state_dict must be a mapping of parameter name -> array")
        shapes = self._param_shapes()
        missing = [k for k in shapes if k not in state_dict]
        extra = [k for k in state_dict if k not in shapes]
        if strict and (missing or extra):
            raise ValueError(f"state_dict does not match this {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {extra}")
        arrays = {}
        for name, value in state_dict.items():
            if name not in shapes:
                continue
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            arr = _as_float_array(value, f"state_dict[{name!r}]", self.dtype)
            if arr.shape != shapes[name]:
                raise ValueError(f"state_dict[{name!r}] must have shape {_shape_str(shapes[name])}"
                                 f", got {_shape_str(arr.shape)}")
            arrays[name] = arr
        self._assign_params(arrays)

    def _assign_params(self, arrays):
        views = self._param_views()
        for name, arr in arrays.items():
            views[name][...] = arr
        self._params_changed()

    @property
    def grads(self):
        """Accumulated parameter gradients by PyTorch name (live views)."""
        return self._grad_views()

    def zero_grad(self):
        for g in self._grad_views().values():
            g[...] = 0

    def _param_buffers(self):
        """(param, grad) array pairs an optimizer updates in place, then calls
        ``_params_changed()``."""
        grads = self._grad_views()
        return [(p, grads[k]) for k, p in self._param_views().items()]

    # ------------------------------------------------------------------ forward / backward
    def __call__(self, x, state=None, lengths=None, *, starts=None):
        if self._direct_call is not None and lengths is None and starts is None:
            if self.stateful:
                out = self._call_stateful(x, state)
            else:  # the streaming call y, state = m(x_t, state): kept to one Python frame
                out = self._direct_call(x, state, self._num_threads, self.batch_first)
            if out is not NotImplemented:
                self._train_info = None
                return out
        return self.forward(x, state, lengths, training=False, starts=starts)

    def _call_stateful(self, x, state):
        """The plain call of a stateful layer through the engine's direct callable, which
        takes inputs usable as they are and returns what forward() would, or NotImplemented
        (then forward() converts, or raises)."""
        if type(x) is not np.ndarray or x.ndim != 3:
            return NotImplemented
        if state is None and self._carried is not None:
            h, c, _ = self._carried
            state = h if c is None else (h, c)
        out = self._direct_call(x, state, self._num_threads, self.batch_first)
        if out is NotImplemented:
            return out
        y, st = out
        h, c = st if type(st) is tuple else (st, None)
        self._carry(h, c, x.shape[0] if self.batch_first else x.shape[1])
        return y, st

    def _check_state(self, state, batch, unbatched, name):
        """-> (h0, c0) time-major batched arrays or None."""
        if state is None:
            return None, None
        LD = self.num_layers * (2 if self.bidirectional else 1)
        shape = (LD, self.hidden_size) if unbatched else (LD, batch, self.hidden_size)
        if self._mode == "LSTM":
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{name} must be a tuple (h, c) of arrays of shape "
                                f"{_shape_str(shape)} for LSTM")
            h, c = state
            if (h is None) != (c is None):
                raise TypeError(f"{name} must give both h and c for LSTM (or be None)")
            if h is None:
                return None, None
            return (self._state_part(h, shape, unbatched, name, "[0] (h)"),
                    self._state_part(c, shape, unbatched, name, "[1] (c)"))
        if isinstance(state, tuple):
            raise TypeError(f"{name} must be one array h of shape {_shape_str(shape)} for "
                            f"{type(self).__name__}, not a tuple")
        return self._state_part(state, shape, unbatched, name), None

    def _state_part(self, part, shape, unbatched, name, which=""):
        if (type(part) is np.ndarray and part.dtype is self.dtype and part.shape == shape
                and part.flags.c_contiguous):  # the common case (streaming), kept cheap
            return part[:, None, :] if unbatched else part
        label = name + which
        arr = _as_float_array(part, label, self.dtype)
        if arr.shape != shape:
            raise ValueError(f"{label} must have shape {_shape_str(shape)} "
                             f"(num_layers*num_directions, {'' if unbatched else 'batch, '}"
                             f"hidden_size), got {_shape_str(arr.shape)}")
        return arr[:, None, :] if unbatched else arr

    def _check_lengths(self, lengths, steps, batch, unbatched):
        if lengths is None:
            return None
        if unbatched:
            raise ValueError("lengths cannot be used with unbatched (T, input_size) input")
        arr = _as_int_array(lengths, "lengths")
        if arr.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},) (one per batch element), "
                             f"got {_shape_str(arr.shape)}")
        lo, hi = _min_max(arr)
        if lo < 1 or hi > steps:
            raise ValueError(f"lengths must lie in [1, {steps}] (1 <= len <= T), got min "
                             f"{lo} and max {hi}")
        return np.ascontiguousarray(arr, dtype=np.int32)

    def _check_starts(self, starts, lengths, steps, batch):
        if starts is None:
            return None
        if lengths is None:
            raise ValueError("starts needs lengths: row b's valid steps are "
                             "[starts[b], starts[b] + lengths[b])")
        arr = _as_int_array(starts, "starts")
        if arr.shape != (batch,):
            raise ValueError(f"starts must have shape ({batch},) (one per batch element), got "
                             f"{_shape_str(arr.shape)}")
        if _min_max(arr)[0] < 0 or _min_max(arr + lengths)[1] > steps:
            raise ValueError(f"starts must satisfy 0 <= start and start + length <= {steps} (T)")
        return np.ascontiguousarray(arr, dtype=np.int32)

    def forward(self, x, state=None, lengths=None, training=False, *, starts=None):
        """-> (y, state). x is (T, B, I), (B, T, I) with batch_first, or (T, I) unbatched.
        lengths: valid steps per sequence (PyTorch's packed-sequence semantics); starts: the
        first valid step of each (for sequences padded in front, starts = T - lengths)."""
        x = _as_float_array(x, "x", self.dtype)
        ndim = x.ndim
        if ndim not in (2, 3):
            raise ValueError(f"x must be 3-D {'(B, T, I)' if self.batch_first else '(T, B, I)'} "
                             f"or 2-D (T, I), got shape {_shape_str(x.shape)}")
        unbatched = ndim == 2
        if x.shape[-1] != self.input_size:
            expect = "(T, {})" if unbatched else ("(B, T, {})" if self.batch_first else
                                                  "(T, B, {})")
            raise ValueError(f"x must have shape {expect.format(self.input_size)} with "
                             f"input_size {self.input_size} features, got {_shape_str(x.shape)}")
        batch_first = self.batch_first and not unbatched
        xt = x[:, None, :] if unbatched else x
        steps, batch = xt.shape[1::-1] if batch_first else xt.shape[:2]
        if steps == 0 or batch == 0:
            raise ValueError(f"x must have at least one time step and one batch element, got "
                             f"shape {_shape_str(x.shape)}")
        h0, c0 = self._check_state(state, batch, unbatched, "state")
        if self.stateful and state is None and self._carried is not None:
            h0, c0, carried_batch = self._carried
            if carried_batch != batch:
                raise ValueError(f"a stateful {type(self).__name__} carries the state of a batch "
                                 f"of {carried_batch}, got a batch of {batch}: keep the batch "
                                 f"size or call reset_states()")
        lens = self._check_lengths(lengths, steps, batch, unbatched)
        firsts = self._check_starts(starts, lens, steps, batch)
        seed = 0
        if training and self.dropout > 0 and self.num_layers > 1:
            seed = int(self._rng.integers(0, 2**63))
        y, hn, cn = self._compute_forward(xt, h0, c0, lens, bool(training), seed, firsts,
                                          batch_first)
        if self.stateful:
            self._carry(hn, cn, batch)
        self._train_info = (unbatched, steps, batch) if training else None
        return y[:, 0, :] if unbatched else y, self._user_state(hn, cn, unbatched)

    def _carry(self, h, c, batch):
        """A stateful layer's next call starts here, from copies (gradients stop at the
        boundary)."""
        self._carried = (h.copy(), None if c is None else c.copy(), batch)

    def reset_states(self):
        """Forgets the state a stateful layer carries (the next call starts from zeros)."""
        self._carried = None

    def _user_state(self, h, c, unbatched):
        """Engine (L*D, B, H) states -> the caller's structure: (h, c) for LSTM, else h."""
        if unbatched:
            h = h[:, 0, :]
            c = None if c is None else c[:, 0, :]
        return (h, c) if self._mode == "LSTM" else h

    def backward(self, dy, dstate=None):
        """-> (dx, dstate0); parameter gradients are added into ``grads``."""
        if self._train_info is None:
            raise ValueError("backward() needs a preceding forward(x, ..., training=True)")
        unbatched, steps, batch = self._train_info
        out_f = self.num_directions * self.hidden_size
        if unbatched:
            shape = (steps, out_f)
        elif self.batch_first:
            shape = (batch, steps, out_f)
        else:
            shape = (steps, batch, out_f)
        dy = _as_float_array(dy, "dy", self.dtype)
        if dy.shape != shape:
            raise ValueError(f"dy must have the shape of the forward output {_shape_str(shape)}, "
                             f"got {_shape_str(dy.shape)}")
        dhn, dcn = self._check_state(dstate, batch, unbatched, "dstate")
        dx, dh0, dc0 = self._compute_backward(dy[:, None, :] if unbatched else dy, dhn, dcn)
        return dx[:, 0, :] if unbatched else dx, self._user_state(dh0, dc0, unbatched)

    def stream(self, batch_size=None, state=None, num_threads=None):
        """A :class:`Stream` for step-by-step inference that keeps the state between steps.

        ``batch_size=None`` streams one unbatched sequence (``x_t`` of shape
        ``(input_size,)``); an int streams that many at once (``(batch_size, input_size)``).
        ``state`` is the initial state in the format of :meth:`forward` (zeros when None).
        ``num_threads`` is the stream's own thread count; None takes the model's
        ``num_threads`` (None there too: the process-wide count)."""
        if num_threads is None:
            num_threads = self.num_threads
        if self.bidirectional:
            raise ValueError("a bidirectional model cannot run step by step: its reverse "
                             "direction reads each sequence from its end; call it on whole "
                             "sequences")
        return self._stream_class(self, batch_size, state, num_threads)

    def get_config(self):
        """Constructor arguments, JSON-friendly (for saving a model's architecture)."""
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                   num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   dropout=self.dropout, bidirectional=self.bidirectional, dtype=self.dtype.name,
                   stateful=self.stateful)
        if self._mode in ("RNN_TANH", "RNN_RELU"):
            cfg["nonlinearity"] = "tanh" if self._mode == "RNN_TANH" else "relu"
        return cfg

    def __repr__(self):
        args = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        if self._mode == "RNN_RELU":
            args.append("nonlinearity='relu'")
        for flag in ("batch_first", "bidirectional"):
            if getattr(self, flag):
                args.append(f"{flag}=True")
        if not self.bias:
            args.append("bias=False")
        if self.dropout:
            args.append(f"dropout={self.dropout}")
        if self.dtype != np.float32:
            args.append(f"dtype={self.dtype.name}")
        if self.stateful:
            args.append("stateful=True")
        return f"{type(self).__name__}({', '.join(args)})"


class ElmanArgs:
    """The vanilla RNN's constructor (PyTorch's argument order, with ``nonlinearity``); mixed in
    before a backend's layer class."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **kwargs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self._mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)


class Stream(_ThreadsSetting):
    """Step-by-step inference: ``y_t = s.step(x_t)`` (or ``s(x_t)``) feeds one time step and
    keeps the state for the next call, as ``y, state = model(x_t[None], state)`` would, without
    passing the state around. ``s.step(x_t, out=y)`` writes into ``y`` instead of allocating
    (any writeable array of the model's dtype and the output's shape, as NumPy's ``out=``).
    ``s.state`` is a copy of the current state in the model's format; ``s.reset(state=None)``
    starts over. A stream follows later weight changes of its model. Steps are not meant to be
    shared between threads: give each thread its own stream (streams of one model run
    concurrently). On more than one thread (its ``num_threads``, else the process-wide
    count) a stream of the C++ engine times its steps and runs them on one thread or on
    all, whichever has been faster lately; the results are the same either way."""

    def __init__(self, model, batch_size, state, num_threads):
        self.model = model
        self.unbatched = batch_size is None
        self.batch_size = 1 if batch_size is None else _check_size(batch_size, "batch_size")
        self._open()
        self.num_threads = num_threads
        self.reset(state)

    # A backend keeps the state in _h (and _c for LSTM), arrays of shape (L*D, B, H).
    def _open(self):
        m = self.model
        shape = (m.num_layers * m.num_directions, self.batch_size, m.hidden_size)
        self._h = np.zeros(shape, m.dtype)
        self._c = np.zeros(shape, m.dtype) if m._mode == "LSTM" else None

    @property
    def state(self):
        h = self._h.copy()
        c = None if self._c is None else self._c.copy()
        return self.model._user_state(h, c, self.unbatched)

    def reset(self, state=None):
        """Zeros the state, or sets it from ``state`` (the format of the model's forward)."""
        h, c = self.model._check_state(state, self.batch_size, self.unbatched, "state")
        self._h[...] = 0 if h is None else h
        if self._c is not None:
            self._c[...] = 0 if c is None else c

    def _check_x(self, x):
        m = self.model
        x = _as_float_array(x, "x", m.dtype)
        want = (m.input_size,) if self.unbatched else (self.batch_size, m.input_size)
        if x.shape != want and not (self.batch_size == 1 and x.shape == (m.input_size,)):
            raise ValueError(f"x must have shape {_shape_str(want)} (one time step), got "
                             f"{_shape_str(x.shape)}")
        return x

    def step(self, x, out=None):
        """Feeds one time step x_t; returns y_t (or fills ``out``) and keeps the new state."""
        m = self.model
        x = self._check_x(x)
        shape = x.shape[:-1] + (m.num_directions * m.hidden_size,)
        if out is not None:  # checked before the state moves
            if not isinstance(out, np.ndarray) or out.dtype != m.dtype:
                raise TypeError(f"out must be a {m.dtype} array")
            if not out.flags.writeable:
                raise ValueError("out must be writeable")
            if out.shape != shape:
                raise ValueError(f"out must have shape {_shape_str(shape)}, got "
                                 f"{_shape_str(out.shape)}")
        y, hn, cn = m._compute_forward(x.reshape(1, self.batch_size, m.input_size), self._h,
                                       self._c, None, False, 0)
        self._h[...] = hn
        if self._c is not None:
            self._c[...] = cn
        y = y.reshape(shape)
        if out is None:
            return y
        out[...] = y
        return out

    def __call__(self, x, out=None):
        return self.step(x, out)

    def __repr__(self):
        size = "unbatched" if self.unbatched else f"batch_size={self.batch_size}"
        return f"Stream({self.model!r}, {size})"


RecurrentBase._stream_class = Stream
