"""rnnfast: fast RNN, LSTM and GRU layers for CPUs.

Forward passes and backpropagation through time run in C++ (SIMD kernels chosen at run
time, OpenMP threads, the GIL released); parameters use PyTorch's names and layout.
"""

from . import reference
from ._core import get_num_threads, set_num_threads
from ._core import isa as _isa
from ._core import supported_isas as _supported_isas
from .layers import GRU, LSTM, RNN

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "reference", "set_num_threads", "get_num_threads",
           "get_isa", "supported_isas", "__version__"]


def get_isa():
    """The kernel build in use: 'avx512', 'avx2' or 'generic' (RNNFAST_ISA can force one)."""
    return _isa()


def supported_isas():
    """Kernel builds this CPU can run, best first."""
    return list(_supported_isas())
