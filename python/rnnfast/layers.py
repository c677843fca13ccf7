"""RNN, LSTM and GRU layers computed by the C++ engine (rnnfast._core)."""

from __future__ import annotations

import numpy as np

from . import _core
from ._base import ElmanArgs, RecurrentBase, Stream

_CELLS = {"RNN_TANH": _core.RNN_TANH, "RNN_RELU": _core.RNN_RELU, "LSTM": _core.LSTM,
          "GRU": _core.GRU}


class _EngineStream(Stream):
    """The state lives in the C++ stream; ``step`` is its ``direct_step``, a plain CPython
    callable (no Python frame or pybind11 dispatch per step: shapes and dtypes are checked
    there, and any other input goes through the checked ``step`` method)."""

    def _open(self):
        m = self.model
        cls = _core.StreamF32 if m.dtype == np.float32 else _core.StreamF64
        self._core = cls(m._engine, self.batch_size)
        self._h, self._c = self._core.h, self._core.c  # live views of the C++ state
        self.step = self._core.direct_step

    @Stream.num_threads.setter
    def num_threads(self, value):
        Stream.num_threads.fset(self, value)
        self._core.num_threads = self._num_threads


class _EngineLayer(RecurrentBase):
    _stream_class = _EngineStream

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        engine_cls = _core.EngineF32 if self.dtype == np.float32 else _core.EngineF64
        self._engine = engine_cls(_CELLS[self._mode], self.input_size, self.hidden_size,
                                  self.num_layers, self.bidirectional, self.bias)
        flat_p, flat_g = self._engine.params, self._engine.grads
        self._slices = {name: slice(offset, offset + int(np.prod(shape)))
                        for name, offset, shape in self._engine.layout()}
        shapes = self._param_shapes()
        self._params = {k: flat_p[s].reshape(shapes[k]) for k, s in self._slices.items()}
        self._grads = {k: flat_g[s].reshape(shapes[k]) for k, s in self._slices.items()}
        self._init_params()
        if type(self).forward is RecurrentBase.forward:  # a subclass's forward gets every call
            self._direct_call = self._engine.direct_call

    def _param_views(self):
        return self._params

    def _grad_views(self):
        return self._grads

    def _assign_params(self, arrays):
        # Build the new flat vector aside, then swap it in under the engine's lock, so a
        # forward running in another thread never sees half-loaded weights.
        flat = self._engine.params.copy()
        for name, arr in arrays.items():
            flat[self._slices[name]] = arr.ravel()
        self._engine.assign_params(flat)

    def _params_changed(self):
        self._engine.repack()  # pack weights now, not on the first forward

    def _param_buffers(self):
        return [(self._engine.params, self._engine.grads)]  # every parameter, one flat buffer

    def _compute_forward(self, x, h0, c0, lengths, training, seed, starts=None,
                         batch_first=False):  # the engine reads and writes either layout
        return self._engine.forward(x, h0, c0, lengths, training, self.dropout, seed,
                                    self._num_threads, starts, batch_first)

    def _compute_backward(self, dy, dh_n, dc_n):
        return self._engine.backward(dy, dh_n, dc_n, self._num_threads)

    def zero_grad(self):
        self._engine.zero_grad()


class LSTM(_EngineLayer):
    """Long short-term memory layer with PyTorch's parameters and equations (gates i, f, g, o)."""
    _mode = "LSTM"


class GRU(_EngineLayer):
    """Gated recurrent unit layer with PyTorch's parameters and equations (gates r, z, n)."""
    _mode = "GRU"


class RNN(ElmanArgs, _EngineLayer):
    """Elman RNN layer, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act = tanh or relu."""
