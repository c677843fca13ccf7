"""Sequential models and the feed-forward layers: PyTorch loss curves (when installed), finite
differences in float64, losses against NumPy, masking, bad input."""

import numpy as np
import pytest

import rnnfast as rf

try:
    import torch
except ImportError:
    torch = None


def lm_data(n=160, T=10, V=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (n, T))
    y = (x * 7 + np.roll(x, 1, axis=1)) % V  # a learnable next-token rule
    return x, y


def lm_model(V=30, E=16, H=32, seed=0):
    return rf.Sequential([rf.Embedding(V, E, seed=seed), rf.LSTM(E, H, batch_first=True, seed=seed),
                          rf.Dense(H, V, seed=seed)])


class StepLosses:
    def __init__(self):
        self.losses = []

    def on_batch_end(self, model, batch, logs):
        self.losses.append(logs["loss"])


@pytest.mark.skipif(torch is None, reason="PyTorch not installed")
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_loss_curve_matches_torch(opt):
    V, E, H = 30, 16, 32
    x, y = lm_data(V=V)
    model = lm_model(V, E, H)
    sd = model.state_dict()
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, batch_first=True), \
        torch.nn.Linear(H, V)
    emb.load_state_dict({"weight": torch.tensor(sd["0.weight"])})
    lstm.load_state_dict({k[2:]: torch.tensor(v) for k, v in sd.items() if k.startswith("1.")})
    lin.load_state_dict({"weight": torch.tensor(sd["2.weight"]), "bias": torch.tensor(sd["2.bias"])})
    params = [*emb.parameters(), *lstm.parameters(), *lin.parameters()]
    if opt == "adam":
        model.compile("sparse_categorical_crossentropy", rf.optim.Adam(model, lr=0.01))
        topt = torch.optim.Adam(params, lr=0.01)
    else:
        model.compile("sparse_categorical_crossentropy",
                      rf.optim.SGD(model, lr=0.5, momentum=0.9))
        topt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    record = StepLosses()
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0, callbacks=[record])
    want = []
    for i in range(0, len(x), 8):
        xb, yb = torch.tensor(x[i:i + 8]), torch.tensor(y[i:i + 8])
        z = lin(lstm(emb(xb))[0])
        loss = torch.nn.functional.cross_entropy(z.reshape(-1, V), yb.reshape(-1))
        topt.zero_grad()
        loss.backward()
        topt.step()
        want.append(loss.item())
    assert len(record.losses) == 20
    np.testing.assert_allclose(record.losses, want, rtol=2e-6, atol=0)  # measured: ~1.5e-7
    assert want[-1] < want[0]  # the curve moves: the comparison is not of two flat lines
    final = model.state_dict()
    np.testing.assert_allclose(final["2.weight"], lin.weight.detach().numpy(), rtol=1e-3, atol=1e-4)


def test_gradients_match_finite_differences():
    # Embedding -> GRU -> LastStep -> Dense(tanh) -> Dense, float64, with lengths.
    rng = np.random.default_rng(1)
    kw = dict(dtype=np.float64)
    model = rf.Sequential([rf.Embedding(9, 4, seed=1, **kw),
                           rf.GRU(4, 5, batch_first=True, seed=2, **kw), rf.LastStep(),
                           rf.Dense(5, 6, activation="tanh", seed=3, **kw),
                           rf.Dense(6, 3, activation=None, seed=4, **kw)])
    model.compile("sparse_categorical_crossentropy", "sgd")
    x = rng.integers(0, 9, (4, 6))
    y = rng.integers(0, 3, 4)
    lengths = np.array([6, 3, 5, 1])

    def loss_value():
        z = model(x, lengths=lengths)
        return model.loss(z, y, want_grad=False)[0]

    z, out_len = model._run_forward(x, True, lengths)
    _, grad, _, _ = model.loss(z, y)
    model.zero_grad()
    d = grad
    for layer in reversed(model.layers):
        d = layer.backward(d)[0] if isinstance(layer, rf.GRU) else layer.backward(d)
    for li, layer in enumerate(model.layers):
        params = layer._param_views() if isinstance(layer, rf.GRU) else layer._params
        for name, p in params.items():
            g = layer.grads[name].copy()
            for pos in list(np.ndindex(p.shape))[:: max(1, p.size // 5)]:
                old = p[pos]
                p[pos] = old + 1e-6
                layer._params_changed()
                up = loss_value()
                p[pos] = old - 1e-6
                layer._params_changed()
                down = loss_value()
                p[pos] = old
                layer._params_changed()
                np.testing.assert_allclose(g[pos], (up - down) / 2e-6, rtol=1e-5, atol=1e-8,
                                           err_msg=f"layer {li} {name}{pos}")


@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "categorical_crossentropy",
                                  "binary_crossentropy", "mse"])
