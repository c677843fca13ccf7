"""Saving and loading whole models: round trip, exact resumption, tokenizer, atomic writes,
clear errors for other versions and corrupt files."""

import json
import os

import numpy as np
import pytest

import rnnfast as rf
from rnnfast import saving


def make(seed=0):
    m = rf.Sequential([rf.Embedding(20, 8, seed=seed), rf.GRU(8, 12, batch_first=True, seed=seed),
                       rf.LastStep(), rf.Dropout(0.0), rf.Dense(12, 3, activation=None, seed=seed)],
                      seed=seed)
    m.compile("sparse_categorical_crossentropy", rf.optim.Adam(m, lr=0.01, amsgrad=True),
              metrics=["accuracy", "top2_accuracy"], clip_norm=1.0)
    return m


def data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (64, 7))
    return x, x.sum(axis=1) % 3


def test_round_trip_and_exact_resume(tmp_path):
    x, y = data()
    straight = make()
    h_straight = straight.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    first = make()
    first.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    tok = rf.data.CharTokenizer().fit("abc")
    path = tmp_path / "model.rnnfast"
    first.save(path, tokenizer=tok)
    back = rf.load(path)
    assert [type(a) for a in back.layers] == [type(a) for a in first.layers]
    np.testing.assert_array_equal(back.predict(x), first.predict(x))
    assert back.tokenizer.vocab == tok.vocab
    assert back.loss.name == first.loss.name and back.clip_norm == 1.0
    assert [m.name for m in back.metrics] == ["accuracy", "top2_accuracy"]
    h_resumed = back.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert h_resumed["loss"][0] == h_straight["loss"][1]
    for k, v in straight.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)


def test_uncompiled_model_and_keys(tmp_path):
    m = rf.Sequential([rf.LSTM(3, 4, batch_first=True, num_layers=2, bidirectional=True),
                       rf.Dense(8, 2, activation="sigmoid", bias=False)])
    m.save(tmp_path / "m")
    back = rf.load(tmp_path / "m")
    assert back.loss is None and back.tokenizer is None
    assert set(back.state_dict()) == set(m.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))


def test_nothing_written_half_way(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    make().save(path)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(saving.np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        make(seed=1).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_other_versions_and_corrupt_files(tmp_path):
    path = tmp_path / "m.npz"
    make().save(path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["__rnnfast__"]).decode())
    meta["format_version"] = 99
    meta["rnnfast_version"] = "9.0"
    arrays["__rnnfast__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(tmp_path / "new.npz", "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="version 99"):
        rf.load(tmp_path / "new.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable rnnfast model"):
        rf.load(tmp_path / "junk.npz")
    with open(tmp_path / "pickled.npz", "wb") as f:  # an object array would need pickle
        np.savez(f, __rnnfast__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a readable rnnfast model"):
        rf.load(tmp_path / "pickled.npz")
    with open(tmp_path / "plain.npz", "wb") as f:
        np.savez(f, a=np.zeros(3))
    with pytest.raises(ValueError, match="no rnnfast metadata"):
        rf.load(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        rf.load(tmp_path / "missing.npz")
