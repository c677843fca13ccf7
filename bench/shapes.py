"""Shape scans: how time follows the batch size and the hidden size, read in one process.

    python bench/shapes.py                                # both scans, LSTM and GRU
    python bench/shapes.py --scan batch --cells gru --batches 4,5,6,7,8 --threads 2
    python bench/shapes.py --scan hidden --hidden 96,100,104,112,120,128 --mode train

Each shape's call alternates with a reference shape's (B = --ref-batch, or H = the first of
--hidden), call by call, and the median of the per-pair time ratios is printed: this host's
slow spells move both calls of a pair alike, where medians taken apart drift by 10-30%
(cpp/README.md, twenty-sixth session). Per row and per FLOP: the ratio over the shapes'
ratio of batch rows (batch scan) or of H^2 (hidden scan, I = H); 1.00 per FLOP means the
shape costs what the reference does per unit of work. With --torch, PyTorch's ratios on the
same shapes (its own pairs) for comparison. Row tiles, compact last panels and the like show
here (cpp/README.md, twenty-seventh session); the bench table's rows keep one shape each.
"""
import argparse
import time

import numpy as np

import rnnfast as rf


CELLS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def paired_ratio(run, run_ref, pairs):
    """Median of run's time over run_ref's, the two called alternately `pairs` times."""
    run(), run_ref()
    ratios = []
    for _ in range(pairs):
        t0 = time.perf_counter()
        run_ref()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return float(np.median(ratios))


def rf_call(cell, H, x, mode):
    m = getattr(rf, CELLS[cell])(x.shape[2], H)
    if mode == "infer":
        return lambda: m(x)
    dy = np.ones((x.shape[0], x.shape[1], H), np.float32)

    def step():
        m.zero_grad()
        m.forward(x, training=True)
        m.backward(dy)
    return step


def torch_call(torch, cell, H, x, mode):
    m = getattr(torch.nn, CELLS[cell])(x.shape[2], H)
    xt = torch.from_numpy(x)
    if mode == "infer":
        def infer():
            with torch.no_grad():
                m(xt)
        return infer

    def step():
        m.zero_grad()
        y, _ = m(xt)
        y.sum().backward()
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scan", default="batch,hidden", help="of batch, hidden")
    ap.add_argument("--cells", default="lstm,gru", help="of rnn, lstm, gru")
    ap.add_argument("--mode", default="infer", help="of infer, train")
    ap.add_argument("--batches", default=",".join(map(str, range(1, 21))))
    ap.add_argument("--ref-batch", type=int, default=4)
    ap.add_argument("--batch-hidden", type=int, default=256, help="I = H of the batch scan")
    ap.add_argument("--hidden", default="96,100,104,112,120,128",
                    help="H (= I) of the hidden scan, the first the reference")
    ap.add_argument("--hidden-batch", type=int, default=32, help="B of the hidden scan")
    ap.add_argument("--steps", type=int, default=100, help="T")
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--torch", action="store_true", help="PyTorch's ratios too")
    a = ap.parse_args(argv)
    for name, allowed in (("scan", ("batch", "hidden")), ("cells", CELLS),
                          ("mode", ("infer", "train"))):
        bad = set(getattr(a, name).split(",")) - set(allowed)
        if bad:
            ap.error(f"--{name}: {', '.join(sorted(bad))} not of {', '.join(allowed)}")
    rf.set_num_threads(a.threads)
    torch = None
    if a.torch:
        import torch
        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    head = "| cell | mode | scan | shape | rf time / ref | rf per row or FLOP |"
    rule = "| --- | --- | --- | --- | --- | --- |"
    if torch:
        head += " torch time / ref | torch per row or FLOP |"
        rule += " --- | --- |"
    print(f"threads {a.threads}, T {a.steps}; ratios against the reference shape in the same "
          f"process, medians of {a.pairs} pairs")
    print()
    print(head)
    print(rule)
    for cell in a.cells.split(","):
        for mode in a.mode.split(","):
            for scan in a.scan.split(","):
                if scan == "batch":
                    H = a.batch_hidden
                    shapes = [(b, H) for b in map(int, a.batches.split(","))]
                    ref = (a.ref_batch, H)
                    work = [b / a.ref_batch for b, _ in shapes]
                else:
                    hs = list(map(int, a.hidden.split(",")))
                    shapes = [(a.hidden_batch, h) for h in hs]
                    ref = shapes[0]
                    work = [(h / hs[0]) ** 2 for h in hs]
                xs = {s: rng.standard_normal((a.steps, s[0], s[1])).astype(np.float32)
                      for s in shapes + [ref]}
                peers = [("rf", lambda s: rf_call(cell, s[1], xs[s], mode))]
                if torch:
                    peers.append(("torch", lambda s: torch_call(torch, cell, s[1], xs[s], mode)))
                for (B, H), w in zip(shapes, work):
                    cells = []
                    for _, make in peers:
                        r = paired_ratio(make((B, H)), make(ref), a.pairs)
                        cells += [f"{r:.3f}", f"{r / w:.2f}"]
                    shape = f"B {B}" if scan == "batch" else f"H {H}"
                    print(f"| {CELLS[cell]} | {mode} | {scan} | {shape} | " + " | ".join(cells)
                          + " |")


if __name__ == "__main__":
    main()
