"""The NumPy reference: the same classes and API as rnnfast.LSTM/GRU/RNN, computed in
pure NumPy (float32 or float64). It is the tests' oracle and the benchmarks' NumPy baseline."""

from __future__ import annotations


import numpy as np

from . import _reference_math as _math
from ._base import ElmanArgs, RecurrentBase

__all__ = ["RNN", "LSTM", "GRU", "dropout_mask"]

dropout_mask = _math.dropout_mask


class _ReferenceLayer(RecurrentBase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shapes = self._param_shapes()
        self._params = {k: np.zeros(s, self.dtype) for k, s in shapes.items()}
        self._grads = {k: np.zeros(s, self.dtype) for k, s in shapes.items()}
        self._cache = None
        self._init_params()

    def _param_views(self):
        return self._params

    def _grad_views(self):
        return self._grads

    def _params_changed(self):
        pass

    def _compute_forward(self, x, h0, c0, lengths, training, seed, starts=None,
                         batch_first=False):
        if batch_first:  # the math is time-major
            x = x.transpose(1, 0, 2)
        if training:  # the cache must not alias the caller's arrays
            x = x.copy()
            h0 = None if h0 is None else h0.copy()
            c0 = None if c0 is None else c0.copy()
        y, hn, cn, cache = _math.forward(
            self._mode, self._params, x, h0, c0, lengths, self.num_layers, self.bidirectional,
            self.dropout, training, seed, starts)
        if training:
            self._cache = cache, batch_first
        return _swap_if(y, batch_first), hn, cn

    def _compute_backward(self, dy, dh_n, dc_n):
        cache, batch_first = self._cache
        dx, dh0, dc0, grads = _math.backward(cache, _swap_if(dy, batch_first), dh_n, dc_n)
        for k, g in grads.items():
            self._grads[k] += g
        return _swap_if(dx, batch_first), dh0, dc0


def _swap_if(a, batch_first):
    """(T, B, F) <-> (B, T, F), contiguous, when batch_first."""
    return np.ascontiguousarray(a.transpose(1, 0, 2)) if batch_first else a


class LSTM(_ReferenceLayer):
    """LSTM in NumPy."""
    _mode = "LSTM"


class GRU(_ReferenceLayer):
    """GRU in NumPy."""
    _mode = "GRU"


class RNN(ElmanArgs, _ReferenceLayer):
    """Elman RNN (tanh or relu) in NumPy."""
