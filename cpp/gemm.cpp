#include "gemm.h"

#include <cstdlib>
#include <new>

#include "threading_kernel.h"

namespace rnnfast {
namespace RF_NS {

namespace {

constexpr int NV = kPrepackedNV;  // the general and the pre-packed product share tiles
// K block: 512 rows (a 32 KiB B micro-panel, streamed from L2) rather than 256 (16 KiB, in
// L1): C tiles are read and written half as often, which the products with few columns and
// long K of the weight gradients feel most (2 threads, M 1024 N 256 K 3200 with A
// transposed: 131 -> 140 GFLOP/s; M 3200 N 256 K 2048: 158 -> 171).
constexpr int KC = 512;
constexpr int kDirectPanels = 8;  // gemm_impl reads A in place for up to this many panels

// Per-thread scratch that only grows: packing buffers without an allocation per call.
class Scratch {
 public:
  ~Scratch() {
    for (int i = 0; i < kSlots; ++i) std::free(ptr_[i]);
  }
  void* get(int slot, size_t bytes) {
    if (bytes > cap_[slot]) {
      std::free(ptr_[slot]);
      bytes = (bytes + 4095) / 4096 * 4096;
      ptr_[slot] = std::aligned_alloc(64, bytes);
      cap_[slot] = ptr_[slot] ? bytes : 0;
      if (!ptr_[slot]) throw std::bad_alloc();
    }
    return ptr_[slot];
  }

