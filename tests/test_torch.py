"""Cross-check against PyTorch (skipped when torch is not installed): a PyTorch state_dict
loads unchanged and gives the same outputs (1e-5 relative) and gradients (1e-4) in float32."""

import numpy as np
import pytest

import rnnfast as rf

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402


def torch_module(mode, I, H, L, bidirectional, bias, batch_first):
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    if mode.startswith("RNN"):
        return torch.nn.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
    return getattr(torch.nn, mode)(I, H, **kw)


def ours(mode, I, H, L, bidirectional, bias, batch_first):
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    if mode.startswith("RNN"):
        return rf.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
    return getattr(rf, mode)(I, H, **kw)


def close(a, b, rtol, what):
    """Relative agreement, with an absolute floor scaled to the array's magnitude."""
    b = np.asarray(b)
    scale = max(float(np.abs(b).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale * 0.1, err_msg=what)


CONFIGS = [
    # mode, T, B, I, H, L, bidirectional, bias, batch_first, lengths, unbatched, with_state
    ("LSTM", 37, 3, 45, 77, 3, True, True, True, [37, 12, 1], False, True),
    ("LSTM", 37, 3, 45, 77, 1, False, True, False, None, False, False),
    ("LSTM", 9, 1, 16, 32, 2, True, False, False, None, True, True),
    ("GRU", 37, 3, 45, 77, 2, True, True, True, [5, 37, 20], False, True),
    ("GRU", 11, 4, 8, 24, 1, False, True, False, [11, 3, 7, 1], False, False),
    ("GRU", 7, 1, 5, 9, 2, False, True, False, None, True, True),
    ("RNN_TANH", 37, 3, 45, 77, 2, True, True, False, [37, 36, 2], False, True),
    ("RNN_RELU", 20, 5, 13, 31, 2, True, False, True, [20, 1, 19, 8, 13], False, True),
    ("RNN_TANH", 6, 1, 4, 10, 1, True, True, False, None, True, False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c[0]}-L{c[5]}-D{int(c[6]) + 1}"
                         f"-{'unbatched' if c[10] else ('bf' if c[8] else 'tm')}"
                         f"{'-len' if c[9] else ''}-H{c[4]}")
def test_matches_pytorch(cfg, isa):
    mode, T, B, I, H, L, bidir, bias, bf, lengths, unbatched, with_state = cfg
    torch.manual_seed(0)
    tm = torch_module(mode, I, H, L, bidir, bias, bf)
    m = ours(mode, I, H, L, bidir, bias, bf)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})

    rng = np.random.default_rng(1)
    D = 2 if bidir else 1
    xshape = (T, I) if unbatched else ((B, T, I) if bf else (T, B, I))
    sshape = (L * D, H) if unbatched else (L * D, B, H)
    x = rng.standard_normal(xshape).astype(np.float32)
    h0 = rng.standard_normal(sshape).astype(np.float32) if with_state else None
    c0 = rng.standard_normal(sshape).astype(np.float32) if with_state else None

    # PyTorch
    xt = torch.tensor(x, requires_grad=True)
    tstate = None
    if with_state:
        th0 = torch.tensor(h0, requires_grad=True)
        tc0 = torch.tensor(c0, requires_grad=True)
        tstate = (th0, tc0) if mode == "LSTM" else th0
    if lengths is not None:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=bf,
                                      enforce_sorted=False)
        tout, tfin = tm(packed, tstate)
        ty, _ = pad_packed_sequence(tout, batch_first=bf, total_length=T)
    else:
        ty, tfin = tm(xt, tstate)
    tfin = tfin if mode == "LSTM" else (tfin,)

    # rnnfast
    state = None
    if with_state:
        state = (h0, c0) if mode == "LSTM" else h0
    y, fin = m.forward(x, state, lengths, training=True)
    fin = fin if mode == "LSTM" else (fin,)

    close(y, ty.detach().numpy(), 1e-5, "y")
    for a, b in zip(fin, tfin):
        close(a, b.detach().numpy(), 1e-5, "final state")

    dy = rng.standard_normal(y.shape).astype(np.float32)
    dfin = [rng.standard_normal(sshape).astype(np.float32) for _ in fin]
    loss = (ty * torch.tensor(dy)).sum()
    for t, d in zip(tfin, dfin):
        loss = loss + (t * torch.tensor(d)).sum()
    loss.backward()
    dx, dstate0 = m.backward(dy, tuple(dfin) if mode == "LSTM" else dfin[0])

    close(dx, xt.grad.numpy(), 1e-4, "dx")
    if with_state:
        dstate0 = dstate0 if mode == "LSTM" else (dstate0,)
        tgrads = (th0.grad, tc0.grad) if mode == "LSTM" else (th0.grad,)
        for a, b in zip(dstate0, tgrads):
            close(a, b.numpy(), 1e-4, "dstate0")
    for name, p in tm.named_parameters():
        close(m.grads[name], p.grad.numpy(), 1e-4, name)


def test_pytorch_state_dict_tensors_load_directly():
    tm = torch.nn.GRU(6, 10, num_layers=2)
    m = rf.GRU(6, 10, num_layers=2)
    m.load_state_dict(tm.state_dict())  # tensors, not arrays
    x = np.random.default_rng(0).standard_normal((4, 2, 6)).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.tensor(x))[0].numpy()
    close(m(x)[0], want, 1e-5, "y")
