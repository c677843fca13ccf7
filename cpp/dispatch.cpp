#include "dispatch.h"

#include <atomic>
#if RF_X86
#include <cpuid.h>
#endif
#include <cstdlib>
#include <stdexcept>

namespace rnnfast {

namespace {

enum Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kNames[] = {"generic", "avx2", "avx512"};

bool cpu_has(Isa isa) {
#if RF_X86
  __builtin_cpu_init();
  switch (isa) {
    case kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("fma");
    case kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == kGeneric;
#endif
}

Isa best_isa() {
  if (cpu_has(kAvx512)) return kAvx512;
  if (cpu_has(kAvx2)) return kAvx2;
  return kGeneric;
}

Isa parse(const std::string& s, bool& ok) {
  ok = true;
  if (s == "avx512") return kAvx512;
  if (s == "avx2") return kAvx2;
  if (s == "generic" || s == "portable") return kGeneric;
  ok = false;
  return kGeneric;
}

Isa initial_isa() {
  Isa best = best_isa();
  const char* env = std::getenv("RNNFAST_ISA");
  if (env && *env) {
    bool ok;
    Isa want = parse(env, ok);
    if (ok && cpu_has(want)) return want;
  }
  return best;
}

std::atomic<int> g_isa{initial_isa()};

// Software prefetch of batch-1 weights from L3: measured faster on Zen 5 (AMD family 1Ah),
// slower on Zen 4 (19h), whose hardware prefetch alone reads the one stream at a plain
// loop's rate. Off where not measured.
bool far_prefetch_default() {
#if RF_X86
  __builtin_cpu_init();
  unsigned a, b, c, d;
  if (!__builtin_cpu_is("amd") || !__get_cpuid(1, &a, &b, &c, &d)) return false;
  unsigned family = (a >> 8) & 0xf;
  if (family == 0xf) family += (a >> 20) & 0xff;
  return family >= 0x1a;
#else
  return false;
#endif
}

std::atomic<bool> g_far_prefetch{far_prefetch_default()};

}  // namespace

template <>
const KernelTable<float>& kernels<float>() {
  switch (g_isa.load()) {
#if RF_X86
    case kAvx512: return avx512::table_f32();
    case kAvx2: return avx2::table_f32();
#endif
    default: return generic::table_f32();
  }
}

template <>
const KernelTable<double>& kernels<double>() {
  switch (g_isa.load()) {
#if RF_X86
    case kAvx512: return avx512::table_f64();
    case kAvx2: return avx2::table_f64();
#endif
    default: return generic::table_f64();
  }
}

bool far_prefetch() { return g_far_prefetch.load(std::memory_order_relaxed); }
bool set_far_prefetch(bool on) { return g_far_prefetch.exchange(on); }

std::string current_isa() { return kNames[g_isa.load()]; }

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (int i = kAvx512; i >= kGeneric; --i)
    if (cpu_has(Isa(i))) out.push_back(kNames[i]);
  return out;
}

void set_isa(const std::string& name) {
  bool ok;
  Isa want = parse(name, ok);
  if (!ok) throw std::invalid_argument("unknown instruction set '" + name +
                                       "': expected 'avx512', 'avx2' or 'generic'");
  if (!cpu_has(want))
    throw std::invalid_argument("this CPU does not support the '" + name + "' kernels");
  g_isa.store(want);
}

}  // namespace rnnfast