 private:
  static constexpr int kSlots = 2;
  void* ptr_[kSlots] = {nullptr, nullptr};
  size_t cap_[kSlots] = {0, 0};
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

template <typename T>
struct Blocking {
  static constexpr int W = Simd<T>::W;
  static constexpr int MR = MicroRows<NV>::MR;
  static constexpr int NR = NV * W;
  static constexpr int MC = MR * 16;
  static constexpr int NC = NR * 128;
};

// Writes (or adds) the valid mr x nr corner of an accumulator tile into C.
template <typename T, int MR>
inline void store_tile(typename Simd<T>::V (&acc)[MR][NV], T* C, long ldc, int mr, int nr,
                       bool add, const T* D, long ldd) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  for (int r = 0; r < mr; ++r) {
    T* c = C + r * ldc;
    const T* d = D ? D + r * ldd : nullptr;
    for (int v = 0; v < NV; ++v) {
      int n = nr - v * W;
      if (n <= 0) break;
      V x = acc[r][v];
      if (n >= W) {
        if (add) x += vload<V>(c + v * W);
        if (d) x += vload<V>(d + v * W);
        vstore(c + v * W, x);
      } else {
        if (add) x += vload_part<V>(c + v * W, n);
        if (d) x += vload_part<V>(d + v * W, n);
        vstore_part(c + v * W, x, n);
      }
    }
  }
}

// Packs rows [0, mc) x cols [0, kc) of A into MR-row micro-panels (k-major), zero-padded.
template <typename T, int MR>
void pack_a(T* dst, int mc, int kc, const T* A, long rsa, long csa) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, NVA = (MR + W - 1) / W;
  int i0 = 0;
  // A weight gradient's A (dA transposed): each k gives MR consecutive elements, copied as
  // NVA vectors. The last vector may run past the k's MR slots into the next k's, which
  // that k then overwrites, so the final k goes element by element. (Scalar copies of
  // every element took 16% of M 1024 N 256 K 3200.)
  if (rsa == 1) {
    const int nfull = mc < NVA * W ? 0 : (mc - NVA * W) / MR + 1;
    for (int k = 0; k + 1 < kc; ++k) {
      const T* a = A + k * csa;
      T* d = dst + (long)k * MR;
      for (int p = 0; p < nfull; ++p)
#pragma GCC unroll 4
        for (int v = 0; v < NVA; ++v)
          vstore(d + (long)p * MR * kc + v * W, vload<V>(a + p * MR + v * W));
    }
    for (int p = 0; p < nfull; ++p)
      for (int r = 0; r < MR; ++r)
        dst[(long)p * MR * kc + (long)(kc - 1) * MR + r] = A[(kc - 1) * csa + p * MR + r];
    // Full micro-panels too near the block's end for whole vectors: without checks.
    for (i0 = nfull * MR; i0 + MR <= mc; i0 += MR) {
      T* d = dst + (long)i0 * kc;
      for (int k = 0; k < kc; ++k)
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) d[(long)k * MR + r] = A[i0 + r + k * csa];
    }
  }
  for (; i0 < mc; i0 += MR) {
    T* d = dst + (long)i0 * kc;
    for (int k = 0; k < kc; ++k)
      for (int r = 0; r < MR; ++r)
        d[(long)k * MR + r] = i0 + r < mc ? A[(i0 + r) * rsa + k * csa] : T(0);
  }
}

// Packs a panel of ncols columns whose first `nfirst` come from B (given at the panel's
// first column) and the rest from B2 (given at its column 0), zero-padded to NR.
template <typename T>
void pack_panel_straddling(T* dst, int kc, int ncols, int nfirst, const T* B, long rsb, long csb,
                           const T* B2, long rsb2, long csb2) {
  constexpr int NR = Blocking<T>::NR;
  for (int k = 0; k < kc; ++k)
    for (int j = 0; j < NR; ++j)
      dst[(long)k * NR + j] = j < nfirst   ? B[k * rsb + j * csb]
                              : j < ncols ? B2[k * rsb2 + (j - nfirst) * csb2]
                                          : T(0);
}

// C (and cols->C2) = A [B | cols->B2]: the general product, over one block of columns when
// cols is null, with A read through gaps when not null. Row blocks end where A's rows jump
// and K blocks where its columns do, so a gap costs no more than a block boundary.
template <typename T>
void gemm_impl(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb,
               long csb, T* C, long ldc, const GemmCols2<T>* cols, const GemmGaps* gaps,
               bool accumulate, const T* bias, int nthreads) {
  typedef Blocking<T> BL;
  typedef typename Simd<T>::V V;
  constexpr int MR = BL::MR, NR = BL::NR, MC = BL::MC, NC = BL::NC, W = Simd<T>::W;
  if (M <= 0 || N <= 0) return;
  const int n1 = cols ? cols->n1 : N;  // columns [n1, N) live in B2 / C2
  if (K <= 0) {
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        T& c = n < n1 ? C[m * ldc + n] : cols->C2[m * cols->ldc2 + n - n1];
        c = (accumulate ? c : T(0)) + (bias ? bias[n] : T(0));
      }
    return;
  }
  const int nc_max = N < NC ? N : NC;
  const int kc_max = K < KC ? K : KC;
  const long bsize = panels_for<T, NV>(nc_max) * (long)kc_max * NR;
  const long asize = (long)(MC + MR) * kc_max;  // a block with gaps may hold a panel more
  // Row blocks of at most MC rows, as equal as whole micro-panels allow: 11 blocks of
  // 96 rows for M = 1024 left one thread of two waiting ~5% of the time. Rows [0, m_at)
  // and [m_at, M) have micro-panels of their own (the second's A rows m_skip further on).
  const int m_at = gaps && gaps->m_at < M ? (gaps->m_at > 0 ? gaps->m_at : 0) : M;
  const int k_at = gaps && gaps->k_at < K ? (gaps->k_at > 0 ? gaps->k_at : 0) : K;
  const long m_skip = gaps ? gaps->m_skip : 0, k_skip = gaps ? gaps->k_skip : 0;
  const int mp1 = (m_at + MR - 1) / MR, mpanels = mp1 + (M - m_at + MR - 1) / MR;
  int mblocks = (M + MC - 1) / MC;
  int nt = rf_threads_for(nthreads, 2.0 * M * N * K);
  if (nt > mblocks * 8) nt = mblocks * 8;
  // Few panels of B do not repay packing A: a row-major A's rows are read in place (Zen 5,
  // 2 threads, GFLOP/s: M 400 N 32 K 512 ~180 -> ~400, M 3200 N 64 K 1024 330 -> 475,
  // N 256 430 -> 470; with N 1024-4096 no clear difference, so they still pack).
  const bool direct_a = csa == 1 && panels_for<T, NV>(N) <= kDirectPanels;
  // A transposed (a weight gradient's dA) whose k's lie an odd number of cache lines apart
  // is read in place too, on CPUs where that pays (transposed_a_in_place): each k's MR rows
  // are consecutive, as in a packed micro-panel, and the odd stride spreads the k's over
  // every cache set (the engine's dA rows are padded so). Zen 4, 2 threads, alternating
  // processes: M 512 N 160 K 400 372-378 -> 359-360 us, `small` training LSTM -1.8 to
  // -3.3%, GRU -3%; charrnn/mid/large level. At a stride of 2048 floats the k's share 16
  // L2 sets and mid's shape ran 6% slower: those still pack.
  const bool direct_t =
      !direct_a && rsa == 1 && csa * (long)sizeof(T) % 128 != 0 && transposed_a_in_place();
  const long a_step = direct_a ? 1 : direct_t ? csa : MR;
  // Under two blocks per thread, smaller blocks rather than split column ranges that each
  // pack the same A (M 512 N 160 K 400, A transposed: 3 blocks in halves 340 -> 400).
  if (mblocks < 2 * nt) mblocks = mpanels < 2 * nt ? mpanels : 2 * nt;
  if (mblocks >= 2 * nt) mblocks = (mblocks + nt - 1) / nt * nt;
  T* bbuf = static_cast<T*>(scratch().get(0, sizeof(T) * bsize));
  T* abuf = static_cast<T*>(scratch().get(1, sizeof(T) * asize * nt));
  // Split the N range of a block too when M has under two micro-panels per thread.
  const int nsplit = mblocks >= 2 * nt ? 1 : (2 * nt + mblocks - 1) / mblocks;

