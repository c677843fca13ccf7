"""Optimizers, learning-rate schedules and gradient clipping with PyTorch's names, arguments,
defaults and update formulas, so the same hyperparameters give the same updates.

An optimizer takes a model or layer (anything with ``_param_buffers()``, e.g. ``rf.LSTM``), a
list of them, or ``(param, grad)`` array pairs. Each update runs in C++ over whole flat
buffers (a recurrent layer keeps all its parameters in one), and the layers repack their
weights afterwards::

    opt = rf.optim.Adam(lstm, lr=1e-3)
    sched = rf.optim.StepLR(opt, step_size=10, gamma=0.5)
    ...  # forward, backward
    rf.optim.clip_grad_norm(lstm, max_norm=5.0)
    opt.step()
    opt.zero_grad()
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _core
from ._base import check_num_threads

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm",
           "clip_grad_value", "LRScheduler", "StepLR", "ExponentialLR", "CosineAnnealingLR",
           "LinearLR", "LambdaLR"]

_SGD, _ADAM, _RMSPROP, _ADAGRAD = 0, 1, 2, 3


class _Buffer:
    """One flat parameter buffer, its gradient and the object to tell after an update."""

    __slots__ = ("param", "grad", "owner")

    def __init__(self, param, grad, owner):
        for name, a in (("param", param), ("grad", grad)):
            if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
                raise TypeError(f"{name} must be a float32 or float64 array")
        if param.shape != grad.shape or param.dtype != grad.dtype:
            raise ValueError(f"a parameter of shape {param.shape} ({param.dtype}) needs a gradient "
                             f"of the same shape and dtype, got {grad.shape} ({grad.dtype})")
        if not (param.flags.c_contiguous and grad.flags.c_contiguous and param.flags.writeable
                and grad.flags.writeable):
            raise ValueError("parameters and gradients must be C-contiguous, writeable arrays")
        self.param, self.grad, self.owner = param.reshape(-1), grad.reshape(-1), owner


def _buffers(params) -> list[_Buffer]:
    """A model, a list of models or (param, grad) pairs -> flat buffers, each array once; an
    optimizer -> the buffers it updates."""
    if isinstance(params, Optimizer):
        return params._buffers
    if hasattr(params, "_param_buffers"):
        params = [params]
    try:
        items = list(params)
    except TypeError:
        raise TypeError("params must be a model or layer, a list of them, or (param, grad) "
                        "array pairs") from None
    out, seen = [], set()
    for item in items:
        if hasattr(item, "_param_buffers"):
            pairs = [(p, g, item) for p, g in item._param_buffers()]
        elif isinstance(item, tuple) and len(item) == 2:
            pairs = [(item[0], item[1], None)]
        else:
            raise TypeError(f"params must be a model or layer, a list of them, or (param, grad) "
                            f"array pairs; got {type(item).__name__}")
        for p, g, owner in pairs:
            buf = _Buffer(p, g, owner)
            key = buf.param.__array_interface__["data"][0]
            if key not in seen:
                seen.add(key)
                out.append(buf)
    if not out:
        raise ValueError("the optimizer got no parameters")
    return out


def _number(value, name, low=0.0, high=math.inf, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}{']' if high < math.inf else ')'}"
        raise ValueError(f"{name} must lie in {bounds}, got {value}")
    return value


class Optimizer:
    """Base class: keeps the buffers, per-buffer state and step counts; ``param_groups`` holds
    one group (a dict with ``"lr"`` and the other hyperparameters) as in PyTorch."""

    _algo = _SGD
    _state_names: tuple[str, ...] = ()

    def __init__(self, params, defaults, num_threads=None):
        self._buffers = _buffers(params)
        self.param_groups = [dict(defaults)]
        self.num_threads = check_num_threads(num_threads, "num_threads") or None
        self.state = [{} for _ in self._buffers]  # per buffer: name -> array, "step" -> int

    @property
    def lr(self):
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        self.param_groups[0]["lr"] = _number(value, "lr")

    def zero_grad(self):
        for buf in self._buffers:
            buf.grad[...] = 0

    def _state_arrays(self, i, group):
        """The state buffers this update needs (created zero on first use) -> (s1, s2, s3)."""
        raise NotImplementedError

    def step(self):
        """One update of every parameter from its gradient."""
        group = self.param_groups[0]
        hyper = self._hyper(group)
        owners = []
        for i, buf in enumerate(self._buffers):
            st = self.state[i]
            st["step"] = st.get("step", 0) + 1
            hyper["step"] = st["step"]
            s1, s2, s3 = self._state_arrays(i, group)
            _core.optim_step(hyper, buf.param, buf.grad, s1, s2, s3, self.num_threads or 0)
            if buf.owner is not None and all(buf.owner is not o for o in owners):
                owners.append(buf.owner)
        for owner in owners:
            owner._params_changed()  # repack the weights the kernels read

    def _hyper(self, group):
        h = dict(algo=self._algo, step=1, lr=group["lr"], weight_decay=group.get("weight_decay", 0.0),
                 momentum=group.get("momentum", 0.0), dampening=group.get("dampening", 0.0),
                 beta1=0.9, beta2=0.999, eps=group.get("eps", 1e-8), alpha=group.get("alpha", 0.99),
                 lr_decay=group.get("lr_decay", 0.0), nesterov=group.get("nesterov", False),
                 decoupled=False, maximize=group.get("maximize", False))
        if "betas" in group:
            h["beta1"], h["beta2"] = group["betas"]
        return h

    def _zeros(self, i, name):
        st = self.state[i]
        if name not in st:
            st[name] = np.zeros_like(self._buffers[i].param)
        return st[name]

    # -------------------------------------------------------------- saving and resuming
    def state_dict(self):
        """Hyperparameters and per-buffer state (arrays and step counts), for resuming."""
        return {"param_groups": [dict(g) for g in self.param_groups],
                "state": [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                          for st in self.state]}

    def load_state_dict(self, state_dict):
        try:
            groups, states = state_dict["param_groups"], state_dict["state"]
        except (TypeError, KeyError):
            raise ValueError("state_dict must hold 'param_groups' and 'state'") from None
        if len(groups) != 1 or len(states) != len(self._buffers):
            raise ValueError(f"state_dict is for {len(states)} parameter buffers, this optimizer "
                             f"has {len(self._buffers)}")
        new_states = []
        for i, st in enumerate(states):
            new = {}
            for k, v in st.items():
                if k == "step":
                    new[k] = int(v)
                    continue
                arr = np.asarray(v)
                want = self._buffers[i].param
                if arr.shape != want.shape:
                    raise ValueError(f"state {k!r} of buffer {i} must have shape {want.shape}, "
                                     f"got {arr.shape}")
                new[k] = np.array(arr, dtype=want.dtype)
            new_states.append(new)
        self.param_groups = [dict(groups[0])]
        self.state = new_states

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.param_groups[0].items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum, weight decay."""

    _algo = _SGD

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, num_threads=None):
        momentum = _number(momentum, "momentum")
        dampening = _number(dampening, "dampening")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=_number(lr, "lr"), momentum=momentum,
                                      dampening=dampening,
                                      weight_decay=_number(weight_decay, "weight_decay"),
                                      nesterov=bool(nesterov), maximize=bool(maximize)),
                         num_threads)

    def _state_arrays(self, i, group):
        if group["momentum"] == 0:
            return None, None, None
        return self._zeros(i, "momentum_buffer"), None, None


