// Run-time choice of the kernel build: the best the CPU supports, or the one
// named by RNNFAST_ISA (avx512, avx2, generic) when the CPU supports it.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace rnnfast {

template <typename T>
const KernelTable<T>& kernels();
std::string current_isa();
std::vector<std::string> supported_isas();   // best first
void set_isa(const std::string& name);       // throws std::invalid_argument if unsupported
// far_prefetch() (common.h) for this CPU, and a setter for tests; returns the previous value.
bool set_far_prefetch(bool on);
// transposed_a_in_place() (common.h) for this CPU, and a setter for tests; returns the
// previous value.
bool set_transposed_a_in_place(bool on);
// row_sweep_bytes() (common.h): set it for tests (0: this CPU's); returns the previous value.
long set_row_sweep_bytes(long bytes);
// One core's L2 and cpu0's L3 in bytes as the OS reports them (0 if unknown).
long l2_cache_bytes();
long l3_cache_bytes();

}  // namespace rnnfast