  rf_parallel(nt, [&] {
    RF_FLUSH_DENORMALS_SCOPE;
    T* my_a = abuf + asize * rf_thread_num();
    for (int jc = 0; jc < N; jc += NC) {
      const int nc = N - jc < NC ? N - jc : NC;
      const int npanels = (int)panels_for<T, NV>(nc);
      for (int pc = 0, kc; pc < K; pc += kc) {
        const int kend = pc < k_at ? k_at : K;
        kc = kend - pc < KC ? kend - pc : KC;
        const long ka = pc + (pc >= k_at ? k_skip : 0);  // A's column of k = pc
        const bool add = accumulate || pc > 0;
        const bool last_k = pc + kc >= K;  // the bias row goes in with the last K block
        const int p_end = rf_share(npanels, rf_thread_num() + 1, rf_team_size());
        for (int p = rf_share(npanels, rf_thread_num(), rf_team_size()); p < p_end; ++p) {
          const int ncols = nc - p * NR < NR ? nc - p * NR : NR, c0 = jc + p * NR;
          T* dst = bbuf + (long)p * kc * NR;
          if (c0 + ncols <= n1)
            pack_panels<T, NV>(dst, kc, ncols, B + pc * rsb + c0 * csb, rsb, csb);
          else if (c0 >= n1)
            pack_panels<T, NV>(dst, kc, ncols, cols->B2 + pc * cols->rsb2 + (c0 - n1) * cols->csb2,
                               cols->rsb2, cols->csb2);
          else
            pack_panel_straddling(dst, kc, ncols, n1 - c0, B + pc * rsb + c0 * csb, rsb, csb,
                                  cols->B2 + pc * cols->rsb2, cols->rsb2, cols->csb2);
        }
        rf_barrier();
        const int ppt = (npanels + nsplit - 1) / nsplit;  // panels per task
        // Rows [ic, ic + mc) of C from rows [ia, ia + mc) of A, columns p0..p1 of B.
        auto block = [&](int ic, int mc, long ia, int p0, int p1) {
          if (!direct_a && !direct_t)
            pack_a<T, MR>(my_a, mc, kc, A + ia * rsa + ka * csa, rsa, csa);
          for (int p = p0; p < p1; ++p) {
            const int nr = nc - p * NR < NR ? nc - p * NR : NR, c0 = jc + p * NR;
            const T* bp = bbuf + (long)p * kc * NR;
            const T* bias_p = bias && last_k ? bias + c0 : nullptr;
            const bool second = c0 >= n1, straddling = !second && c0 + nr > n1;
            const long ld = second ? cols->ldc2 : ldc;
            for (int i0 = 0; i0 < mc; i0 += MR) {
              const T* ap = my_a + (long)i0 * kc;
              const T* rows[MR];
              int mr = mc - i0 < MR ? mc - i0 : MR;
              for (int r = 0; r < MR; ++r)
                rows[r] = direct_a || direct_t ? A + (ia + i0 + (r < mr ? r : 0)) * rsa + ka * csa
                                               : ap + r;
              T* c = second ? cols->C2 + (long)(ic + i0) * ld + (c0 - n1)
                            : C + (long)(ic + i0) * ld + c0;
              for (int r = 0; r < mr; ++r) {  // the C tile arrives while the product runs
                __builtin_prefetch(c + r * ld, 1);
                __builtin_prefetch(c + r * ld + NR - 1, 1);
              }
              V acc[MR][NV];
              if (nr <= W) {  // columns in the panel's first vector: that one only
                V one[MR][1];
                zero_tile<T, MR, 1>(one);
                micro_kernel_add<T, MR, 1, NV>(kc, rows, a_step, bp, one);
                for (int r = 0; r < MR; ++r)
                  for (int v = 0; v < NV; ++v) acc[r][v] = v ? V{} : one[r][0];
              } else {
                micro_kernel<T, MR, NV>(kc, rows, a_step, bp, acc);
              }
              if (!straddling) {
                store_tile<T, MR>(acc, c, ld, mr, nr, add, bias_p, 0);
                continue;
              }
              alignas(64) T tile[MR * NR];
              store_tile<T, MR>(acc, tile, NR, mr, nr, false, bias_p, 0);
              for (int r = 0; r < mr; ++r)
                for (int j = 0; j < nr; ++j) {
                  T& out = c0 + j < n1 ? c[r * ldc + j]
                                       : cols->C2[(long)(ic + i0 + r) * cols->ldc2 + c0 + j - n1];
                  out = (add ? out : T(0)) + tile[r * NR + j];
                }
            }
          }
        };
        for (long task; pool_next_task(mblocks * nsplit, &task);) {
          const int ib = (int)(task / nsplit), part = (int)(task % nsplit);
          const int p0 = part * ppt, p1 = p0 + ppt < npanels ? p0 + ppt : npanels;
          if (p0 >= p1) continue;
          const int q0 = (int)((long)ib * mpanels / mblocks);  // micro-panels [q0, q1)
          const int q1 = (int)((long)(ib + 1) * mpanels / mblocks);
          if (q0 < mp1) {
            const int ic = q0 * MR, iend = q1 < mp1 ? q1 * MR : m_at;
            block(ic, iend - ic, ic, p0, p1);
          }
          if (q1 > mp1) {
            const int ic = m_at + (q0 > mp1 ? q0 - mp1 : 0) * MR;
            const int iend = m_at + (q1 - mp1) * MR;
            block(ic, (iend < M ? iend : M) - ic, ic + m_skip, p0, p1);
          }
        }
        rf_barrier();
      }
    }
  });
}

}  // namespace

