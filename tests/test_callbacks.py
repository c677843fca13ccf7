"""Callbacks: early stopping with best weights restored, checkpoints, learning-rate reduction on
plateaus, CSV logs, lambda callbacks."""

import csv

import numpy as np
import pytest

import rnnfast as rf
from rnnfast import callbacks as cbs


def small_model():
    m = rf.Sequential([rf.Dense(3, 4, activation="tanh", seed=0), rf.Dense(4, 1, seed=1)])
    m.compile("mse", rf.optim.SGD(m, lr=0.1))
    return m


def test_early_stopping_restores_best_weights():
    m = small_model()
    es = cbs.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    es.on_train_begin(m)
    snapshots = []
    for epoch, val in enumerate([3.0, 2.0, 2.5, 2.6, 1.0]):
        for layer in m.layers:  # the weights change every epoch
            layer._params["weight"] += 1.0
        snapshots.append(m.state_dict())
        es.on_epoch_end(m, epoch, {"val_loss": val})
        if m.stop_training:
            break
    assert es.stopped_epoch == 3
    for k, v in snapshots[1].items():  # epoch 1 had the best val_loss
        np.testing.assert_array_equal(m.state_dict()[k], v)
    with pytest.raises(KeyError, match="val_accuracy"):
        cbs.EarlyStopping(monitor="val_accuracy").on_epoch_end(m, 0, {"loss": 1.0})


def test_fit_with_callbacks(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = x[:, :1] * 0.5 - x[:, 1:2]
    m = small_model()
    seen = []
    log = tmp_path / "log.csv"
    h = m.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0, callbacks=[
        cbs.ModelCheckpoint(tmp_path / "ckpt-{epoch}.npz"),
        cbs.ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=True),
        cbs.CSVLogger(log),
        cbs.LambdaCallback(on_epoch_end=lambda e, logs: seen.append((e, logs["loss"]))),
    ])
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert [loss for _, loss in seen] == h["loss"]
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.npz")) == [f"ckpt-{i}.npz" for i in
                                                                   range(1, 5)]
    best = int(np.argmin(h["val_loss"])) + 1
    np.testing.assert_array_equal(rf.load(tmp_path / "best.npz").predict(x),
                                  rf.load(tmp_path / f"ckpt-{best}.npz").predict(x))
    with open(log, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "val_loss"] and len(rows) == 5
    assert float(rows[2][1]) == pytest.approx(h["loss"][1])


def test_reduce_lr_on_plateau():
    m = small_model()
    r = cbs.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    lrs = []
    for epoch, loss in enumerate([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]):
        logs = {"loss": loss}
        r.on_epoch_end(m, epoch, logs)
        lrs.append(m.optimizer.lr)
        assert logs["lr"] == m.optimizer.lr
    # Keras' rule: count epochs without improvement outside cooldown, reduce at `patience`
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02])
    with pytest.raises(ValueError, match="factor"):
        cbs.ReduceLROnPlateau(factor=1.5)


def test_learning_rate_scheduler():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((32, 3)), rng.standard_normal((32, 1))
    m = small_model()
    seen = []
    spy = cbs.LambdaCallback(on_batch_end=lambda b, logs: seen.append(m.optimizer.lr))
    h = m.fit(x, y, epochs=3, batch_size=32, verbose=0,
              callbacks=[cbs.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch), spy])
    np.testing.assert_allclose(seen, [0.1, 0.05, 0.025])  # the rate each epoch trained with
    assert h["lr"] == [0.05, 0.025, 0.0125]  # logged after each epoch: the next epoch's rate
    m2 = small_model()
    sched = rf.optim.StepLR(m2.optimizer, step_size=2, gamma=0.1)
    seen.clear()
    spy2 = cbs.LambdaCallback(on_batch_end=lambda b, logs: seen.append(m2.optimizer.lr))
    m2.fit(x, y, epochs=4, batch_size=32, verbose=0,
           callbacks=[cbs.LearningRateScheduler(sched), spy2])
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.01, 0.01])
