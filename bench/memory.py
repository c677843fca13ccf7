"""Peak memory of one training step (forward + backward), rnnfast against PyTorch.

Usage (from the repository root)::

    python bench/memory.py                      # LSTM, GRU and RNN on `charrnn`
    python bench/memory.py --cells lstm --config mid

Each measurement runs in a fresh interpreter: it imports the library, builds the model and
its input, records the resident set (RSS), runs three training steps and reports the peak
RSS above that baseline (Linux ru_maxrss), so imports and weights are left out and what
remains is what a step keeps and allocates. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

CONFIGS = {  # T, B, I, H, L from ../shared/bench-configs.md
    "small": (50, 8, 32, 128, 1),
    "charrnn": (100, 32, 64, 256, 2),
    "mid": (50, 64, 256, 512, 1),
    "large": (50, 64, 1024, 1024, 1),
}
CLASSES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}

CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    lib, cls, T, B, I, H, L = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])

    def rss_mib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    if lib == "rnnfast":
        import rnnfast as rf
        m = getattr(rf, cls)(I, H, num_layers=L)
        dy = np.ones((T, B, H), np.float32)

        def step():
            y, _ = m.forward(x, training=True)
            m.backward(dy)
    else:
        import torch
        m = getattr(torch.nn, cls)(I, H, num_layers=L)
        xt = torch.from_numpy(x).requires_grad_(True)
        dy = torch.ones(T, B, H)

        def step():
            y, _ = m(xt)
            y.backward(dy)
    base = rss_mib()
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"base_mib": base, "peak_mib": peak}))
""")


def measure(lib: str, cls: str, cfg: tuple[int, ...]) -> dict | str:
    proc = subprocess.run([sys.executable, "-c", CHILD, lib, cls, *map(str, cfg)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return f"n/a ({last[:60]})"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--config", default="charrnn", choices=sorted(CONFIGS))
    args = ap.parse_args()
    cfg = CONFIGS[args.config]
    T, B, I, H, L = cfg
    print(f"peak RSS above the post-setup baseline, training step, `{args.config}` "
          f"(T={T}, B={B}, I={I}, H={H}, L={L})\n")
    print("| cell | rnnfast MiB | torch MiB | torch / rnnfast |")
    print("| --- | --- | --- | --- |")
    for cell in args.cells.split(","):
        cls = CLASSES[cell.strip().lower()]
        row = []
        for lib in ("rnnfast", "torch"):
            r = measure(lib, cls, cfg)
            row.append(r if isinstance(r, str) else r["peak_mib"] - r["base_mib"])
        ratio = (f"{row[1] / row[0]:.2f}x" if all(isinstance(v, float) for v in row) and row[0] > 0
                 else "-")
        cells = [v if isinstance(v, str) else f"{v:.1f}" for v in row]
        print(f"| {cls} | {cells[0]} | {cells[1]} | {ratio} |")


if __name__ == "__main__":
    main()
