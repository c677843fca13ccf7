"""Padded batches (sequences of different lengths) against PyTorch's packed sequences.

    python bench/padded.py                                  # the table in bench/RESULTS.md
    python bench/padded.py --cells lstm --models mid --lengths uniform

Each model runs a batch of B sequences padded to T steps: "full" (every sequence T
long), "uniform" (lengths drawn uniformly from 1..T, in random order) and "short" (from
1..T/4, a long-tailed batch: one sequence T long). rnnfast takes `lengths=`; PyTorch
`pack_padded_sequence(..., enforce_sorted=False)`. Training is forward + backward of the
sum of the outputs inside the sequences. Prints medians (ms), PyTorch's time over
rnnfast's, and rnnfast's time as a share of its own full batch's next to the share of
tokens (work done per token: the two should match).
"""
import argparse
import os
import sys

import numpy as np

import rnnfast as rf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from small_batch import CELLS, median_ms, with_torch  # noqa: E402

# name: (T, B, I, H, layers, bidirectional)
MODELS = {
    "mid": (50, 64, 256, 512, 1, False),   # bench-configs.md's mid row
    "tagger": (50, 64, 128, 256, 2, True),  # two bidirectional layers: the upper one projects
}


def draw_lengths(kind, T, B, rng):
    if kind == "full":
        return np.full(B, T)
    top = T if kind == "uniform" else max(1, T // 4)
    lengths = rng.integers(1, top + 1, B)
    lengths[rng.integers(B)] = T  # the batch spans T steps
    return lengths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru", help="comma-separated: rnn, lstm, gru")
    ap.add_argument("--models", default="mid,tagger", help="comma-separated: " + ",".join(MODELS))
    ap.add_argument("--lengths", default="full,uniform,short", help="comma-separated: full, "
                    "uniform, short")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies T, B, I, H (tests)")
    args = ap.parse_args(argv)
    torch = with_torch(args.threads)
    from torch.nn.utils.rnn import pack_padded_sequence
    print(f"{args.threads} threads, ms (medians of {args.repeats}); x = torch / rnnfast; "
          "of full = rnnfast's time / its time on the full batch\n")
    print("| cell | model | lengths | tokens | infer rf | torch | x | of full | train rf | torch "
          "| x | of full |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in args.cells.split(","):
        name = CELLS[cell]
        for model_name in args.models.split(","):
            T, B, I, H, L, bi = MODELS[model_name]
            T, B, I, H = (max(2, round(v * args.scale)) for v in (T, B, I, H))
            peer = getattr(torch.nn, name)(I, H, num_layers=L, bidirectional=bi)
            m = getattr(rf, name)(I, H, num_layers=L, bidirectional=bi)
            m.load_state_dict({k: v.detach().numpy() for k, v in peer.state_dict().items()})
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            xt = torch.from_numpy(x)
            full = None
            for kind in args.lengths.split(","):
                lengths = draw_lengths(kind, T, B, rng)
                lt = torch.from_numpy(lengths)
                dy = (np.arange(T)[:, None] < lengths).astype(np.float32)[:, :, None]
                dy = np.broadcast_to(dy, (T, B, (2 if bi else 1) * H)).copy()

                def rf_infer():
                    m(x, lengths=lengths)

                def rf_train():
                    m.forward(x, lengths=lengths, training=True)
                    m.backward(dy)

                def torch_run():
                    out, _ = peer(pack_padded_sequence(xt, lt, enforce_sorted=False))
                    return out.data

                def torch_train():
                    peer.zero_grad()
                    torch_run().sum().backward()

                with torch.no_grad():
                    pi = median_ms(torch_run, args.repeats)
                ti = median_ms(rf_infer, args.repeats)
                tt = median_ms(rf_train, args.repeats)
                pt = median_ms(torch_train, args.repeats)
                if kind == "full":
                    full = (ti, tt)
                share = lengths.sum() / (T * B)
                of_i = f"{ti / full[0]:.2f}" if full else "-"
                of_t = f"{tt / full[1]:.2f}" if full else "-"
                print(f"| {name} | {model_name} | {kind} | {share:.2f} | {ti:.3g} | {pi:.3g} | "
                      f"{pi / ti:.2f} | {of_i} | {tt:.3g} | {pt:.3g} | {pt / tt:.2f} | {of_t} |",
                      flush=True)


if __name__ == "__main__":
    main()