def test_losses_against_numpy(name):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 5, 4)) * 3
    lengths = np.array([5, 2, 4])
    valid = np.arange(5)[None, :] < lengths[:, None]
    if name == "sparse_categorical_crossentropy":
        y = rng.integers(0, 4, (3, 5))
        lse = np.log(np.exp(z).sum(-1))
        per = lse - np.take_along_axis(z, y[..., None], -1)[..., 0]
        want = per[valid].mean()
    elif name == "categorical_crossentropy":
        y = rng.dirichlet(np.ones(4), (3, 5))
        per = -(y * (z - np.log(np.exp(z).sum(-1, keepdims=True)))).sum(-1)
        want = per[valid].mean()
    elif name == "binary_crossentropy":
        y = rng.random((3, 5, 4))
        p = 1 / (1 + np.exp(-z))
        want = (-(y * np.log(p) + (1 - y) * np.log(1 - p)))[valid].mean()
    else:
        y = rng.standard_normal((3, 5, 4))
        want = ((z - y) ** 2)[valid].mean()
    loss = rf.losses.get_loss(name)
    got, grad, _, _ = loss(z, y, lengths)
    assert got == pytest.approx(want, rel=1e-12)
    # gradient by central differences on a few logits
    for pos in [(0, 0, 0), (1, 1, 3), (2, 3, 2), (1, 4, 1)]:
        zp, zm = z.copy(), z.copy()
        zp[pos] += 1e-6
        zm[pos] -= 1e-6
        num = (loss(zp, y, lengths, False)[0] - loss(zm, y, lengths, False)[0]) / 2e-6
        assert grad[pos] == pytest.approx(num, rel=1e-5, abs=1e-8)
    assert not grad[1, 2:].any()  # padded steps get no gradient


def test_mask_zero_matches_unpadded_sequences():
    rng = np.random.default_rng(3)
    kw = dict(dtype=np.float64)
    model = rf.Sequential([rf.Embedding(12, 4, mask_zero=True, seed=0, **kw),
                           rf.LSTM(4, 6, batch_first=True, seed=1, **kw), rf.LastStep(),
                           rf.Dense(6, 2, seed=2, **kw)])
    seqs = [rng.integers(1, 12, n) for n in (5, 2, 4)]
    padded = rf.data.pad_sequences(seqs, padding="post")
    z = model.predict(padded)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(z[i], model.predict(s[None, :])[0], rtol=1e-12)


