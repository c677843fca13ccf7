"""Losses computed from logits in one fused C++ pass (value, gradient, correct count), and the
metrics models report. Padded steps (outside each sequence's valid steps) take no part in
either."""

from __future__ import annotations

import math
import re

import numpy as np

from . import _core
from ._base import _as_float_array, _as_int_array, _shape_str
from .nn import split_steps

__all__ = ["get_loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy",
           "BinaryCrossentropy", "MeanSquaredError"]


def _step_weights(shape, lengths, dtype):
    """Row weights over the flattened leading axes: 1 on valid steps, 0 on padding. lengths:
    None, valid steps per sample, or (starts, lengths)."""
    starts, lengths = split_steps(lengths)
    if lengths is None or len(shape) < 2:
        return None
    N, T = shape[0], shape[1]
    lengths = np.asarray(lengths)
    t = np.arange(T)[None, :]
    first = np.zeros((N, 1), np.int64) if starts is None else np.asarray(starts)[:, None]
    w = ((t >= first) & (t < first + lengths[:, None])).astype(dtype)
    return np.ascontiguousarray(np.broadcast_to(w.reshape((N, T) + (1,) * (len(shape) - 2)),
                                                shape).reshape(-1))


class _Loss:
    name = ""
    _kind = 0
    _classes = True  # logits over classes on the last axis (accuracy is meaningful)

    def _targets(self, z, y):
        y = _as_float_array(y, "y", z.dtype)
        if y.shape != z.shape:
            raise ValueError(f"y must have the shape of the model output {_shape_str(z.shape)} "
                             f"for {self.name}, got {_shape_str(y.shape)}")
        return y.reshape(-1, z.shape[-1])

    def __call__(self, z, y, lengths=None, want_grad=True, num_threads=None):
        """-> (mean loss, dloss/dz shaped like z or None, correct predictions, rows counted)."""
        z = np.ascontiguousarray(z)
        C = z.shape[-1]
        target = self._targets(z, y)
        w = _step_weights(z.shape[:-1], lengths, z.dtype)
        rows = z.size // C if w is None else float(w.sum())
        if rows == 0:
            raise ValueError("the batch has no valid step to compute a loss on")
        per = rows if self._kind <= 1 else rows * C  # mean over rows, or over elements
        sfx = "_f32" if z.dtype == np.float32 else "_f64"
        total, grad, correct = getattr(_core, "loss" + sfx)(
            self._kind, z.reshape(-1, C), target, w, 1.0 / per, want_grad, num_threads or 0)
        if grad is not None:
            grad = grad.reshape(z.shape)
        return total / per, grad, correct, rows


class SparseCategoricalCrossentropy(_Loss):
    """Softmax cross-entropy of logits (..., C) against integer labels (...)."""

    name = "sparse_categorical_crossentropy"
    _kind = 0

    def _targets(self, z, y):
        y = _as_int_array(y, f"y (integer class labels for {self.name})")
        if y.shape != z.shape[:-1]:
            raise ValueError(f"y must have shape {_shape_str(z.shape[:-1])} (one label per output "
                             f"row), got {_shape_str(y.shape)}")
        C = z.shape[-1]
        if y.size and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"labels must lie in [0, {C}) (the model has {C} outputs), got min "
                             f"{y.min()} and max {y.max()}")
        return y.reshape(-1)


class CategoricalCrossentropy(_Loss):
    """Softmax cross-entropy of logits against target distributions (one-hot or soft)."""

    name = "categorical_crossentropy"
    _kind = 1


class BinaryCrossentropy(_Loss):
    """Sigmoid cross-entropy of logits against targets in [0, 1], element-wise (mean)."""

    name = "binary_crossentropy"
    _kind = 2


class MeanSquaredError(_Loss):
    """Mean squared error over all elements."""

    name = "mse"
    _kind = 3
    _classes = False


_LOSSES = {c.name: c for c in (SparseCategoricalCrossentropy, CategoricalCrossentropy,
                              BinaryCrossentropy, MeanSquaredError)}
_LOSSES["mean_squared_error"] = MeanSquaredError


def get_loss(loss):
    if isinstance(loss, _Loss):
        return loss
    if isinstance(loss, str) and loss in _LOSSES:
        return _LOSSES[loss]()
    raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {loss!r}")


# ---------------------------------------------------------------------------------- metrics
class Metric:
    """Accumulates over batches; ``result()`` is the epoch value."""

    def __init__(self, name):
        self.name = name
        self.reset()

    def reset(self):
        self._num, self._den = 0.0, 0.0

    def result(self):
        return self._num / self._den if self._den else float("nan")


class _Accuracy(Metric):
    def update(self, loss_fn, z, y, lengths, mean_loss, correct, rows):
        if not loss_fn._classes:
            raise ValueError("accuracy needs a classification loss")
        self._num += correct
        self._den += rows


class _Perplexity(Metric):
    def update(self, loss_fn, z, y, lengths, mean_loss, correct, rows):
        if loss_fn._kind > 1:
            raise ValueError("perplexity needs a cross-entropy loss")
        self._num += mean_loss * rows
        self._den += rows

    def result(self):
        return math.exp(super().result()) if self._den else float("nan")


class _TopK(Metric):
    def __init__(self, name, k):
        self.k = k
        super().__init__(name)

    def update(self, loss_fn, z, y, lengths, mean_loss, correct, rows):
        if loss_fn._kind > 1:
            raise ValueError("top-k accuracy needs a categorical loss")
        C = z.shape[-1]
        z2 = z.reshape(-1, C)
        labels = np.asarray(y).reshape(-1) if loss_fn._kind == 0 else \
            np.asarray(y).reshape(-1, C).argmax(axis=1)
        k = min(self.k, C)
        top = np.argpartition(-z2, k - 1, axis=1)[:, :k]
        hit = (top == labels[:, None]).any(axis=1)
        w = _step_weights(z.shape[:-1], lengths, np.float64)
        self._num += float(hit.sum() if w is None else (hit * w).sum())
        self._den += rows


def get_metric(metric):
    if isinstance(metric, Metric):
        return metric
    if metric in ("accuracy", "acc"):
        return _Accuracy("accuracy")
    if metric == "perplexity":
        return _Perplexity("perplexity")
    if metric == "top_k_accuracy":
        return _TopK("top_k_accuracy", 5)
    m = re.fullmatch(r"top(\d+)_accuracy", metric) if isinstance(metric, str) else None
    if m and int(m.group(1)) >= 1:
        return _TopK(metric, int(m.group(1)))
    raise ValueError(f"metric must be 'accuracy', 'perplexity', 'top_k_accuracy' or "
                     f"'top<k>_accuracy', got {metric!r}")
