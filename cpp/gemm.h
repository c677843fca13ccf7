// Blocked GEMM pieces for one instruction set: a register-tiled micro-kernel
// (MR rows x NV vectors), B packing into column panels, the general product used
// for the big per-sequence products, and the pre-packed product used per step.
#pragma once
#include <cstddef>
#include "common.h"
#include "simd.h"

namespace rnnfast {
namespace RF_NS {

// Registers: 32 vector registers with AVX-512, 16 otherwise. MR x NV accumulators
// plus NV loaded B vectors and one broadcast must fit.
#if defined(RF_ISA_avx512)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif
template <int NV> struct MicroRows;
#if defined(RF_ISA_avx512)
template <> struct MicroRows<2> { static constexpr int MR = 12; };
template <> struct MicroRows<3> { static constexpr int MR = 8; };
template <> struct MicroRows<4> { static constexpr int MR = 6; };
#else
template <> struct MicroRows<2> { static constexpr int MR = 6; };
template <> struct MicroRows<3> { static constexpr int MR = 4; };
template <> struct MicroRows<4> { static constexpr int MR = 3; };
#endif

template <typename T, int MR, int NV>
static inline __attribute__((always_inline)) void zero_tile(typename Simd<T>::V (&acc)[MR][NV]) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = typename Simd<T>::V{};
}

// Keeps v in a register from here on. Without it GCC folded the weight loads of 2- and
// 3-row tiles into every row's FMA, a load per FMA instead of one per vector (AVX-512, one
// thread: LSTM at B = 3 took 1.27x the time of B = 4). Only where the tile's registers fit
// (AVX2's 3 x 4 does not, and ran 1.4x slower pinned); taller tiles kept the loads in
// registers already, and their code stays as it was (pinned, GRU's 8 x 3 ran ~5% slower).
// (x86 only: elsewhere an FMA takes no memory operand, so there is nothing to fold.)
template <typename V>
static inline __attribute__((always_inline)) void in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// acc[r][v] += sum_k a[r][k*cs] * B(k, v), where Bp holds B in slices of NVS vectors per
// k, ss elements apart: vector v of row k at Bp + (v/NVS)*ss + k*NVS*W + (v%NVS)*W (one
// slice, the usual panel, when NVS = NV).
template <typename T, int MR, int NV, int NVS = NV>
static inline __attribute__((always_inline)) void micro_kernel_add(
    int K, const T* const* a, long cs, const T* Bp, typename Simd<T>::V (&acc)[MR][NV],
    long ss = 0) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  for (int k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      b[v] = vload<V>(Bp + (v / NVS) * ss + (long)k * NVS * W + (v % NVS) * W);
      if constexpr ((MR == 2 || MR == 3) && MR * NV + NV + 1 <= kVectorRegisters)
        in_register(b[v]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      V ar = vbcast<V>(a[r][k * cs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += ar * b[v];
    }
  }
}

// The same from zero.
template <typename T, int MR, int NV>
static inline __attribute__((always_inline)) void micro_kernel(
    int K, const T* const* a, long cs, const T* Bp, typename Simd<T>::V (&acc)[MR][NV]) {
  zero_tile<T, MR, NV>(acc);
  micro_kernel_add<T, MR, NV>(K, a, cs, Bp, acc);
}

// One row (batch 1): acc[0][v] += sum_k a[k] * Bp[k*NR + v*W ...]. Each weight is used
// once, so the product is bound by reading Bp; S partial sums per vector keep S*NV
// independent FMA chains (>= 8 cover the FMA latency) instead of the rows of
// micro_kernel, which would redo the same row.
// Bp in slices as for micro_kernel_add. PF: each cache line of Bp is requested 1 KiB ahead,
// for weights beyond L2 (over 4 MiB) on CPUs where that helps (far_prefetch; cpp/README.md
// item 2: Zen 5 faster, Zen 4 slower).
template <typename T, int NV, int NVS = NV, bool PF = false>
static inline __attribute__((always_inline)) void row_kernel_add(
    int K, const T* a, const T* Bp, typename Simd<T>::V (&acc)[1][NV], long ss = 0) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, S = NV >= 4 ? 2 : (NV == 3 ? 3 : 4);
  V part[S][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) part[0][v] = acc[0][v];
#pragma GCC unroll 4
  for (int s = 1; s < S; ++s)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) part[s][v] = V{};
  int k = 0;
  for (; k + S <= K; k += S)
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
      const V ak = vbcast<V>(a[k + s]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const T* q = Bp + (v / NVS) * ss + (long)(k + s) * NVS * W + (v % NVS) * W;
        if (PF && (v * W * sizeof(T)) % 64 == 0) __builtin_prefetch((const char*)q + 1024, 0, 3);
        part[s][v] += ak * vload<V>(q);
      }
    }
  for (; k < K; ++k) {
    const V ak = vbcast<V>(a[k]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      part[0][v] += ak * vload<V>(Bp + (v / NVS) * ss + (long)k * NVS * W + (v % NVS) * W);
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    acc[0][v] = part[0][v];
#pragma GCC unroll 4
    for (int s = 1; s < S; ++s) acc[0][v] += part[s][v];
  }
}

