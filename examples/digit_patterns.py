"""Sequence classification: does the pattern 3-1-4 occur in a variable-length digit sequence?

Digits are 1..9 (0 pads); sequences are padded at the end and Embedding(mask_zero=True) gives
the recurrent layer each sequence's length.

    python examples/digit_patterns.py
"""

import numpy as np

import rnnfast as rf

PATTERN = (3, 1, 4)


def make_data(n, rng, min_len=6, max_len=20):
    seqs, labels = [], []
    for i in range(n):
        s = list(rng.integers(1, 10, rng.integers(min_len, max_len + 1)))
        if i % 2:  # half carry the pattern somewhere
            at = rng.integers(0, len(s) - len(PATTERN) + 1)
            s[at:at + len(PATTERN)] = PATTERN
        has = any(tuple(s[k:k + 3]) == PATTERN for k in range(len(s) - 2))
        seqs.append(s)
        labels.append(int(has))
    return rf.data.pad_sequences(seqs, padding="post"), np.array(labels)


def main(n=4000, epochs=12, hidden=48, seed=0, verbose=1):
    rng = np.random.default_rng(seed)
    x, y = make_data(n, rng)
    x_tr, x_va, y_tr, y_va = rf.data.train_val_split(x, y, val_fraction=0.2, seed=seed)
    model = rf.Sequential([rf.Embedding(10, 16, mask_zero=True, seed=seed),
                           rf.GRU(16, hidden, batch_first=True, seed=seed), rf.LastStep(),
                           rf.Dense(hidden, 2, seed=seed)], seed=seed)
    model.compile("sparse_categorical_crossentropy", rf.optim.Adam(model, lr=0.01),
                  metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=32, validation_data=(x_va, y_va),
              verbose=verbose)
    acc = model.evaluate(x_va, y_va)["accuracy"]
    if verbose:
        print(f"validation accuracy {100 * acc:.1f}%")
    return acc


if __name__ == "__main__":
    main()
