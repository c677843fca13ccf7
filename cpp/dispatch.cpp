#include "dispatch.h"

#include <algorithm>
#include <atomic>
#if RF_X86
#include <cpuid.h>
#endif
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <unistd.h>

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

// The CPU's family where it is an AMD one (0x19 Zen 3/4, 0x1a Zen 5), else 0.
unsigned amd_family() {
#if RF_X86
  __builtin_cpu_init();
  unsigned a, b, c, d;
  if (!__builtin_cpu_is("amd") || !__get_cpuid(1, &a, &b, &c, &d)) return 0;
  unsigned family = (a >> 8) & 0xf;
  if (family == 0xf) family += (a >> 20) & 0xff;
  return family;
#else
  return 0;
#endif
}

// Software prefetch of batch-1 weights from L3: measured faster on Zen 5 (AMD family 1Ah),
// slower on Zen 4 (19h), whose hardware prefetch alone reads the one stream at a plain
// loop's rate. Off where not measured.
bool far_prefetch_default() { return amd_family() >= 0x1a; }

std::atomic<bool> g_far_prefetch{far_prefetch_default()};

// A weight gradient's transposed dA read in place by the GEMM (gemm.cpp): measured faster
// on Zen 4 (`small` training -2 to -5%) and Zen 5 (family 1Ah: `small` -2 to -5%, the
// larger rows level to -1%), slower on an Intel Xeon (family 6 model 207) with 4-8 panels
// of B, where each k's line is read again for every panel (cpp/README.md, twenty-fifth,
// thirtieth and thirty-fourth sessions). On for AMD families 19h and 1Ah with AVX-512
// (Zen 3, family 19h without it, was not measured), off elsewhere.
bool transposed_a_in_place_default() {
#if RF_X86
  const unsigned family = amd_family();
  return (family == 0x19 || family == 0x1a) && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

std::atomic<bool> g_transposed_a_in_place{transposed_a_in_place_default()};

// cpu0's cache of a level (2 or 3; data or unified) from sysfs (Linux), else sysconf.
long cache_from_os(int level) {
  for (int i = 0; i < 8; ++i) {
    char path[96], buf[32] = {};
    auto read = [&](const char* leaf) {
      std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/%s", i, leaf);
      std::FILE* f = std::fopen(path, "r");
      buf[0] = 0;
      if (f) {
        if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
        std::fclose(f);
      }
      return f != nullptr;
    };
    if (!read("level")) break;
    if (std::atol(buf) != level || !read("type") || buf[0] == 'I' || !read("size")) continue;
    char* end = nullptr;
    long size = std::strtol(buf, &end, 10);
    if (*end == 'K' || *end == 'k') size <<= 10;
    else if (*end == 'M' || *end == 'm') size <<= 20;
    if (size > 0) return size;
  }
#if defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  const long size = sysconf(level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
  if (size > 0) return size;
#endif
  return 0;
}

const long g_l2_bytes = cache_from_os(2);
const long g_l3_bytes = cache_from_os(3);

// Three quarters of the L2 leaves room for the rest a step touches: on 1 MiB L2s (Zen 4
// and 5) weights of a whole 1 MiB ran 4-9% slower split by rows. An unknown L2 counts as
// 1 MiB; reports beyond 4 MiB (an L2 shared by a cluster) as 4 MiB.
long row_sweep_default() {
  const long l2 = g_l2_bytes <= 0 ? 1L << 20 : std::min(g_l2_bytes, 4L << 20);
  return std::max(l2, 256L << 10) / 4 * 3;
}

std::atomic<long> g_row_sweep{row_sweep_default()};

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
bool transposed_a_in_place() { return g_transposed_a_in_place.load(std::memory_order_relaxed); }
bool set_transposed_a_in_place(bool on) { return g_transposed_a_in_place.exchange(on); }
long row_sweep_bytes() { return g_row_sweep.load(std::memory_order_relaxed); }
long set_row_sweep_bytes(long bytes) {
  return g_row_sweep.exchange(bytes > 0 ? bytes : row_sweep_default());
}
long row_sweep_bytes(double rows) {
  const long base = row_sweep_bytes();
  const double times = std::min(std::max(rows / 4, 1.0), 8.0);
  if (times <= 1 || g_l3_bytes <= 0) return base;
  return std::max(base, std::min((long)(base * times), g_l3_bytes / 4));
}
long l2_cache_bytes() { return g_l2_bytes; }
long l3_cache_bytes() { return g_l3_bytes; }

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
