"""Data helpers with Keras' names and conventions: padding, one-hot encoding, character and
word tokenizers, sliding windows over time series, train/validation splits and batches of a
long token stream for truncated BPTT."""

from __future__ import annotations

import json
import numbers
from collections import Counter

import numpy as np

__all__ = ["pad_sequences", "to_categorical", "CharTokenizer", "WordTokenizer",
           "sliding_windows", "train_val_split", "stream_batches"]


def _int(value, name, low=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre",
                  value=0):
    """List of sequences -> (N, maxlen) array. padding/truncating "pre" (Keras' default) or
    "post"; maxlen defaults to the longest sequence."""
    if padding not in ("pre", "post") or truncating not in ("pre", "post"):
        raise ValueError(f"padding and truncating must be 'pre' or 'post', got {padding!r} and "
                         f"{truncating!r}")
    seqs = [np.asarray(s) for s in sequences]
    if maxlen is None:
        maxlen = max((len(s) for s in seqs), default=0)
    maxlen = _int(maxlen, "maxlen")
    feat = next((s.shape[1:] for s in seqs if len(s)), ())
    out = np.full((len(seqs), maxlen) + feat, value, dtype=dtype)
    for i, s in enumerate(seqs):
        if s.ndim == 0:
            raise ValueError(f"sequences[{i}] is a scalar, not a sequence")
        if len(s) and s.shape[1:] != feat:
            raise ValueError(f"sequences[{i}] has steps of shape {s.shape[1:]}, the others {feat}")
        s = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        if maxlen == 0 or not len(s):
            continue
        if padding == "post":
            out[i, :len(s)] = s
        else:
            out[i, maxlen - len(s):] = s
    return out


