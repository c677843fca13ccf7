"""Feed-forward layers for models: Embedding, Dense (Linear), Dropout and LastStep.

Every layer has ``forward(x, training=False, lengths=None) -> (y, lengths)`` and
``backward(dy) -> dx`` (parameter gradients are added into ``grads``), plus ``state_dict`` /
``load_state_dict`` with PyTorch's names and shapes. ``lengths`` (valid steps per sample,
samples along the first axis) travels through a model: ``Embedding(mask_zero=True)`` makes it,
recurrent layers honour it, ``LastStep`` uses it, losses and metrics skip padded steps.
The arithmetic runs in C++ (rnnfast._core)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _core, _seeding
from ._base import _as_float_array, _as_int_array, _check_size, _shape_str, check_num_threads

__all__ = ["Layer", "Embedding", "Dense", "Linear", "Dropout", "LastStep"]

_ACTIVATIONS = {None: 0, "linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3}


def _dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class Layer:
    """Base of the feed-forward layers: parameters by PyTorch name, gradients alongside."""

    def __init__(self, dtype=np.float32, num_threads=None):
        self.dtype = _dtype(dtype)
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._num_threads = check_num_threads(num_threads, "num_threads")
        self._saved = None

    @property
    def _sfx(self):
        return "_f32" if self.dtype == np.float32 else "_f64"

    def _add_param(self, name, value):
        self._params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self._grads[name] = np.zeros_like(self._params[name])

    # parameters (the same protocol as the recurrent layers)
    def state_dict(self):
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        if not hasattr(state_dict, "keys"):
            raise TypeError("state_dict must be a mapping of parameter name -> array")
        missing = [k for k in self._params if k not in state_dict]
        extra = [k for k in state_dict if k not in self._params]
        if strict and (missing or extra):
            raise ValueError(f"state_dict does not match this {type(self).__name__}: missing keys "
                             f"{missing}, unexpected keys {extra}")
        for k in self._params:
            if k not in state_dict:
                continue
            v = state_dict[k]
            if hasattr(v, "detach"):
                v = v.detach().cpu().numpy()
            arr = _as_float_array(v, f"state_dict[{k!r}]", self.dtype)
            if arr.shape != self._params[k].shape:
                raise ValueError(f"state_dict[{k!r}] must have shape "
                                 f"{_shape_str(self._params[k].shape)}, got {_shape_str(arr.shape)}")
            self._params[k][...] = arr

    @property
    def grads(self):
        return self._grads

    def zero_grad(self):
        for g in self._grads.values():
            g[...] = 0

    def _param_buffers(self):
        return [(self._params[k], self._grads[k]) for k in self._params]

    def _params_changed(self):
        pass

    @property
    def num_params(self):
        return sum(p.size for p in self._params.values())

    def output_shape(self, input_shape):
        return input_shape

    def _check_float(self, x, name="x"):
        return _as_float_array(x, name, self.dtype)

    def _need_saved(self):
        if self._saved is None:
            raise ValueError(f"{type(self).__name__}.backward() needs a preceding "
                             f"forward(..., training=True)")
        return self._saved


def split_steps(valid):
    """The valid-step spec that flows between layers -> (starts or None, lengths or None):
    None, an array of lengths (steps [0, len)), or a pair (starts, lengths)."""
    if valid is None:
        return None, None
    if isinstance(valid, tuple):
        return valid
    return None, valid


def _token_span(idx):
    """(N, T) ids with 0 as padding -> lengths, or (starts, lengths) when some row is padded in
    front; each row's tokens must be contiguous (padding before and/or after them only)."""
    nz = idx != 0
    T = idx.shape[1]
    count = nz.sum(axis=1)
    if np.any(count == 0):
        raise ValueError(f"mask_zero: sequence {int(np.argmin(count))} holds no token (only the "
                         f"padding id 0)")
    first = np.argmax(nz, axis=1)
    last = T - 1 - np.argmax(nz[:, ::-1], axis=1)
    span = last - first + 1
    holes = count != span
    if np.any(holes):
        raise ValueError(f"mask_zero: sequence {int(np.argmax(holes))} has id 0 between tokens; "
                         f"id 0 is reserved for padding (before or after a sequence)")
    span = span.astype(np.int64)
    return span if not first.any() else (first.astype(np.int64), span)


class Embedding(Layer):
    """Rows of ``weight`` (num_embeddings, embedding_dim) looked up by integer ids.

    ``mask_zero=True`` treats id 0 as padding before and/or after each sequence (as
    ``pad_sequences`` makes, "pre" or "post"): the padded steps are skipped downstream by
    recurrent layers, ``LastStep``, losses and metrics."""

    def __init__(self, num_embeddings, embedding_dim, mask_zero=False, *, dtype=np.float32,
                 seed=None, num_threads=None):
        super().__init__(dtype, num_threads)
        self.num_embeddings = _check_size(num_embeddings, "num_embeddings")
        self.embedding_dim = _check_size(embedding_dim, "embedding_dim")
        self.mask_zero = bool(mask_zero)
        rng = _seeding.rng(seed)
        self._add_param("weight", rng.standard_normal((self.num_embeddings, self.embedding_dim)))

    def forward(self, x, training=False, lengths=None):
        idx = _as_int_array(x, "x (integer ids for Embedding)")
        y = getattr(_core, "embedding_forward" + self._sfx)(idx, self._params["weight"],
                                                           self._num_threads)
        if self.mask_zero:
            if idx.ndim != 2:
                raise ValueError(f"mask_zero needs x of shape (N, T), got {_shape_str(idx.shape)}")
            lengths = _token_span(idx)
        self._saved = idx if training else None
        return y, lengths

    def backward(self, dy):
        idx = self._need_saved()
        dy = self._check_float(dy, "dy")
        if dy.shape != idx.shape + (self.embedding_dim,):
            raise ValueError(f"dy must have shape {_shape_str(idx.shape + (self.embedding_dim,))}, "
                             f"got {_shape_str(dy.shape)}")
        getattr(_core, "embedding_backward" + self._sfx)(idx, dy, self._grads["weight"],
                                                        self._num_threads)
        return None  # ids have no gradient

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                    mask_zero=self.mask_zero, dtype=self.dtype.name)

    def __repr__(self):
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}"
                f"{', mask_zero=True' if self.mask_zero else ''})")


