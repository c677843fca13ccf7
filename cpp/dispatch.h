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

}  // namespace rnnfast