template <typename T>
void gemm(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb, long csb,
          T* C, long ldc, bool accumulate, const T* bias, int nthreads) {
  gemm_impl<T>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, nullptr, nullptr, accumulate, bias,
               nthreads);
}

template <typename T>
void gemm_gapped(int M, int N, int K, const T* A, long rsa, long csa, const GemmGaps& gaps,
                 const T* B, long rsb, long csb, T* C, long ldc, bool accumulate, int nthreads) {
  gemm_impl<T>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, nullptr, &gaps, accumulate, nullptr,
               nthreads);
}

template <typename T>
void gemm_cols2(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb,
                long csb, T* C, long ldc, const GemmCols2<T>& cols, bool accumulate,
                int nthreads) {
  gemm_impl<T>(M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, &cols, nullptr, accumulate, nullptr,
               nthreads);
}

template <typename T>
long prepacked_size(int K, int N) {
  return panels_for<T, kPrepackedNV>(N) * (long)K * kPrepackedNV * Simd<T>::W;
}

template <typename T>
void prepack(T* dst, int K, int N, const T* B, long rsb, long csb) {
  pack_panels<T, kPrepackedNV>(dst, K, N, B, rsb, csb);
}

// PP panels per tile: 2 for 2-row tiles and AVX-512's 4-row ones, whose one-panel tiles
// hold 4 and 8 FMA chains (8 is just the FMA latency times two ports); adjacent panels lie
// K * NR apart, micro_kernel_add's slices. Intel Xeon (family 6 model 207), alternating
// rounds, training: 4 rows, `small` LSTM on 2 threads (4 rows each) -1.7 to -2.3%, GRU
// -2.2%, one thread LSTM B 4 256/256 -1.6%, B 3 64/512 -2.2%; 2 rows (LSTM B 2, T 100 or 50)
// 64/128 -4.0%, 256/256 -2.7 to -3.1%, 128/512 level (1 thread) and -3.5% (2); the AVX2
// kernels there -2.6 to -4.9%.
template <typename T, int MR, int PP = 1>
static void gemm_prepacked_tiles(int M, int N, int K, const T* A, long lda, const T* Bp, T* C,
                                 long ldc, const T* D, long ldd, bool shared,
                                 StealShares* steal, long gen) {
  typedef typename Simd<T>::V V;
  constexpr int NR = NV * Simd<T>::W;
  constexpr int W = Simd<T>::W;
  const int npanels = (int)panels_for<T, NV>(N), ngroups = (npanels + PP - 1) / PP;
  const int mblocks = (M + MR - 1) / MR;
  // A last panel whose columns fit its first vector computes that one only (the backward's
  // dh at H = 100: 3 panels and a quarter, not 4).
  const bool narrow_last = N - (npanels - 1) * NR <= W;
  auto tile = [&](int task) {
    const int q = task / mblocks, i0 = (task % mblocks) * MR;
    const int mr = M - i0 < MR ? M - i0 : MR;
    const T* rows[MR];
    for (int r = 0; r < MR; ++r) rows[r] = A + (long)(i0 + (r < mr ? r : 0)) * lda;
    auto store = [&](V(&acc)[MR][NV], int p) {
      const int nr = N - p * NR < NR ? N - p * NR : NR;
      store_tile<T, MR>(acc, C + (long)i0 * ldc + p * NR, ldc, mr, nr, false,
                        D ? D + (long)i0 * ldd + p * NR : nullptr, ldd);
    };
    // NC vectors of columns from panel p on (its NV, then the next panel's), stored
    auto run = [&](auto NC_c, int p) {
      constexpr int NC = decltype(NC_c)::value;
      V part[MR][NC], acc[MR][NV];
      zero_tile<T, MR, NC>(part);
      if constexpr (MR == 1)
        row_kernel_add<T, NC, NV>(K, rows[0], Bp + (long)p * K * NR, part, (long)K * NR);
      else
        micro_kernel_add<T, MR, NC, NV>(K, rows, 1, Bp + (long)p * K * NR, part, (long)K * NR);
      for (int h = 0; h * NV < NC; ++h) {
        for (int r = 0; r < MR; ++r)
          for (int v = 0; v < NV; ++v) acc[r][v] = h * NV + v < NC ? part[r][h * NV + v] : V{};
        store(acc, p + h);
      }
    };
    typedef std::integral_constant<int, 1> One;
    typedef std::integral_constant<int, NV> Full;
    if constexpr (PP == 2) {
      typedef std::integral_constant<int, 2 * NV> Two;
      typedef std::integral_constant<int, NV + 1> FullOne;
      if (2 * q + 1 < npanels)
        return narrow_last && 2 * q + 1 == npanels - 1 ? run(FullOne(), 2 * q) : run(Two(), 2 * q);
    }
    const int p = q * PP;
    return narrow_last && p == npanels - 1 ? run(One(), p) : run(Full(), p);
  };
  if (!shared) {
    for (int task = 0; task < ngroups * mblocks; ++task) tile(task);
    return;
  }
  rf_for(ngroups * mblocks, [&](long task) { tile((int)task); }, steal, gen);
}