class Adam(Optimizer):
    """Adam (Kingma & Ba), with L2 weight decay added to the gradient and optional AMSGrad."""

    _algo = _ADAM
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, num_threads=None):
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
        betas = (_number(b1, "betas[0]", 0.0, 1.0), _number(b2, "betas[1]", 0.0, 1.0))
        if betas[0] == 1.0 or betas[1] == 1.0:
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=_number(lr, "lr"), betas=betas,
                                      eps=_number(eps, "eps"),
                                      weight_decay=_number(weight_decay, "weight_decay"),
                                      amsgrad=bool(amsgrad), maximize=bool(maximize)),
                         num_threads)

    def _hyper(self, group):
        h = super()._hyper(group)
        h["decoupled"] = self._decoupled
        return h

    def _state_arrays(self, i, group):
        vmax = self._zeros(i, "max_exp_avg_sq") if group["amsgrad"] else None
        return self._zeros(i, "exp_avg"), self._zeros(i, "exp_avg_sq"), vmax


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr * weight_decay."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, num_threads=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         num_threads=num_threads)


class RMSprop(Optimizer):
    """RMSprop with optional centering and momentum."""

    _algo = _RMSPROP

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, num_threads=None):
        super().__init__(params, dict(lr=_number(lr, "lr"), alpha=_number(alpha, "alpha", 0, 1),
                                      eps=_number(eps, "eps"),
                                      weight_decay=_number(weight_decay, "weight_decay"),
                                      momentum=_number(momentum, "momentum"),
                                      centered=bool(centered), maximize=bool(maximize)),
                         num_threads)

    def _state_arrays(self, i, group):
        gavg = self._zeros(i, "grad_avg") if group["centered"] else None
        buf = self._zeros(i, "momentum_buffer") if group["momentum"] > 0 else None
        return self._zeros(i, "square_avg"), gavg, buf


