"""rf.data helpers: Keras' padding/truncation rules, one-hot, tokenizers, windows, splits and
truncated-BPTT batches."""

import numpy as np
import pytest

from rnnfast import data


def test_pad_sequences_pre_and_post():
    seqs = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    np.testing.assert_array_equal(data.pad_sequences(seqs, maxlen=4), [
        [0, 1, 2, 3], [0, 0, 0, 4], [6, 7, 8, 9]])  # pre padding, pre truncation (Keras)
    np.testing.assert_array_equal(
        data.pad_sequences(seqs, maxlen=4, padding="post", truncating="post", value=-1),
        [[1, 2, 3, -1], [4, -1, -1, -1], [5, 6, 7, 8]])
    assert data.pad_sequences(seqs).shape == (3, 5)
    feats = data.pad_sequences([np.ones((2, 3)), np.ones((1, 3))], dtype="float32")
    assert feats.shape == (2, 2, 3) and feats[1, 0].sum() == 0
    with pytest.raises(ValueError, match="padding"):
        data.pad_sequences(seqs, padding="middle")
    with pytest.raises(ValueError, match="steps of shape"):
        data.pad_sequences([np.ones((2, 3)), np.ones((1, 4))])


def test_to_categorical():
    out = data.to_categorical([[0, 2], [1, 1]], num_classes=3)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out.argmax(-1), [[0, 2], [1, 1]])
    assert out.sum() == 4
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        data.to_categorical([0, 2], num_classes=2)
    with pytest.raises(TypeError):
        data.to_categorical([0.5])


def test_tokenizers_round_trip_and_save():
    text = "hello world, hello rnn"
    ct = data.CharTokenizer().fit(text)
    ids = ct.encode("hello")
    assert ct.decode(ids) == "hello" and ids.min() >= 1
    assert ct.vocab_size == len(set(text)) + 1
    assert ct.vocab[0] == "l"  # most frequent first
    wt = data.WordTokenizer(oov_token="<unk>").fit([text, "Hello again!"])
    assert wt.decode(wt.encode("hello world")) == "hello world"
    assert wt.decode(wt.encode("unseen hello")) == "<unk> hello"
    for tok in (ct, wt):
        back = data._Tokenizer.from_json(tok.to_json())
        assert type(back) is type(tok) and back.vocab == tok.vocab
        np.testing.assert_array_equal(back.encode("hello"), tok.encode("hello"))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        data.CharTokenizer().fit("abc").encode("abd")
    with pytest.raises(ValueError, match="fit"):
        data.CharTokenizer().encode("a")


def test_sliding_windows_and_split():
    s = np.arange(10.0)
    x, y = data.sliding_windows(s, window=3, horizon=2)
    np.testing.assert_array_equal(x[0], [0, 1, 2])
    assert y[0] == 4 and len(x) == len(y) == 6 and y[-1] == 9
    xtr, xva, ytr, yva = data.train_val_split(x, y, val_fraction=0.5, seed=0)
    assert len(xtr) == len(xva) == 3
    np.testing.assert_array_equal(xtr[:, -1] + 2, ytr)  # pairs stay together
    with pytest.raises(ValueError, match="too short"):
        data.sliding_windows(s, window=10)


def test_stream_batches_continue_each_lane():
    tokens = np.arange(101)
    batches = list(data.stream_batches(tokens, batch_size=4, seq_len=5))
    assert len(batches) == 5
    for (x0, y0), (x1, _) in zip(batches, batches[1:]):
        np.testing.assert_array_equal(y0, x0 + 1)  # targets are the next token
        np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)  # lane b continues
