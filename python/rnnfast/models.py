"""Sequential models with Keras' compile / fit / evaluate / predict. Samples lie along the first
axis (recurrent layers run batch-first); every step of the arithmetic runs in C++ and Python only
slices batches and passes arrays between layers."""

from __future__ import annotations

import math
import numbers
import sys
import time
import warnings

import numpy as np

from . import _seeding
from . import optim as _optim
from ._base import RecurrentBase
from .losses import get_loss, get_metric
from .nn import LastStep, split_steps

__all__ = ["Sequential"]


def _forward(layer, x, training, lengths):
    if isinstance(layer, RecurrentBase):
        if np.ndim(x) != 3:  # a 2-D array would pass as one unbatched sequence
            raise ValueError(f"{layer!r} in a Sequential needs input of shape (samples, steps, "
                             f"features), got shape {np.shape(x)}")
        starts, lens = split_steps(lengths)
        y, _ = layer.forward(x, None, lens, training=training, starts=starts)
        return y, lengths
    return layer.forward(x, training=training, lengths=lengths)


def _backward(layer, dy):
    if isinstance(layer, RecurrentBase):
        return layer.backward(dy)[0]
    return layer.backward(dy)


def _output_shape(layer, shape):
    if isinstance(layer, RecurrentBase):
        return tuple(shape[:-1]) + (layer.num_directions * layer.hidden_size,)
    return layer.output_shape(shape)


def _num_params(layer):
    if isinstance(layer, RecurrentBase):
        return sum(v.size for v in layer._param_views().values())
    return layer.num_params


def _as_array(a, name):
    try:
        return np.asarray(a)
    except ValueError:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array; pad variable-length sequences "
                         f"with rf.data.pad_sequences") from None


def _n_samples(a, name):
    try:
        return len(a)
    except TypeError:
        raise TypeError(f"{name} must be an array with samples along its first axis") from None


