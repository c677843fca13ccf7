"""End-to-end char-LM training (bench-configs.md): embedding 64 -> LSTM 256 x 2 -> linear ->
softmax cross-entropy -> Adam, gradient clipping at norm 5, batches of 32 x 100 characters.

Prints tokens per second of ``Sequential.fit`` against the same model in PyTorch (when
installed), and how much of a ``fit`` epoch runs in Python: cProfile's time outside the C++
calls (``rnnfast._core`` functions and engine methods, which release the GIL) over the
epoch's wall time.

    python bench/fit_profile.py [--batches 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

import rnnfast as rf

V, E, H, L, B, T = 96, 64, 256, 2, 32, 100


def data(batches, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (batches * B, T))
    return x, np.roll(x, -1, axis=1)


def rnnfast_model():
    m = rf.Sequential([rf.Embedding(V, E, seed=0), rf.LSTM(E, H, num_layers=L, batch_first=True,
                                                            seed=0), rf.Dense(H, V, seed=0)])
    m.compile("sparse_categorical_crossentropy", rf.optim.Adam(m, lr=1e-3), clip_norm=5.0)
    return m


def time_rnnfast(x, y, repeats):
    m = rnnfast_model()
    m.fit(x[:B], y[:B], epochs=1, batch_size=B, shuffle=False, verbose=0)  # warm-up
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m.fit(x, y, epochs=1, batch_size=B, shuffle=False, verbose=0)
        best.append(time.perf_counter() - t0)
    return float(np.median(best)), m


def time_torch(x, y, repeats):
    import torch
    torch.manual_seed(0)
    emb, lstm, lin = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, L, batch_first=True), \
        torch.nn.Linear(H, V)
    params = [*emb.parameters(), *lstm.parameters(), *lin.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def epoch(n):
        for i in range(0, n, B):
            z = lin(lstm(emb(xt[i:i + B]))[0])
            loss = torch.nn.functional.cross_entropy(z.reshape(-1, V), yt[i:i + B].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()

    epoch(B)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        epoch(len(x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def python_share(model, x, y):
    """Fraction of a fit epoch's wall time spent outside C++ calls, by cProfile."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    model.fit(x, y, epochs=1, batch_size=B, shuffle=False, verbose=0)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    in_cpp = 0.0
    top = []
    for (filename, _, name), (_, _, tottime, _, _) in stats.items():
        native = filename == "~" and ("rnnfast._core" in name or "Engine" in name
                                      or "_core." in name or "EngineF" in name)
        if native:
            in_cpp += tottime
        else:
            top.append((tottime, f"{filename.split('/')[-1]}:{name}"))
    top.sort(reverse=True)
    return (wall - in_cpp) / wall, wall, in_cpp, top[:8]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (median)")
    args = parser.parse_args()
    x, y = data(args.batches)
    tokens = x.size
    t_rf, model = time_rnnfast(x, y, args.repeats)
    print(f"char-LM fit, {args.batches} batches of {B} x {T} (V={V}, E={E}, LSTM {H} x {L}, "
          f"Adam, clip 5), {rf.get_num_threads()} threads")
    print(f"rnnfast: {t_rf * 1e3 / args.batches:.1f} ms/batch, {tokens / t_rf:,.0f} tokens/s")
    try:
        t_torch = time_torch(x, y, args.repeats)
        print(f"torch:   {t_torch * 1e3 / args.batches:.1f} ms/batch, {tokens / t_torch:,.0f} "
              f"tokens/s  (rnnfast {t_torch / t_rf:.2f}x)")
    except ImportError:
        print("torch:   not installed")
    share, wall, in_cpp, top = python_share(model, x, y)
    print(f"Python share of a fit epoch: {100 * share:.1f}% ({wall - in_cpp:.3f} s of "
          f"{wall:.3f} s outside C++ calls, under cProfile)")
    print("largest Python-side entries (own time, s): " +
          "; ".join(f"{name} {t:.3f}" for t, name in top))


if __name__ == "__main__":
    main()
