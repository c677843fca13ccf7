"""rf.optim against torch.optim (when installed) and against NumPy transcriptions of the update
formulas in PyTorch's documentation, on every kernel build."""

import math

import numpy as np
import pytest

import rnnfast as rf
from rnnfast import optim

try:
    import torch
except ImportError:  # the NumPy oracle still runs
    torch = None

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.02, weight_decay=0.1, amsgrad=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
]


def numpy_updates(name, kw, p, grads):
    """The documented update rules, written out in NumPy (float64)."""
    p = p.astype(np.float64).copy()
    lr, wd = kw.get("lr"), kw.get("weight_decay", 0.0 if name != "AdamW" else 1e-2)
    st = {}
    for step, g in enumerate(grads, 1):
        g = g.astype(np.float64)
        if name == "SGD":
            mom, damp = kw.get("momentum", 0.0), kw.get("dampening", 0.0)
            d = g + wd * p
            if mom:
                st["b"] = d.copy() if step == 1 else mom * st["b"] + (1 - damp) * d
                d = d + mom * st["b"] if kw.get("nesterov") else st["b"]
            p = p - lr * d
        elif name in ("Adam", "AdamW"):
            b1, b2 = kw.get("betas", (0.9, 0.999))
            eps = kw.get("eps", 1e-8)
            if name == "AdamW":
                p = p * (1 - lr * wd)
                d = g
            else:
                d = g + wd * p
            st["m"] = b1 * st.get("m", 0) + (1 - b1) * d
            st["v"] = b2 * st.get("v", 0) + (1 - b2) * d * d
            v = st["v"]
            if kw.get("amsgrad"):
                st["vmax"] = np.maximum(st.get("vmax", 0), v)
                v = st["vmax"]
            denom = np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps
            p = p - lr / (1 - b1 ** step) * st["m"] / denom
        elif name == "RMSprop":
            alpha, eps, mom = kw.get("alpha", 0.99), kw.get("eps", 1e-8), kw.get("momentum", 0.0)
            d = g + wd * p
            st["sq"] = alpha * st.get("sq", 0) + (1 - alpha) * d * d
            if kw.get("centered"):
                st["ga"] = alpha * st.get("ga", 0) + (1 - alpha) * d
                avg = np.sqrt(st["sq"] - st["ga"] ** 2) + eps
            else:
                avg = np.sqrt(st["sq"]) + eps
            if mom:
                st["b"] = mom * st.get("b", 0) + d / avg
                p = p - lr * st["b"]
            else:
                p = p - lr * d / avg
        else:  # Adagrad
            eps = kw.get("eps", 1e-10)
            d = g + wd * p
            clr = lr / (1 + (step - 1) * kw.get("lr_decay", 0.0))
            st["s"] = st.get("s", kw.get("initial_accumulator_value", 0.0)) + d * d
            p = p - clr * d / (np.sqrt(st["s"]) + eps)
    return p


def run_rf(name, kw, p0, grads, dtype, num_threads=None):
    p = p0.astype(dtype).copy()
    g = np.zeros_like(p)
    opt = getattr(optim, name)([(p, g)], **kw, num_threads=num_threads)
    for gi in grads:
        g[...] = gi
        opt.step()
    return p, opt