def test_bad_input_to_fit_and_predict():
    x, y = lm_data(n=16)
    model = lm_model()
    with pytest.raises(ValueError, match="compile"):
        model.fit(x, y)
    model.compile("sparse_categorical_crossentropy", "adam")
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(x, y[:10], verbose=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 30\)"):
        model.fit(x, y + 30, verbose=0)
    with pytest.raises(ValueError, match="y must have shape"):
        model.fit(x, y[:, :5], verbose=0)
    with pytest.raises(ValueError, match="outside"):
        model.predict(x + 100)
    with pytest.raises(TypeError, match="integer"):
        model.predict(np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="pad_sequences"):
        model.predict([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match="batch_first"):
        rf.Sequential([rf.LSTM(3, 4)])
    seq = rf.Sequential([rf.LSTM(3, 4, batch_first=True)])
    with pytest.raises(ValueError, match=r"\(samples, steps, features\)"):
        seq.predict(np.zeros((5, 3)))  # not taken for one unbatched sequence
    with pytest.raises(ValueError, match="features"):
        rf.Sequential([rf.Dense(3, 2)]).predict(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="optimizer"):
        model.compile("mse", "adamax")
    with pytest.raises(ValueError, match="loss"):
        model.compile("hinge")
    reg = rf.Sequential([rf.Dense(3, 1)])
    reg.compile("mse", rf.optim.SGD(reg, lr=1e30))
    with pytest.warns(RuntimeWarning, match="diverged.*training stopped"):
        h = reg.fit(np.ones((8, 3)) * 1e10, np.ones((8, 1)), epochs=5, batch_size=4, verbose=0)
    assert len(h["loss"]) <= 2 and not np.isfinite(h["loss"][-1]) and reg.stop_training
    before = reg.state_dict()
    with pytest.raises(FloatingPointError, match="diverged"):
        reg.train_on_batch(np.full((2, 3), np.nan), np.ones((2, 1)))
    for k, v in reg.state_dict().items():  # the failed batch changed nothing
        np.testing.assert_array_equal(v, before[k])


def test_fit_learns_and_history_is_keras_like():
    x, _ = lm_data(n=256)
    y = np.roll(x, 1, axis=1)  # recall the previous token
    y[:, 0] = 0
    model = lm_model()
    model.compile("sparse_categorical_crossentropy", rf.optim.Adam(model, lr=0.02),
                  metrics=["accuracy", "perplexity"], clip_norm=5.0)
    h = model.fit(x, y, epochs=8, batch_size=32, validation_split=0.25, verbose=0)
    assert set(h) == {"loss", "accuracy", "perplexity", "val_loss", "val_accuracy",
                      "val_perplexity"}
    assert all(len(v) == 8 for v in h.values())
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    ev = model.evaluate(x[192:], y[192:])
    assert ev["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-9)
    assert ev["perplexity"] == pytest.approx(np.exp(ev["loss"]), rel=1e-9)
    text = model.summary(print_fn=None)  # shapes from the data fit saw
    assert "(None, 10, 30)" in text and "Total params" in text


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_stateful_chunks_equal_whole_sequence(mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 24, 4))
    whole = getattr(rf, mode)(4, 6, num_layers=2, batch_first=True, dtype=np.float64, seed=0)
    chunked = getattr(rf, mode)(4, 6, num_layers=2, batch_first=True, dtype=np.float64, seed=0,
                                stateful=True)
    want, _ = whole(x)
    got = np.concatenate([chunked(x[:, i:i + 8])[0] for i in range(0, 24, 8)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    chunked.reset_states()
    np.testing.assert_allclose(chunked(x[:, :8])[0], want[:, :8], rtol=1e-12)
    with pytest.raises(ValueError, match="reset_states"):
        chunked(x[:2, 8:16])


def test_truncated_bptt_training_with_stream_batches():
    text = "the quick brown fox jumps over the lazy dog " * 40
    tok = rf.data.CharTokenizer().fit(text)
    ids = tok.encode(text)
    V = tok.vocab_size
    model = rf.Sequential([rf.Embedding(V, 16, seed=0),
                           rf.LSTM(16, 64, batch_first=True, stateful=True, seed=0),
                           rf.Dense(64, V, seed=0)])
    model.compile("sparse_categorical_crossentropy", rf.optim.Adam(model, lr=0.01),
                  metrics=["perplexity"])
    first = last = None
    for epoch in range(6):
        model.reset_states()
        for xb, yb in rf.data.stream_batches(ids, batch_size=8, seq_len=20):
            loss, _, _ = model.train_on_batch(xb, yb)
            first = loss if first is None else first
            last = loss
    assert last < 0.3 * first


def test_mask_zero_pre_and_post_padding():
    rng = np.random.default_rng(4)
    kw = dict(dtype=np.float64)
    model = rf.Sequential([rf.Embedding(12, 4, mask_zero=True, seed=0, **kw),
                           rf.GRU(4, 6, batch_first=True, bidirectional=True, seed=1, **kw),
                           rf.LastStep(), rf.Dense(12, 2, seed=2, **kw)])
    seqs = [rng.integers(1, 12, n) for n in (5, 2, 4)]
    alone = [model.predict(s[None, :])[0] for s in seqs]
    for padding in ("pre", "post"):
        z = model.predict(rf.data.pad_sequences(seqs, padding=padding))
        for i in range(3):
            np.testing.assert_allclose(z[i], alone[i], rtol=1e-12, err_msg=padding)
    emb = rf.Embedding(5, 2, mask_zero=True)
    with pytest.raises(ValueError, match="between tokens"):
        emb.forward(np.array([[1, 0, 2]]))
    with pytest.raises(ValueError, match="no token"):
        emb.forward(np.array([[1, 2], [0, 0]]))
    _, steps = emb.forward(rf.data.pad_sequences([[1, 2], [3]], padding="post"))
    np.testing.assert_array_equal(steps, [2, 1])
    _, (starts, lengths) = emb.forward(rf.data.pad_sequences([[1, 2], [3]]))
    np.testing.assert_array_equal(starts, [0, 1])
    np.testing.assert_array_equal(lengths, [2, 1])


def test_sequence_targets_padded_in_front():
    # seq-to-seq with pre-padding: the loss counts each sequence's own steps only
    rng = np.random.default_rng(6)
    kw = dict(dtype=np.float64)
    model = rf.Sequential([rf.Embedding(9, 3, mask_zero=True, seed=0, **kw),
                           rf.LSTM(3, 5, batch_first=True, seed=1, **kw), rf.Dense(5, 4, seed=2, **kw)])
    model.compile("sparse_categorical_crossentropy", "sgd", metrics=["accuracy"])
    seqs = [rng.integers(1, 9, n) for n in (6, 3)]
    labels = [rng.integers(0, 4, len(s)) for s in seqs]
    x = rf.data.pad_sequences(seqs)
    y = rf.data.pad_sequences(labels)
    got = model.evaluate(x, y)
    total = rows = 0.0
    for s, lab in zip(seqs, labels):
        one = model.evaluate(s[None, :], lab[None, :])
        total += one["loss"] * len(s)
        rows += len(s)
    assert got["loss"] == pytest.approx(total / rows, rel=1e-12)


def test_set_seed_makes_training_reproducible():
    x, y = lm_data(n=64)

    def run():
        model = rf.Sequential([rf.Embedding(30, 8), rf.LSTM(8, 16, batch_first=True),
                               rf.Dropout(0.2), rf.Dense(16, 30)])
        model.compile("sparse_categorical_crossentropy", "adam")
        return model.fit(x, y, epochs=2, batch_size=16, verbose=0)["loss"]

    rf.set_seed(7)
    a = run()
    rf.set_seed(7)
    b = run()
    rf.set_seed(None)
    c = run()
    assert a == b and a != c


def test_progress_output(capsys):
    m = rf.Sequential([rf.Dense(3, 1)])
    m.compile("mse", "sgd", metrics=[])
    x, y = np.ones((40, 3)), np.ones((40, 1))
    m.fit(x, y, epochs=2, batch_size=10, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=10, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2 - loss: ")
    assert lines[0].endswith("samples/s")
    m.fit(x, y, epochs=1, batch_size=10, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "40/40" in out and out.rstrip(" \n").endswith("samples/s")


def test_last_step_after_a_bidirectional_layer():
    # The reverse half comes from the first valid step (the reverse direction's final state),
    # so LastStep's output equals the layer's final states h_n (forward | reverse).
    rng = np.random.default_rng(8)
    gru = rf.GRU(3, 4, batch_first=True, bidirectional=True, dtype=np.float64, seed=0)
    model = rf.Sequential([gru, rf.LastStep()])
    assert model.layers[1].bidirectional
    x = rng.standard_normal((3, 6, 3))
    lengths, starts = np.array([6, 2, 4]), np.array([0, 3, 1])
    z = model.predict(x, lengths=lengths)
    _, hn = gru(x, lengths=lengths)
    np.testing.assert_allclose(z, np.concatenate([hn[0], hn[1]], axis=1), rtol=1e-12)
    last = rf.LastStep(bidirectional=True)
    y, _ = gru(x, lengths=lengths, starts=starts)
    _, hn = gru(x, lengths=lengths, starts=starts)
    out, _ = last.forward(y, training=True, lengths=(starts, lengths))
    np.testing.assert_allclose(out, np.concatenate([hn[0], hn[1]], axis=1), rtol=1e-12)
    # backward is the transpose of the gather
    dy = rng.standard_normal(out.shape)
    dx = last.backward(dy)
    assert np.sum(dx * y) == pytest.approx(np.sum(dy * out), rel=1e-12)
    assert not rf.Sequential([rf.GRU(3, 4, batch_first=True), rf.LastStep()]).layers[1].bidirectional


def test_losses_stay_finite_for_extreme_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], np.float32)
    cases = {"sparse_categorical_crossentropy": (np.array([1, 2]), 1e4),
             "categorical_crossentropy": (np.eye(3, dtype=np.float32)[[1, 2]], 1e4),
             "binary_crossentropy": (np.ones((2, 3), np.float32), (3e4 + np.log(2)) / 6)}
    for name, (y, want) in cases.items():
        loss, grad, _, _ = rf.losses.get_loss(name)(z, y)
        assert loss == pytest.approx(want, rel=1e-6), name
        assert np.isfinite(grad).all() and np.abs(grad).max() <= 1.0, name


def test_dropout_layer():
    drop = rf.Dropout(0.3, seed=0)
    x = np.random.default_rng(0).standard_normal((200, 50)).astype(np.float32) + 5.0
    np.testing.assert_array_equal(drop.forward(x)[0], x)  # inference: the identity
    y, _ = drop.forward(x, training=True)
    scale = y / x
    kept = scale != 0
    np.testing.assert_allclose(scale[kept], 1 / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.02
    dy = np.ones_like(x)
    np.testing.assert_allclose(drop.backward(dy), scale, rtol=1e-6)
    y2, _ = drop.forward(x, training=True)
    assert not np.array_equal(y, y2)  # a new mask each call
