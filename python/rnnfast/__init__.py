"""rnnfast: fast RNN, LSTM and GRU layers for CPUs.

Forward passes and backpropagation through time run in C++ (SIMD kernels chosen at run
time, a thread pool of its own, the GIL released); parameters use PyTorch's names and layout.
"""

from . import _core, callbacks, data, losses, optim, reference
from ._base import Stream
from ._base import check_num_threads as _check_num_threads
from ._core import isa as _isa
from ._core import supported_isas as _supported_isas
from .layers import GRU, LSTM, RNN
from .models import Sequential
from .saving import load
from ._seeding import set_seed
from .nn import Dense, Dropout, Embedding, LastStep, Linear

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "Stream", "Sequential", "Embedding", "Dense", "Linear", "Dropout",
           "LastStep", "load", "set_seed", "callbacks", "optim", "losses", "data", "reference", "set_num_threads", "get_num_threads",
           "get_isa", "supported_isas", "__version__"]


def set_num_threads(n):
    """Threads for rnnfast's kernels in this process; 0 restores the default (OMP_NUM_THREADS,
    else all cores). A model's own ``num_threads`` takes precedence."""
    if n is None:
        raise TypeError("set_num_threads(n): n must be an int (0 restores the default)")
    _core.set_num_threads(_check_num_threads(n, "set_num_threads(n): n"))


def get_num_threads():
    """Threads rnnfast's kernels use by default in this process."""
    return _core.get_num_threads()


def get_isa():
    """The kernel build in use: 'avx512', 'avx2' or 'generic' (RNNFAST_ISA can force one)."""
    return _isa()


def supported_isas():
    """Kernel builds this CPU can run, best first."""
    return list(_supported_isas())