def problem(n=1031, steps=20, seed=0):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(n)
    grads = [rng.standard_normal(n) * (1 + 0.5 * k % 3) for k in range(steps)]
    return p0, grads


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_matches_numpy_transcription(isa, name, kw):
    p0, grads = problem()
    want = numpy_updates(name, kw, p0, grads)
    got64, _ = run_rf(name, kw, p0, grads, np.float64)
    np.testing.assert_allclose(got64, want, rtol=1e-12, atol=1e-12)
    got32, _ = run_rf(name, kw, p0, grads, np.float32)
    np.testing.assert_allclose(got32, want, rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_matches_torch_optim(name, kw):
    p0, grads = problem(seed=1)
    got, _ = run_rf(name, kw, p0, grads, np.float32)
    tp = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    topt = getattr(torch.optim, name)([tp], **kw)
    for g in grads:
        tp.grad = torch.tensor(g, dtype=torch.float32)
        topt.step()
    np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_thread_count_does_not_change_results():
    p0, grads = problem(n=300_001, steps=3)
    a, _ = run_rf("Adam", dict(lr=0.01), p0, grads, np.float32, num_threads=1)
    b, _ = run_rf("Adam", dict(lr=0.01), p0, grads, np.float32, num_threads=2)
    np.testing.assert_array_equal(a, b)
    g = grads[0].astype(np.float32)
    assert rf._core.sum_squares(g, 1) == rf._core.sum_squares(g, 2)


def test_resume_from_state_dict():
    p0, grads = problem(steps=10)
    straight, _ = run_rf("Adam", dict(lr=0.01, amsgrad=True), p0, grads, np.float32)
    p, opt = run_rf("Adam", dict(lr=0.01, amsgrad=True), p0, grads[:5], np.float32)
    saved = opt.state_dict()
    g = np.zeros_like(p)
    opt2 = optim.Adam([(p, g)], lr=0.5, amsgrad=True)
    opt2.load_state_dict(saved)
    assert opt2.lr == 0.01
    for gi in grads[5:]:
        g[...] = gi
        opt2.step()
    np.testing.assert_array_equal(p, straight)
    with pytest.raises(ValueError, match="state"):
        optim.Adam([(p, g), (p.copy(), g.copy())]).load_state_dict(saved)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_updates_reach_the_engine(mode):
    # After a step the layer computes with the new weights (the packed copies are rebuilt).
    m = getattr(rf, mode)(6, 10, num_layers=2)
    ref = getattr(rf.reference, mode)(6, 10, num_layers=2, dtype=np.float64)
    opt = optim.SGD(m, lr=0.1, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((7, 3, 6)).astype(np.float32)
    for _ in range(3):
        y, _ = m.forward(x, training=True)
        m.backward(np.ones_like(y))
        opt.step()
        opt.zero_grad()
    assert not any(g.any() for g in m.grads.values())
    ref.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m(x)[0], ref(x.astype(np.float64))[0], rtol=1e-4, atol=1e-5)


def test_clip_grad_norm_and_value():
    rng = np.random.default_rng(3)
    pa, pb = np.zeros(50, np.float32), np.zeros((4, 5), np.float32)
    ga, gb = rng.standard_normal(50).astype(np.float32), rng.standard_normal((4, 5)).astype(
        np.float32)
    norm = math.sqrt(float((ga.astype(np.float64) ** 2).sum() + (gb.astype(np.float64) ** 2).sum()))
    a0, b0 = ga.copy(), gb.copy()
    got = optim.clip_grad_norm([(pa, ga), (pb, gb)], max_norm=1.0)
    assert got == pytest.approx(norm, rel=1e-12)
    scale = 1.0 / (norm + 1e-6)
    np.testing.assert_allclose(ga, a0 * scale, rtol=1e-6)
    np.testing.assert_allclose(gb, b0 * scale, rtol=1e-6)
    assert optim.clip_grad_norm([(pa, ga), (pb, gb)], max_norm=10.0) == pytest.approx(1.0, 1e-5)
    np.testing.assert_allclose(ga, a0 * scale, rtol=1e-6)  # under the limit: untouched
    ga[3] = np.nan
    before = gb.copy()
    assert math.isnan(optim.clip_grad_norm([(pa, ga), (pb, gb)], max_norm=1e-3))
    np.testing.assert_array_equal(gb, before)  # not finite: nothing scaled
    gb[...] = b0
    optim.clip_grad_value([(pb, gb)], 0.5)
    np.testing.assert_array_equal(gb, np.clip(b0, -0.5, 0.5))
    if torch is not None:
        t = [torch.nn.Parameter(torch.zeros(50)), torch.nn.Parameter(torch.zeros(4, 5))]
        t[0].grad, t[1].grad = torch.tensor(a0), torch.tensor(b0)
        tn = torch.nn.utils.clip_grad_norm_(t, 1.0)
        assert float(tn) == pytest.approx(norm, rel=1e-5)


SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("LinearLR", dict(start_factor=0.1, total_iters=4)),
]


@pytest.mark.parametrize("name,kw", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules(name, kw):
    p, g = np.zeros(3, np.float32), np.zeros(3, np.float32)
    opt = optim.SGD([(p, g)], lr=0.1)
    sched = getattr(optim, name)(opt, **kw)
    got = []
    for _ in range(12):
        got.append(opt.lr)
        sched.step()
    closed = {
        "StepLR": lambda e: 0.1 * 0.5 ** (e // 3),
        "ExponentialLR": lambda e: 0.1 * 0.9 ** e,
        "CosineAnnealingLR": lambda e: 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * e / 7)) / 2,
        "LinearLR": lambda e: 0.1 * (0.1 + 0.9 * min(e, 4) / 4),
    }[name]
    np.testing.assert_allclose(got, [closed(e) for e in range(12)], rtol=1e-12)
    if torch is not None:
        tp = torch.nn.Parameter(torch.zeros(3))
        topt = torch.optim.SGD([tp], lr=0.1)
        tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
        want = []
        for _ in range(12):
            want.append(topt.param_groups[0]["lr"])
            topt.step()
            tsched.step()
        np.testing.assert_allclose(got, want, rtol=1e-9)
    lam = optim.LambdaLR(optim.SGD([(p, g)], lr=0.2), lambda e: 1 / (e + 1))
    lam.step()
    assert lam.get_last_lr() == [pytest.approx(0.1)]


def test_bad_arguments():
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([(p, g)], lr=-1)
    with pytest.raises(TypeError, match="lr"):
        optim.Adam([(p, g)], lr="fast")
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([(p, g)], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([(p, g)], nesterov=True)
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD([])
    with pytest.raises(ValueError, match="shape"):
        optim.SGD([(p, np.zeros(5, np.float32))])
    with pytest.raises(ValueError, match="contiguous"):
        optim.SGD([(np.zeros((4, 4), np.float32).T, np.zeros((4, 4), np.float32).T)])
    with pytest.raises(TypeError, match="float32 or float64"):
        optim.SGD([(np.zeros(4, np.int64), np.zeros(4, np.int64))])
    with pytest.raises(TypeError, match="params"):
        optim.SGD(3)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm([(p, g)], -1.0)
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(optim.SGD([(p, g)]), step_size=0)