template <typename T>
void gemm_prepacked(int M, int N, int K, const T* A, long lda, const T* Bp, T* C, long ldc,
                    const T* D, long ldd, bool shared, StealShares* steal, long gen) {
  // Full-height tiles pad a few rows a lot (8 rows take 12 in 6-row tiles); tiles of 2/3
  // the height hold 2/3 of the FMA chains (8 on AVX2: ~80% of the FMA rate, not ~90%).
  // AVX-512's 8-row tiles keep 16 chains, so any padding saved pays (Zen 5, batch 64:
  // 8 tiles of 8 rows, not 6 of 12; training mid LSTM -3.6%, large RNN -2.7%), and up to
  // 4 rows (a thread's share of B = 8 in the backward's row split) take 4-row tiles, 5 and
  // 6 rows 6-row ones (Zen 4, training T 100: B 6 LSTM 256/512 -7%, B 5 LSTM 64/256 -9%
  // against 8-row tiles).
  constexpr int MR = MicroRows<NV>::MR, MRS = MR * 2 / 3;
  const long full = (M + MR - 1) / MR * MR, small = (M + MRS - 1) / MRS * MRS;
  // One row (batch-1 training): bound by reading Bp, so the row kernel, not one row done in
  // every row of a tile. Two rows: a 2-row tile, half a padded one's FMAs with 4 chains
  // (Zen 4, backward of B 2, T 200: LSTM 256/256 training -7%; 3-row tiles for B 3 +1%).
  if (M == 1)
    gemm_prepacked_tiles<T, 1>(M, N, K, A, lda, Bp, C, ldc, D, ldd, shared, steal, gen);
  else if (M == 2)
    gemm_prepacked_tiles<T, 2, 2>(M, N, K, A, lda, Bp, C, ldc, D, ldd, shared, steal, gen);
#if defined(RF_ISA_avx512)
  else if (M <= 4)
    gemm_prepacked_tiles<T, 4, 2>(M, N, K, A, lda, Bp, C, ldc, D, ldd, shared, steal, gen);
  else if (M <= 6)
    gemm_prepacked_tiles<T, 6>(M, N, K, A, lda, Bp, C, ldc, D, ldd, shared, steal, gen);
  else if (small < full)
#else
  else if (small * 9 < full * 8)
#endif
    gemm_prepacked_tiles<T, MRS>(M, N, K, A, lda, Bp, C, ldc, D, ldd, shared, steal, gen);
  else
    gemm_prepacked_tiles<T, MR>(M, N, K, A, lda, Bp, C, ldc, D, ldd, shared, steal, gen);
}