// Number of NV-vector panels covering n columns, and the packed size of a K x n block.
template <typename T, int NV>
static inline long panels_for(long n) {
  constexpr int NR = NV * Simd<T>::W;
  return (n + NR - 1) / NR;
}

// Packs columns [0, n) of the K x n matrix B (element (k, j) at B[k*rs + j*cs])
// into panels of NR columns, each K x NR contiguous, zero-padded.
template <typename T, int NV>
static void pack_panels(T* dst, int K, int n, const T* B, long rs, long cs) {
  constexpr int NR = NV * Simd<T>::W;
  long np = panels_for<T, NV>(n);
  for (long p = 0; p < np; ++p) {
    T* d = dst + p * (long)K * NR;
    if (cs == 1 && (p + 1) * NR <= n) {  // a full panel of a row-major B: whole vectors
      const T* b = B + p * NR;
      for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          vstore(d + (long)k * NR + v * Simd<T>::W,
                 vload<typename Simd<T>::V>(b + k * rs + v * Simd<T>::W));
      continue;
    }
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < NR; ++j) {
        long col = p * NR + j;
        d[(long)k * NR + j] = col < n ? B[k * rs + col * cs] : T(0);
      }
  }
}

// C (M x N, row-major, ldc) = A B (or += when accumulate), A(m,k) = A[m*rsa + k*csa],
// B(k,n) = B[k*rsb + n*csb], plus the row `bias` (N) on every row when not null.
// Multithreaded with up to nthreads threads of the pool.
template <typename T>
void gemm(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb, long csb,
          T* C, long ldc, bool accumulate, const T* bias, int nthreads);

// The same over two blocks of columns (no bias): [C | cols.C2] = A [B | cols.B2].
template <typename T>
void gemm_cols2(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb,
                long csb, T* C, long ldc, const GemmCols2<T>& cols, bool accumulate,
                int nthreads);

// The same with A read through gaps (no bias): A(m, k) = A[m' * rsa + k' * csa] where
// m' = m + (m >= gaps.m_at ? gaps.m_skip : 0) and k' likewise.
template <typename T>
void gemm_gapped(int M, int N, int K, const T* A, long rsa, long csa, const GemmGaps& gaps,
                 const T* B, long rsb, long csb, T* C, long ldc, bool accumulate, int nthreads);

// Packed-B layout for gemm_prepacked: pack_panels<T, kPrepackedNV> of the whole K.
constexpr int kPrepackedNV = 2;
template <typename T>
long prepacked_size(int K, int N);
template <typename T>
void prepack(T* dst, int K, int N, const T* B, long rsb, long csb);

// The same as a whole call with its own team of up to nthreads threads: for products
// with few rows, where packing B on every call would cost more than the product.
template <typename T>
void gemm_prepacked_par(int M, int N, int K, const T* A, long lda, const T* Bp, T* C, long ldc,
                        const T* bias, int nthreads);

class StealShares;
// Inside a parallel region (work-shared with rf_for, through steal when given, or all on
// the calling thread without barriers when not shared):
// C(m, :) = A(m, :) Bp + D(m, :) for m < M, A row-major with lda, D may be null.
template <typename T>
void gemm_prepacked(int M, int N, int K, const T* A, long lda, const T* Bp, T* C, long ldc,
                    const T* D, long ldd, bool shared = true, StealShares* steal = nullptr,
                    long gen = 0);

}  // namespace RF_NS
}  // namespace rnnfast
