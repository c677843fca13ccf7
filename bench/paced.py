"""Batch-1 streams paced by their input: the time of a step after a pause, against PyTorch.

    python bench/paced.py                          # the table in bench/RESULTS.md
    python bench/paced.py --cells lstm --hidden 512 --pauses 0,10

A production stream steps when its input arrives and sleeps in between, and while it sleeps
its weights leave the caches. Prints the median microseconds of a step after each pause (0:
back to back) for rnnfast's step API, the same with its buffers on 4 KiB pages (huge pages
off, `_core._set_huge_pages(False)` before the model is made), and PyTorch's module called
with its state carried, all on --threads threads with the same weights.
"""
import argparse
import os
import sys
import time

import numpy as np

import rnnfast as rf
from rnnfast import _core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from small_batch import CELLS, with_torch  # noqa: E402


def median_us_after(steps, pause_s, n):
    """{name: median time of steps[name]() over n calls, each after sleeping pause_s}. After
    a pause the steps take turns, one call each and each first in turn, so each sees the
    same spells of the machine and follows the others as often. Back to back, each runs
    its n calls in a row (blocks taking turns would meet the stream's own probes of one
    thread against two at random points)."""
    times = {key: [] for key in steps}
    for key, step in steps.items() if not pause_s else ():
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    keys = list(steps)
    for i in range(n if pause_s else 0):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:  # each goes first in turn
            step = steps[key]
            time.sleep(pause_s)
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return {key: float(np.median(t)) * 1e6 for key, t in times.items()}


def rnnfast_step(name, H, state, x, threads, huge):
    previous = _core._set_huge_pages(huge)
    try:
        m = getattr(rf, name)(H, H)
        m.load_state_dict(state)
        stream = m.stream(batch_size=1, num_threads=threads)
    finally:
        _core._set_huge_pages(previous)
    return lambda: stream.step(x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru", help="comma-separated: rnn, lstm, gru")
    ap.add_argument("--hidden", default="256,512", help="comma-separated H (input size H too)")
    ap.add_argument("--pauses", default="0,1,10", help="comma-separated pauses, ms")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per pause (10x at 0)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch = with_torch(args.threads)
    pauses = [float(p) for p in args.pauses.split(",")]
    rng = np.random.default_rng(0)
    print(f"{args.threads} thread(s), us a step after each pause (medians of {args.steps}, "
          f"{10 * args.steps} back to back; after a pause the three take turns); "
          "x = torch / rnnfast\n")
    print("| cell | H | weights MiB | pause ms | rf | rf 4 KiB pages | torch | x |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in args.cells.split(","):
        name = CELLS[cell]
        for H in map(int, args.hidden.split(",")):
            peer = getattr(torch.nn, name)(H, H)
            state = {k: v.detach().numpy() for k, v in peer.state_dict().items()}
            x = rng.standard_normal(H).astype(np.float32)
            steps = {"rf": rnnfast_step(name, H, state, x, args.threads, True),
                     "4k": rnnfast_step(name, H, state, x, args.threads, False)}
            xt = torch.from_numpy(x).reshape(1, 1, H)
            carried = [None]

            def torch_step():
                with torch.no_grad():
                    _, carried[0] = peer(xt, carried[0])

            steps["torch"] = torch_step
            mib = sum(v.nbytes for k, v in state.items() if k.startswith("weight")) / 2**20
            for pause in pauses:
                for step in steps.values():
                    for _ in range(200):
                        step()
                us = median_us_after(steps, pause / 1e3, args.steps * (10 if pause == 0 else 1))
                print(f"| {name} | {H} | {mib:.2f} | {pause:g} | {us['rf']:.3g} | "
                      f"{us['4k']:.3g} | {us['torch']:.3g} | {us['torch'] / us['rf']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
