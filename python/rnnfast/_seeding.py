"""The generator behind every ``seed=None``: fresh entropy, or after ``rf.set_seed(n)`` a
reproducible stream (the k-th object created gets the k-th child of SeedSequence(n))."""

from __future__ import annotations

import numpy as np

_root: np.random.SeedSequence | None = None


def set_seed(seed):
    """Makes every rnnfast object created afterwards without its own ``seed=`` (layers' initial
    weights and dropout, a Sequential's shuffling) reproducible; None restores fresh entropy."""
    global _root
    _root = None if seed is None else np.random.SeedSequence(seed)


def rng(seed=None):
    if seed is not None or _root is None:
        return np.random.default_rng(seed)
    return np.random.default_rng(_root.spawn(1)[0])
