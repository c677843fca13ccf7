"""A character-level language model trained with truncated BPTT, then sampled.

    python examples/char_lm.py [text_file]
"""

import sys

import numpy as np

import rnnfast as rf

TEXT = """\
The recurrent network reads one character at a time and keeps a state between them.
It learns which letters follow which, then which words follow which, and at last a little
of the rhythm of the sentences it is shown. Train it longer on a larger text and it writes
lines that look like the text at a glance, with words it made up and commas in odd places.
"""


def unigram_entropy(ids):
    counts = np.bincount(ids)
    p = counts[counts > 0] / len(ids)
    return float(-(p * np.log(p)).sum())  # nats per character


def sample(model, tok, start, n, rng, temperature=0.8):
    model.reset_states()
    ids = list(tok.encode(start))
    for i in ids[:-1]:
        model(np.array([[i]]))
    out = []
    cur = ids[-1]
    for _ in range(n):
        z = model(np.array([[cur]]))[0, -1] / temperature
        p = np.exp(z - z.max())
        cur = int(rng.choice(len(p), p=p / p.sum()))
        cur = cur if cur > 0 else 1
        out.append(cur)
    model.reset_states()
    return start + tok.decode(out)


def main(text=TEXT * 8, epochs=20, hidden=128, seq_len=32, batch_size=8, seed=0, verbose=1):
    tok = rf.data.CharTokenizer().fit(text)
    ids = tok.encode(text)
    V = tok.vocab_size
    model = rf.Sequential([rf.Embedding(V, 32, seed=seed),
                           rf.LSTM(32, hidden, batch_first=True, stateful=True, seed=seed),
                           rf.Dense(hidden, V, seed=seed)], seed=seed)
    model.compile("sparse_categorical_crossentropy", rf.optim.Adam(model, lr=0.005),
                  clip_norm=5.0)
    model.tokenizer = tok
    losses = []
    for epoch in range(epochs):
        model.reset_states()
        batch_losses = [model.train_on_batch(x, y)[0]
                        for x, y in rf.data.stream_batches(ids, batch_size, seq_len)]
        losses.append(float(np.mean(batch_losses)))
        if verbose:
            print(f"epoch {epoch + 1}/{epochs} loss {losses[-1]:.3f} nats/char")
    h0 = unigram_entropy(ids)
    if verbose:
        print(f"unigram entropy {h0:.3f} nats/char; final loss {losses[-1]:.3f}")
        batch1 = rf.Sequential([rf.Embedding(V, 32), rf.LSTM(32, hidden, batch_first=True,
                                                             stateful=True), rf.Dense(hidden, V)])
        batch1.load_state_dict(model.state_dict())  # the same weights, for batch-1 sampling
        print(sample(batch1, tok, "The ", 200, np.random.default_rng(seed)))
    return losses[-1], h0


if __name__ == "__main__":
    main(open(sys.argv[1]).read() if len(sys.argv) > 1 else TEXT * 8)