class Dense(Layer):
    """y = activation(x W^T + b) over the last axis; ``weight`` (out, in), ``bias`` (out)
    as in PyTorch's Linear; activation None, "relu", "tanh" or "sigmoid"."""

    def __init__(self, in_features, out_features, activation=None, bias=True, *,
                 dtype=np.float32, seed=None, num_threads=None):
        super().__init__(dtype, num_threads)
        self.in_features = _check_size(in_features, "in_features")
        self.out_features = _check_size(out_features, "out_features")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of None, 'relu', 'tanh', 'sigmoid', got "
                             f"{activation!r}")
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        rng = _seeding.rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)  # PyTorch's Linear initialisation bound
        self._add_param("weight", rng.uniform(-bound, bound, (self.out_features, self.in_features)))
        if bias:
            self._add_param("bias", rng.uniform(-bound, bound, self.out_features))

    def forward(self, x, training=False, lengths=None):
        x = self._check_float(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features on its last axis, got "
                             f"shape {_shape_str(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = getattr(_core, "dense_forward" + self._sfx)(x2, self._params["weight"],
                                                       self._params.get("bias"), self._act,
                                                       self._num_threads)
        self._saved = (x2, y, lead) if training else None
        return y.reshape(lead + (self.out_features,)), lengths

    def backward(self, dy):
        x2, y, lead = self._need_saved()
        dy = self._check_float(dy, "dy")
        if dy.shape != lead + (self.out_features,):
            raise ValueError(f"dy must have shape {_shape_str(lead + (self.out_features,))}, got "
                             f"{_shape_str(dy.shape)}")
        dx = getattr(_core, "dense_backward" + self._sfx)(
            x2, self._params["weight"], self._act, y, dy.reshape(-1, self.out_features),
            self._grads["weight"], self._grads.get("bias"), True, self._num_threads)
        return dx.reshape(lead + (self.in_features,))

    def output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.out_features,)

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    activation=self.activation, bias="bias" in self._params,
                    dtype=self.dtype.name)

    def __repr__(self):
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"Dense({self.in_features}, {self.out_features}{act})"


Linear = Dense


class Dropout(Layer):
    """Inverted dropout: in training, zeroes each element with probability p and scales the rest
    by 1/(1-p); the identity at inference."""

    def __init__(self, p=0.5, *, seed=None, num_threads=None):
        super().__init__(num_threads=num_threads)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self._rng = _seeding.rng(seed)

    def forward(self, x, training=False, lengths=None):
        x = np.asarray(x)
        if not training or self.p == 0.0:
            self._saved = np.ones((), x.dtype) if training else None
            return x, lengths
        x = _as_float_array(x, "x", np.float64 if x.dtype == np.float64 else np.float32)
        sfx = "_f32" if x.dtype == np.float32 else "_f64"
        seed = int(self._rng.integers(0, 2**63))  # the engine's dropout hash draws the mask
        y, self._saved = getattr(_core, "dropout" + sfx)(x, self.p, seed, self._num_threads)
        return y, lengths

    def backward(self, dy):
        return np.asarray(dy) * self._need_saved()

    def get_config(self):
        return dict(p=self.p)

    def __repr__(self):
        return f"Dropout(p={self.p})"


class LastStep(Layer):
    """(N, T, F) -> (N, F): each sample's output at its last valid step (T - 1 without
    lengths), for sequence classification and regression.

    After a bidirectional layer the second half of the features is the reverse direction's,
    whose final state is its output at the *first* valid step; ``bidirectional=True`` takes that
    half there (as Keras' Bidirectional(return_sequences=False) does). None (the default)
    decides from the layer before it in a Sequential, else False."""

    def __init__(self, bidirectional=None):
        super().__init__()
        self.bidirectional = None if bidirectional is None else bool(bidirectional)

    def forward(self, x, training=False, lengths=None):
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(f"LastStep needs x of shape (N, T, F), got {_shape_str(x.shape)}")
        N, T, F = x.shape
        starts, lens = split_steps(lengths)
        first = np.zeros(N, np.int64) if starts is None else np.asarray(starts)
        last = first + (T if lens is None else np.asarray(lens)) - 1
        rows = np.arange(N)
        y = x[rows, last]
        if self.bidirectional:
            if F % 2:
                raise ValueError(f"LastStep(bidirectional=True) needs an even number of "
                                 f"features (forward | reverse), got {F}")
            y[:, F // 2:] = x[rows, first, F // 2:]
        self._saved = (x.shape, first, last, x.dtype) if training else None
        return y, None

    def backward(self, dy):
        shape, first, last, dtype = self._need_saved()
        dx = np.zeros(shape, dtype)
        rows = np.arange(shape[0])
        dy = np.asarray(dy)
        if self.bidirectional:
            half = shape[2] // 2
            dx[rows, last, :half] = dy[:, :half]
            dx[rows, first, half:] += dy[:, half:]
        else:
            dx[rows, last] = dy
        return dx

    def output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {"bidirectional": self.bidirectional}

    def __repr__(self):
        return "LastStep()" if self.bidirectional is None else \
            f"LastStep(bidirectional={self.bidirectional})"