class Sequential:
    """A stack of layers applied in order: ``Sequential([Embedding(...), LSTM(...,
    batch_first=True), LastStep(), Dense(...)])``."""

    def __init__(self, layers=(), *, seed=None):
        self.layers = []
        for layer in layers:
            self.add(layer)
        self._rng = _seeding.rng(seed)
        self.loss = self.optimizer = None
        self.metrics = []
        self.clip_norm = self.clip_value = None
        self.stop_training = False
        self.tokenizer = None  # saved with the model when set
        self._input_shape = None

    def add(self, layer):
        if not (hasattr(layer, "forward") and hasattr(layer, "backward")):
            raise TypeError(f"layers must be rnnfast layers, got {type(layer).__name__}")
        if isinstance(layer, RecurrentBase) and not layer.batch_first:
            raise ValueError(f"{layer!r}: recurrent layers in a Sequential take samples along the "
                             f"first axis; create them with batch_first=True")
        if isinstance(layer, LastStep) and layer.bidirectional is None:
            prev = self.layers[-1] if self.layers else None
            layer.bidirectional = isinstance(prev, RecurrentBase) and prev.bidirectional
        self.layers.append(layer)

    # --------------------------------------------------------------------------- parameters
    def _param_buffers(self):
        return [pg for layer in self.layers for pg in layer._param_buffers()]

    def _params_changed(self):
        for layer in self.layers:
            layer._params_changed()

    def state_dict(self):
        """PyTorch container keys: "0.weight", "1.weight_ih_l0", ..."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.state_dict().items()}

    def load_state_dict(self, state_dict, strict=True):
        groups = [{} for _ in self.layers]
        extra = []
        for key, value in state_dict.items():
            head, _, name = key.partition(".")
            if head.isdigit() and int(head) < len(self.layers) and name:
                groups[int(head)][name] = value
            else:
                extra.append(key)
        if strict and extra:
            raise ValueError(f"state_dict has keys no layer takes: {extra}")
        for layer, group in zip(self.layers, groups):
            layer.load_state_dict(group, strict=strict)

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def reset_states(self):
        """Clears the state stateful recurrent layers carry between batches."""
        for layer in self.layers:
            if isinstance(layer, RecurrentBase):
                layer.reset_states()

    # --------------------------------------------------------------------------- compile
    def compile(self, loss, optimizer="adam", metrics=None, clip_norm=None, clip_value=None):
        """loss: a name ("sparse_categorical_crossentropy", "categorical_crossentropy", "mse",
        "binary_crossentropy") or a loss object; optimizer: "adam", "adamw", "sgd",
        "rmsprop", "adagrad" (default arguments) or an ``rf.optim`` optimizer built on this
        model; clip_norm / clip_value clip gradients before each update."""
        if not self.layers:
            raise ValueError("the model has no layers")
        self.loss = get_loss(loss)
        if isinstance(optimizer, str):
            table = {"adam": _optim.Adam, "adamw": _optim.AdamW, "sgd": _optim.SGD,
                     "rmsprop": _optim.RMSprop, "adagrad": _optim.Adagrad}
            if optimizer.lower() not in table:
                raise ValueError(f"optimizer must be one of {sorted(table)} or an rf.optim "
                                 f"optimizer, got {optimizer!r}")
            optimizer = table[optimizer.lower()](self)
        if not isinstance(optimizer, _optim.Optimizer):
            raise TypeError(f"optimizer must be a name or an rf.optim optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.metrics = [get_metric(m) for m in (metrics or [])]
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                                  or not v > 0):
                raise ValueError(f"{name} must be a positive number or None, got {v!r}")
        self.clip_norm, self.clip_value = clip_norm, clip_value

    def _need_compiled(self):
        if self.loss is None:
            raise ValueError("call compile(loss=..., optimizer=...) first")

    # --------------------------------------------------------------------------- steps
    def _run_forward(self, x, training, lengths):
        if self._input_shape is None:
            self._input_shape = (None,) + tuple(np.shape(x)[1:])  # for summary()
        for layer in self.layers:
            x, lengths = _forward(layer, x, training, lengths)
        return x, lengths

    def train_on_batch(self, x, y, lengths=None):
        """One update; -> (mean loss, correct, rows) of this batch before the update. A loss that
        is not finite raises FloatingPointError and leaves the weights as they were (``fit``
        stops training with a RuntimeWarning instead)."""
        self._need_compiled()
        z, out_lengths = self._run_forward(x, True, lengths)
        ol = out_lengths if np.ndim(z) >= 3 else None  # steps of per-step outputs
        mean, grad, correct, rows = self.loss(z, y, ol)
        if not math.isfinite(mean):
            raise _NonFiniteLoss(mean)
        self.zero_grad()
        d = grad
        for layer in reversed(self.layers):
            d = _backward(layer, d)
        if self.clip_value is not None:  # the gradients the optimizer applies, as Keras clips
            _optim.clip_grad_value(self.optimizer, self.clip_value)
        if self.clip_norm is not None:
            _optim.clip_grad_norm(self.optimizer, self.clip_norm)
        self.optimizer.step()
        for m in self.metrics:
            m.update(self.loss, z, y, ol, mean, correct, rows)
        return mean, correct, rows

    def _batches(self, n, batch_size, shuffle):
        order = self._rng.permutation(n) if shuffle else np.arange(n)
        for i in range(0, n, batch_size):
            yield order[i:i + batch_size]

    def _check_xy(self, x, y, lengths):
        n = _n_samples(x, "x")
        if y is not None and _n_samples(y, "y") != n:
            raise ValueError(f"x and y must hold the same number of samples, got {n} and "
                             f"{_n_samples(y, 'y')}")
        if lengths is not None and _n_samples(lengths, "lengths") != n:
            raise ValueError(f"lengths must give one length per sample ({n}), got "
                             f"{_n_samples(lengths, 'lengths')}")
        if n == 0:
            raise ValueError("x holds no samples")
        return n

    @staticmethod
    def _as_lengths(lengths):
        return None if lengths is None else np.asarray(lengths)

    @staticmethod
    def _check_batch_size(batch_size):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return int(batch_size)

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, validation_split=0.0,
            shuffle=True, callbacks=None, verbose=1, lengths=None):
        """Trains; -> history: dict of per-epoch lists ("loss", metrics, "val_..." entries).
        history["loss"] is the mean of the epoch's batch losses as computed during the epoch.
        Callbacks may define on_train_begin(model), on_batch_end(model, batch, logs),
        on_epoch_end(model, epoch, logs) and on_train_end(model); setting
        model.stop_training = True ends training after the epoch."""
        self._need_compiled()
        batch_size = self._check_batch_size(batch_size)
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        x, y = _as_array(x, "x"), _as_array(y, "y")
        n = self._check_xy(x, y, lengths)
        lengths = self._as_lengths(lengths)
        if validation_data is None and validation_split:
            if not 0.0 < validation_split < 1.0:
                raise ValueError(f"validation_split must lie in [0, 1), got {validation_split}")
            n_val = int(round(n * validation_split))
            if n_val == 0 or n_val == n:
                raise ValueError(f"validation_split {validation_split} leaves no training or no "
                                 f"validation samples out of {n}")
            cut = n - n_val  # Keras takes the last samples, before shuffling
            validation_data = (x[cut:], y[cut:]) if lengths is None else \
                (x[cut:], y[cut:], lengths[cut:])
            x, y = x[:cut], y[:cut]
            lengths = None if lengths is None else lengths[:cut]
            n = cut
        callbacks = list(callbacks or [])
        history = {"loss": []}
        for m in self.metrics:
            history[m.name] = []
        self.stop_training = False
        for cb in callbacks:
            _call(cb, "on_train_begin", self)
        try:
            self._fit_epochs(x, y, lengths, n, epochs, batch_size, shuffle, validation_data,
                             callbacks, verbose, history)
        finally:
            for cb in callbacks:
                _call(cb, "on_train_end", self)
        return history

    def _fit_epochs(self, x, y, lengths, n, epochs, batch_size, shuffle, validation_data,
                    callbacks, verbose, history):
        for epoch in range(int(epochs)):
            for m in self.metrics:
                m.reset()
            losses = []
            t0 = time.perf_counter()
            bar = _Progress(n, epoch, epochs, verbose)
            for b, idx in enumerate(self._batches(n, batch_size, shuffle)):
                try:
                    mean, _, _ = self.train_on_batch(x[idx], y[idx],
                                                     None if lengths is None else lengths[idx])
                except _NonFiniteLoss as exc:  # stop here, weights as before this batch
                    warnings.warn(f"epoch {epoch + 1}, batch {b + 1}: {exc}; training stopped",
                                  RuntimeWarning, stacklevel=4)
                    history["loss"].append(exc.loss)
                    self.stop_training = True
                    bar.close({"loss": exc.loss}, 0.0)
                    return
                losses.append(mean)
                bar.update(len(idx), losses, self.metrics)
                for cb in callbacks:
                    _call(cb, "on_batch_end", self, b, {"loss": mean})
            logs = {"loss": float(np.mean(losses))}
            for m in self.metrics:
                logs[m.name] = m.result()
            if validation_data is not None:
                val = self.evaluate(*validation_data[:2], batch_size=batch_size,
                                    lengths=validation_data[2] if len(validation_data) > 2
                                    else None)
                logs.update({"val_" + k: v for k, v in val.items()})
            bar.close(logs, n / max(time.perf_counter() - t0, 1e-9))
            for cb in callbacks:  # before the history takes the logs: callbacks may add to them
                _call(cb, "on_epoch_end", self, epoch, logs)
            for k, v in logs.items():
                history.setdefault(k, []).append(v)
            if self.stop_training:
                break

    def evaluate(self, x, y, batch_size=32, lengths=None, verbose=0):
        """-> {"loss": mean over samples' rows, metric: value, ...} without updating."""
        self._need_compiled()
        batch_size = self._check_batch_size(batch_size)
        x, y = _as_array(x, "x"), _as_array(y, "y")
        n = self._check_xy(x, y, lengths)
        lengths = self._as_lengths(lengths)
        metrics = [get_metric(m.name) for m in self.metrics]  # fresh accumulators
        total = rows_total = 0.0
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            lb = None if lengths is None else lengths[sl]
            z, out_lengths = self._run_forward(x[sl], False, lb)
            ol = out_lengths if np.ndim(z) >= 3 else None
            mean, _, correct, rows = self.loss(z, y[sl], ol, want_grad=False)
            total += mean * rows
            rows_total += rows
            for m in metrics:
                m.update(self.loss, z, y[sl], ol, mean, correct, rows)
        out = {"loss": total / rows_total}
        out.update({m.name: m.result() for m in metrics})
        if verbose:
            print(" - ".join(f"{k}: {v:.4g}" for k, v in out.items()))
        return out

    def predict(self, x, batch_size=32, lengths=None):
        """Model outputs (logits for classification losses) for every sample, in order."""
        batch_size = self._check_batch_size(batch_size)
        x = _as_array(x, "x")
        n = self._check_xy(x, None, lengths)
        lengths = self._as_lengths(lengths)
        outs = []
        for i in range(0, n, batch_size):
            lb = None if lengths is None else lengths[i:i + batch_size]
            outs.append(self._run_forward(x[i:i + batch_size], False, lb)[0])
        return np.concatenate(outs, axis=0)

    def __call__(self, x, lengths=None):
        return self._run_forward(x, False, lengths)[0]

    def save(self, path, tokenizer=None):
        """One file: architecture, weights, compile setup, optimizer state, tokenizer
        (``rf.load(path)`` reads it back)."""
        from .saving import save
        save(self, path, tokenizer)

    # --------------------------------------------------------------------------- summary
    def summary(self, input_shape=None, print_fn=print):
        """Layers, output shapes (from input_shape, samples axis None; by default the shape
        of the first input the model saw) and parameter counts."""
        rows = [("Layer", "Output shape", "Params")]
        if input_shape is None:
            input_shape = self._input_shape
        shape = tuple(input_shape) if input_shape is not None else None
        for i, layer in enumerate(self.layers):
            if shape is not None:
                shape = _output_shape(layer, shape)
            rows.append((f"{i}: {layer!r}", _shape_str_none(shape) if shape else "?",
                         f"{_num_params(layer):,}"))
        total = sum(_num_params(layer) for layer in self.layers)
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        lines = ["  ".join(r[c].ljust(widths[c]) for c in range(3)) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"Total params: {total:,}")
        text = "\n".join(lines)
        if print_fn:
            print_fn(text)
        return text

    def __repr__(self):
        return "Sequential([" + ", ".join(repr(layer) for layer in self.layers) + "])"


def _shape_str_none(shape):
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + \
        ("," if len(shape) == 1 else "") + ")"


class _NonFiniteLoss(FloatingPointError):
    def __init__(self, loss):
        self.loss = float(loss)
        super().__init__(f"the loss is {loss}: training diverged (lower the learning rate, clip "
                         f"gradients, or check the inputs for nan/inf)")


def _call(cb, name, *args):
    fn = getattr(cb, name, None)
    if fn is not None:
        fn(*args)


class _Progress:
    """A per-epoch progress line (tqdm when installed, plain text otherwise); silent at
    verbose=0."""

    def __init__(self, n, epoch, epochs, verbose):
        self.verbose, self.n, self.done = verbose, n, 0
        self.prefix = f"Epoch {epoch + 1}/{epochs}"
        self.bar = None
        self._shown = -1.0
        self._width = 0
        if verbose == 1:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=n, desc=self.prefix, unit="sample", leave=True)
            except ImportError:
                self.bar = None

    def update(self, k, losses, metrics):
        self.done += k
        if self.verbose != 1:
            return
        info = {"loss": f"{sum(losses) / len(losses):.4f}"}
        info.update({m.name: f"{m.result():.4f}" for m in metrics})
        if self.bar is not None:
            self.bar.update(k)
            self.bar.set_postfix(info, refresh=False)
        else:
            now = time.perf_counter()
            if now - self._shown < 0.1 and self.done < self.n:  # at most ~10 lines a second
                return
            self._shown = now
            width = 30
            filled = int(width * self.done / self.n)
            self._write(f"{self.prefix} [{'=' * filled}{'.' * (width - filled)}] "
                        f"{self.done}/{self.n} " + " ".join(f"{k}: {v}" for k, v in info.items()))

    def _write(self, line, end=""):
        pad = max(0, self._width - len(line))  # cover what the last line left
        sys.stdout.write("\r" + line + " " * pad + end)
        sys.stdout.flush()
        self._width = 0 if end else len(line)

    def close(self, logs, rate):
        if not self.verbose:
            return
        text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()) + f" - {rate:,.0f} samples/s"
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.close()
        elif self.verbose == 1:
            self._write(f"{self.prefix} {self.done}/{self.n} - {text}", "\n")
        else:
            sys.stdout.write(f"{self.prefix} - {text}\n")