class Adagrad(Optimizer):
    """Adagrad with learning-rate decay and an initial accumulator value."""

    _algo = _ADAGRAD

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, num_threads=None):
        self._initial = _number(initial_accumulator_value, "initial_accumulator_value")
        super().__init__(params, dict(lr=_number(lr, "lr"), lr_decay=_number(lr_decay, "lr_decay"),
                                      weight_decay=_number(weight_decay, "weight_decay"),
                                      initial_accumulator_value=self._initial,
                                      eps=_number(eps, "eps"), maximize=bool(maximize)),
                         num_threads)

    def _state_arrays(self, i, group):
        st = self.state[i]
        if "sum" not in st:
            st["sum"] = np.full_like(self._buffers[i].param, self._initial)
        return st["sum"], None, None


# ------------------------------------------------------------------------ gradient clipping
def clip_grad_norm(params, max_norm, num_threads=None):
    """``params`` as for an optimizer, or an optimizer (the gradients it applies).
    Scales all gradients together so that their global L2 norm is at most ``max_norm``
    (PyTorch's ``clip_grad_norm_``: factor max_norm / (norm + 1e-6) when below 1). Returns the
    norm before clipping (inf or nan when a gradient is not finite; nothing is scaled then)."""
    max_norm = _number(max_norm, "max_norm")
    nt = check_num_threads(num_threads, "num_threads")
    bufs = _buffers(params)
    total = math.sqrt(sum(_core.sum_squares(b.grad, nt) for b in bufs))
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for b in bufs:
            _core.scale_clip(b.grad, coef, -1.0, nt)
    return total


def clip_grad_value(params, clip_value, num_threads=None):
    """Clamps every gradient element to [-clip_value, clip_value] (``clip_grad_value_``)."""
    clip_value = _number(clip_value, "clip_value")
    nt = check_num_threads(num_threads, "num_threads")
    for b in _buffers(params):
        _core.scale_clip(b.grad, 1.0, clip_value, nt)


# ------------------------------------------------------------------------ learning-rate schedules
class LRScheduler:
    """Sets ``optimizer.lr`` from its initial value by epoch (PyTorch's closed forms). Call
    ``step()`` once per epoch (or per batch, for warm-up by steps); ``last_epoch`` counts them."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an rnnfast optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        group = optimizer.param_groups[0]
        group.setdefault("initial_lr", group["lr"])
        self.base_lr = group["initial_lr"]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, epoch):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        return [self.optimizer.lr]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lr = int(state["last_epoch"]), float(state["base_lr"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


def _count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class StepLR(LRScheduler):
    """lr = base * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size, self.gamma = _count(step_size, "step_size"), _number(gamma, "gamma")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base * gamma ** epoch."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = _number(gamma, "gamma")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max, self.eta_min = _count(T_max, "T_max"), _number(eta_min, "eta_min")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        cos = math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + cos) / 2


class LinearLR(LRScheduler):
    """Linear warm-up (or decay): the factor goes from start_factor to end_factor over
    total_iters steps, then stays: lr = base * factor."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        self.start_factor = _number(start_factor, "start_factor", 0.0, 1.0, low_open=True)
        self.end_factor = _number(end_factor, "end_factor", 0.0, 1.0)
        self.total_iters = _count(total_iters, "total_iters")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        t = min(epoch, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * t)


class LambdaLR(LRScheduler):
    """lr = base * lr_lambda(epoch)."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        if not callable(lr_lambda):
            raise TypeError("lr_lambda must be callable: epoch -> factor")
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def lr_at(self, epoch):
        return self.base_lr * float(self.lr_lambda(epoch))
