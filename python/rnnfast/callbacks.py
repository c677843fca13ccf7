"""Callbacks for ``Sequential.fit`` with Keras' names and arguments. A callback may define
``on_train_begin(model)``, ``on_batch_end(model, batch, logs)``,
``on_epoch_end(model, epoch, logs)`` and ``on_train_end(model)``; ``logs`` holds the epoch's
"loss", metrics and "val_..." values."""

from __future__ import annotations

import csv
import math
import os

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger",
           "LambdaCallback", "LearningRateScheduler"]


class Callback:
    def on_train_begin(self, model):
        pass

    def on_batch_end(self, model, batch, logs):
        pass

    def on_epoch_end(self, model, epoch, logs):
        pass

    def on_train_end(self, model):
        pass


class _Monitor:
    """Tracks the best value of a logged quantity ("min" for losses, "max" otherwise)."""

    def __init__(self, monitor, mode, min_delta):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "accuracy")) else "min"
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.best = math.inf if mode == "min" else -math.inf

    def value(self, logs):
        if self.monitor not in logs:
            raise KeyError(f"monitor {self.monitor!r} is not logged; available: {sorted(logs)}")
        return float(logs[self.monitor])

    def improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs; with
    ``restore_best_weights`` the model ends with the weights of its best epoch."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False):
        self._m = _Monitor(monitor, mode, min_delta)
        self.patience = int(patience)
        self.restore_best_weights = bool(restore_best_weights)
        self.wait = 0
        self.stopped_epoch = None
        self._best_weights = None

    def on_train_begin(self, model):
        self._m.best = math.inf if self._m.mode == "min" else -math.inf
        self.wait, self.stopped_epoch, self._best_weights = 0, None, None

    def on_epoch_end(self, model, epoch, logs):
        value = self._m.value(logs)
        if self._m.improved(value):
            self._m.best, self.wait = value, 0
            if self.restore_best_weights:
                self._best_weights = model.state_dict()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            model.stop_training = True
            if self._best_weights is not None:
                model.load_state_dict(self._best_weights)


class ModelCheckpoint(Callback):
    """Saves the model (``model.save``) after each epoch, or only when ``monitor`` improves
    with ``save_best_only``; ``filepath`` may use {epoch} and logged names, e.g.
    "ckpt-{epoch:02d}-{val_loss:.3f}.rnnfast"."""

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto"):
        self.filepath = os.fspath(filepath)
        self.save_best_only = bool(save_best_only)
        self._m = _Monitor(monitor, mode, 0.0)

    def on_epoch_end(self, model, epoch, logs):
        if self.save_best_only:
            value = self._m.value(logs)
            if not self._m.improved(value):
                return
            self._m.best = value
        model.save(self.filepath.format(epoch=epoch + 1, **logs))


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` after ``patience`` epochs without improvement
    of ``monitor``, then waits ``cooldown`` epochs; never below ``min_lr``. Logs "lr"."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must lie in (0, 1), got {factor}")
        self._m = _Monitor(monitor, mode, min_delta)
        self.factor, self.patience, self.cooldown = float(factor), int(patience), int(cooldown)
        self.min_lr = float(min_lr)
        self.wait = self.cooldown_left = 0

    def on_epoch_end(self, model, epoch, logs):
        self._update(model, self._m.value(logs))
        logs["lr"] = model.optimizer.lr

    def _update(self, model, value):
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if self._m.improved(value):
            self._m.best, self.wait = value, 0
            return
        if self.cooldown_left > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            opt = model.optimizer
            opt.lr = max(opt.lr * self.factor, self.min_lr)
            self.wait, self.cooldown_left = 0, self.cooldown


class CSVLogger(Callback):
    """Writes one CSV row per epoch: epoch and every logged value."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self._file = self._writer = None
        self._keys = None

    def on_train_begin(self, model):
        exists = self.append and os.path.exists(self.filename)
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer = None
        self._keys = None
        self._header_written = exists

    def on_epoch_end(self, model, epoch, logs):
        if self._writer is None:
            self._keys = sorted(logs)
            self._writer = csv.writer(self._file, delimiter=self.separator)
            if not self._header_written:
                self._writer.writerow(["epoch"] + self._keys)
        self._writer.writerow([epoch] + [logs.get(k, "") for k in self._keys])
        self._file.flush()

    def on_train_end(self, model):
        if self._file is not None:
            self._file.close()
            self._file = None


class LambdaCallback(Callback):
    """Callback from plain functions: on_epoch_end(epoch, logs), on_batch_end(batch, logs),
    on_train_begin(), on_train_end()."""

    def __init__(self, on_epoch_end=None, on_batch_end=None, on_train_begin=None,
                 on_train_end=None):
        self._fns = dict(on_epoch_end=on_epoch_end, on_batch_end=on_batch_end,
                         on_train_begin=on_train_begin, on_train_end=on_train_end)
        for name, fn in self._fns.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")

    def on_train_begin(self, model):
        if self._fns["on_train_begin"]:
            self._fns["on_train_begin"]()

    def on_batch_end(self, model, batch, logs):
        if self._fns["on_batch_end"]:
            self._fns["on_batch_end"](batch, logs)

    def on_epoch_end(self, model, epoch, logs):
        if self._fns["on_epoch_end"]:
            self._fns["on_epoch_end"](epoch, logs)

    def on_train_end(self, model):
        if self._fns["on_train_end"]:
            self._fns["on_train_end"]()


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of each epoch: ``schedule`` is an ``rf.optim``
    schedule (stepped once per epoch) or, as in Keras, a function (epoch, lr) -> lr."""

    def __init__(self, schedule):
        from .optim import LRScheduler
        if not (isinstance(schedule, LRScheduler) or callable(schedule)):
            raise TypeError("schedule must be an rf.optim schedule or a function (epoch, lr) -> lr")
        self.schedule = schedule
        self._epoch = 0

    def on_train_begin(self, model):
        self._epoch = 0
        self._apply(model)

    def on_epoch_end(self, model, epoch, logs):
        self._epoch = epoch + 1
        self._apply(model)
        logs["lr"] = model.optimizer.lr

    def _apply(self, model):
        from .optim import LRScheduler
        if isinstance(self.schedule, LRScheduler):
            if self._epoch:  # the schedule set epoch 0's rate when it was made
                self.schedule.step()
        else:
            model.optimizer.lr = float(self.schedule(self._epoch, model.optimizer.lr))