def to_categorical(y, num_classes=None, dtype="float32"):
    """Integer class labels (any shape) -> one-hot on a new last axis."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {y.min()}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    num_classes = _int(num_classes, "num_classes", 1)
    if y.size and y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got max {y.max()}")
    out = np.zeros(y.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, y[..., None], 1, axis=-1)
    return out


class _Tokenizer:
    """Maps tokens to ids 1..V (0 is padding; ``oov`` tokens map to ``oov_id`` when set)."""

    kind = ""

    def __init__(self, vocab=None, oov_token=None):
        self.oov_token = oov_token
        self.vocab: list[str] = []
        self.index: dict[str, int] = {}
        if vocab is not None:
            self._set_vocab(vocab)

    def _set_vocab(self, tokens):
        self.vocab = list(tokens)
        if self.oov_token is not None and self.oov_token not in self.vocab:
            self.vocab.insert(0, self.oov_token)
        self.index = {t: i + 1 for i, t in enumerate(self.vocab)}

    @property
    def vocab_size(self):
        """Ids in use plus the padding id 0: the num_embeddings an Embedding needs."""
        return len(self.vocab) + 1

    def _tokens(self, text):
        raise NotImplementedError

    def _join(self, tokens):
        raise NotImplementedError

    def fit(self, texts, max_tokens=None):
        """Builds the vocabulary from a text or a list of texts, most frequent first (ties by
        first appearance); max_tokens keeps that many."""
        if isinstance(texts, str):
            texts = [texts]
        counts = Counter()
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be strings, got {type(t).__name__}")
            counts.update(self._tokens(t))
        order = [tok for tok, _ in counts.most_common(max_tokens)]
        self._set_vocab(order)
        return self

    def encode(self, text):
        if not self.index:
            raise ValueError("the tokenizer has no vocabulary: call fit(texts) first")
        oov = self.index.get(self.oov_token)
        ids = []
        for tok in self._tokens(text):
            i = self.index.get(tok, oov)
            if i is None:
                raise ValueError(f"token {tok!r} is not in the vocabulary (set oov_token to map "
                                 f"unknown tokens)")
            ids.append(i)
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids):
        toks = []
        for i in np.asarray(ids).reshape(-1):
            if i == 0:
                continue
            if not 1 <= i <= len(self.vocab):
                raise ValueError(f"id {i} is outside the vocabulary [1, {len(self.vocab)}]")
            toks.append(self.vocab[i - 1])
        return self._join(toks)

    def to_json(self):
        return json.dumps({"kind": self.kind, "vocab": self.vocab, "oov_token": self.oov_token,
                           **self._extra()})

    def _extra(self):
        return {}

    @staticmethod
    def from_json(text):
        d = json.loads(text)
        cls = {"char": CharTokenizer, "word": WordTokenizer}.get(d.get("kind"))
        if cls is None:
            raise ValueError(f"not a saved rnnfast tokenizer: kind {d.get('kind')!r}")
        return cls._from_dict(d)


class CharTokenizer(_Tokenizer):
    """One id per character."""

    kind = "char"

    def _tokens(self, text):
        return list(text)

    def _join(self, tokens):
        return "".join(tokens)

    @classmethod
    def _from_dict(cls, d):
        tok = cls(oov_token=d.get("oov_token"))
        tok._set_vocab(d["vocab"])
        return tok


class WordTokenizer(_Tokenizer):
    """Words split on whitespace after optional lower-casing and punctuation removal."""

    kind = "word"

    def __init__(self, vocab=None, oov_token=None, lower=True,
                 filters='!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'):
        self.lower, self.filters = bool(lower), filters
        self._table = str.maketrans({c: " " for c in filters})
        super().__init__(vocab, oov_token)

    def _tokens(self, text):
        if self.lower:
            text = text.lower()
        return text.translate(self._table).split()

    def _join(self, tokens):
        return " ".join(tokens)

    def _extra(self):
        return {"lower": self.lower, "filters": self.filters}

    @classmethod
    def _from_dict(cls, d):
        tok = cls(oov_token=d.get("oov_token"), lower=d.get("lower", True),
                  filters=d.get("filters", ""))
        tok._set_vocab(d["vocab"])
        return tok


def sliding_windows(series, window, horizon=1, stride=1):
    """Time series (T, ...) -> (x, y): x[i] = series[i*stride : i*stride + window],
    y[i] = series[i*stride + window + horizon - 1] (the value `horizon` steps ahead)."""
    s = np.asarray(series)
    if s.ndim == 0:
        raise ValueError("series must have a time axis")
    window, horizon, stride = _int(window, "window", 1), _int(horizon, "horizon", 1), \
        _int(stride, "stride", 1)
    n = (len(s) - window - horizon) // stride + 1
    if n < 1:
        raise ValueError(f"a series of {len(s)} steps is too short for window {window} and "
                         f"horizon {horizon}")
    starts = np.arange(n) * stride
    x = s[starts[:, None] + np.arange(window)]
    y = s[starts + window + horizon - 1]
    return x, y


def train_val_split(*arrays, val_fraction=0.2, shuffle=True, seed=None):
    """Splits arrays with samples along the first axis: -> (a_train, a_val, b_train, b_val...)."""
    if not arrays:
        raise ValueError("give at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"arrays must hold the same number of samples, got "
                         f"{[len(a) for a in arrays]}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if n_val in (0, n):
        raise ValueError(f"val_fraction {val_fraction} of {n} samples leaves one side empty")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    tr, va = order[:n - n_val], order[n - n_val:]
    out = []
    for a in arrays:
        a = np.asarray(a)
        out += [a[tr], a[va]]
    return tuple(out)


def stream_batches(tokens, batch_size, seq_len):
    """Truncated-BPTT batches of one long token stream: the stream is cut into batch_size
    contiguous lanes, and batch k holds steps [k*seq_len, (k+1)*seq_len) of every lane, so
    lane b of batch k+1 continues lane b of batch k (carry the state across). Yields (x, y)
    with y the next token: both (batch_size, seq_len)."""
    t = np.asarray(tokens)
    batch_size, seq_len = _int(batch_size, "batch_size", 1), _int(seq_len, "seq_len", 1)
    lane = (len(t) - 1) // batch_size
    if lane < seq_len:
        raise ValueError(f"{len(t)} tokens are too few for {batch_size} lanes of {seq_len} steps")
    xs = t[:lane * batch_size].reshape(batch_size, lane)
    ys = t[1:lane * batch_size + 1].reshape(batch_size, lane)
    for k in range(lane // seq_len):
        sl = slice(k * seq_len, (k + 1) * seq_len)
        yield xs[:, sl], ys[:, sl]