template <typename T>
void gemm_prepacked_par(int M, int N, int K, const T* A, long lda, const T* Bp, T* C, long ldc,
                        const T* bias, int nthreads) {
  int nt = rf_threads_for(nthreads, rf_step_work(M, N, K));
  const int npanels = (int)panels_for<T, NV>(N);
  if (nt > npanels) nt = npanels;
  rf_parallel(nt, [&] {
    RF_FLUSH_DENORMALS_SCOPE;
    gemm_prepacked<T>(M, N, K, A, lda, Bp, C, ldc, bias, 0, true);  // ldd 0: one row for all
  });
}

#define RF_INSTANTIATE(T)                                                                       \
  template void gemm<T>(int, int, int, const T*, long, long, const T*, long, long, T*, long, bool, \
                        const T*, int);                                                        \
  template void gemm_gapped<T>(int, int, int, const T*, long, long, const GemmGaps&, const T*,    \
                               long, long, T*, long, bool, int);                               \
  template void gemm_cols2<T>(int, int, int, const T*, long, long, const T*, long, long, T*, long, \
                              const GemmCols2<T>&, bool, int);                                 \
  template long prepacked_size<T>(int, int);                                                    \
  template void prepack<T>(T*, int, int, const T*, long, long);                                 \
  template void gemm_prepacked<T>(int, int, int, const T*, long, const T*, T*, long, const T*,   \
                                  long, bool, StealShares*, long);                              \
  template void gemm_prepacked_par<T>(int, int, int, const T*, long, const T*, T*, long, const T*, \
                                      int);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)

}  // namespace RF_NS
}  // namespace rnnfast
