"""Small batches (B = 1 to 6) against PyTorch: inference and a training step per call.

    python bench/small_batch.py                          # the table in bench/RESULTS.md
    python bench/small_batch.py --cells lstm --batches 1,2 --shapes 64/256

Prints a markdown table of medians (ms) and PyTorch's time over rnnfast's. Both run on
--threads threads with the same weights (a PyTorch state_dict loaded into rnnfast).
"""
import argparse
import sys
import time

import numpy as np

import rnnfast as rf


CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def with_torch(threads):
    """PyTorch (or exit with a hint), both libraries set to `threads` threads."""
    try:
        import torch
    except ImportError:
        sys.exit("needs PyTorch: pip install torch")
    torch.set_num_threads(threads)
    rf.set_num_threads(threads)
    return torch


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru", help="comma-separated: rnn, lstm, gru")
    ap.add_argument("--shapes", default="64/256,256/512", help="comma-separated I/H")
    ap.add_argument("--batches", default="1,2,4,6", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=100, help="T")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    torch = with_torch(args.threads)
    rng = np.random.default_rng(0)
    print(f"T {args.steps}, {args.threads} threads, ms (medians of {args.repeats}); "
          "x = torch / rnnfast\n")
    print("| cell | I/H | B | infer rf | torch | x | train rf | torch | x |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in args.cells.split(","):
        name = CELLS[cell]
        for shape in args.shapes.split(","):
            I, H = map(int, shape.split("/"))
            for B in map(int, args.batches.split(",")):
                peer = getattr(torch.nn, name)(I, H)
                m = getattr(rf, name)(I, H)
                m.load_state_dict({k: v.detach().numpy() for k, v in peer.state_dict().items()})
                x = rng.standard_normal((args.steps, B, I)).astype(np.float32)
                xt = torch.from_numpy(x)
                dy = np.ones((args.steps, B, H), np.float32)

                def rf_train():
                    m.forward(x, training=True)
                    m.backward(dy)

                def torch_train():
                    peer.zero_grad()
                    out, _ = peer(xt)
                    out.sum().backward()

                with torch.no_grad():
                    ti = median_ms(lambda: m(x), args.repeats)
                    pi = median_ms(lambda: peer(xt), args.repeats)
                tt = median_ms(rf_train, args.repeats)
                pt = median_ms(torch_train, args.repeats)
                print(f"| {name} | {I}/{H} | {B} | {ti:.3g} | {pi:.3g} | {pi / ti:.2f} | "
                      f"{tt:.3g} | {pt:.3g} | {pt / tt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
