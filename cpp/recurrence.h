// The time loop shared by every cell. Per step, one fused kernel: the recurrent
// product h_{s-1} W_hh^T (plus x_t W_ih^T for layers whose input product runs in the
// loop) on weights packed once (one panel = the gate columns of a block of hidden
// units), then the cell's epilogue in registers. Backward runs the cell's elementwise
// step, then dh_{s-1} = dA W_hh on pre-packed weights.
// Cells provide (see lstm.cpp): NV, kSplitInput (a product with x_t keeps the x and h
// sums apart), units(), column(), forward_epilogue(), backward_row().
#pragma once
#include <type_traits>
#include <vector>
#include "cell_common.h"
#include "common.h"
#include "gemm.h"
#include "threading_kernel.h"

namespace rnnfast {
namespace RF_NS {

template <typename T, class Cell>
long recurrent_packed_size(int in_size, int H) {
  constexpr int NR = Cell::NV * Simd<T>::W;
  const long np = (H + Cell::template units<T>() - 1) / Cell::template units<T>();
  return np * (long)(in_size + H) * NR;
}

// [W_ih | W_hh]^T ((in+H) x G*H) packed into panels of K = in + H rows; panel p, vector v,
// lane u holds the column Cell::column(p, v, u, H) (zero past H). A step with an input
// projection already done multiplies h by the last H rows of each panel only.
template <typename T, class Cell>
void recurrent_pack(T* dst, const T* w_ih, int in_size, const T* w_hh, int H) {
  constexpr int W = Simd<T>::W, NV = Cell::NV, NR = NV * W;
  const long np = (H + Cell::template units<T>() - 1) / Cell::template units<T>();
  const long K = in_size + H;
  for (long p = 0; p < np; ++p)
    for (long k = 0; k < K; ++k)
      for (int v = 0; v < NV; ++v)
        for (int u = 0; u < W; ++u) {
          const long col = Cell::template column<T>(p, v, u, H);
          T val = T(0);
          if (col >= 0) val = k < in_size ? w_ih[col * in_size + k] : w_hh[col * H + k - in_size];
          dst[(p * K + k) * NR + v * W + u] = val;
        }
}

// Register tiles of the recurrent product: MR rows times NVK vectors per pass. A
// 4-vector panel on 16 registers goes in two passes of 6 x 2 (12 accumulators, 8 loads
// per 12 FMAs) rather than one of 3 x 4 (12 accumulators but 17 registers, so 3
// FMAs read memory): mid LSTM inference 67.4 -> 64.2 ms on 2 cores.
template <int NV>
struct RecurrentTile {
#if defined(RF_ISA_avx512)
  static constexpr int NVK = NV;
#else
  static constexpr int NVK = NV == 4 ? 2 : NV;
#endif
  static constexpr int MR = MicroRows<NVK>::MR;
};

// acc += rows (MR x K) times the panel (K x NV vectors), NVK vectors per pass.
template <typename T, int MR, int NV, int NVK>
static inline void tile_product_add(int K, const T* const* rows, const T* panel,
                                    typename Simd<T>::V (&acc)[MR][NV]) {
  typedef typename Simd<T>::V V;
  if constexpr (NVK == NV) {
    micro_kernel_add<T, MR, NV>(K, rows, 1, panel, acc);
  } else {
    for (int h = 0; h < NV; h += NVK) {
      V part[MR][NVK];
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NVK; ++v) part[r][v] = acc[r][h + v];
      micro_kernel_add<T, MR, NVK, NV>(K, rows, 1, panel + h * Simd<T>::W, part);
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NVK; ++v) acc[r][h + v] = part[r][v];
    }
  }
}

// Bytes of a panel's K block that stay in L1 while every row block passes over it.
constexpr int kPanelBlockBytes = 16384;

// The time loop. A task is one panel times one block of MR batch rows, or, when the
// panel outgrows L1 and several row blocks share it, the panel times all row blocks,
// K block by K block with partial sums kept per row block (LSTM inference: mid 69.6 ->
// 67.4 ms, charrnn 42.4 -> 40.7 ms on 2 cores).
template <typename T, class Cell, int MR, int NVK, int MRR>
void recurrent_forward_tasks(const LayerFwd<T>& a, int nt, int npanels) {
  typedef typename Simd<T>::V V;
  constexpr int NV = Cell::NV, NR = NV * Simd<T>::W;
  constexpr int KC = kPanelBlockBytes / (NR * (int)sizeof(T));
  const int B = a.batch, H = a.hidden, I = a.in_size;
  const long BH = (long)B * H, panel_stride = (long)(I + H) * NR;
  const bool fused = a.x != nullptr;
  const bool split = fused && Cell::kSplitInput;
  // Row blocks: nfull tiles of MR rows, then the rest in tiles of MRR rows (MRR 0: the last
  // MR tile covers the rest, computing rows it does not store).
  const int nfull = MRR ? B / MR : (B + MR - 1) / MR;
  const int mblocks = nfull + (MRR ? (B - nfull * MR + MRR - 1) / (MRR ? MRR : 1) : 0);
  const bool kblocked = MR > 1 && mblocks > 1 && (H > KC || (fused && I > KC));
  const int ntasks = kblocked ? npanels : npanels * mblocks;
  const size_t tile = (size_t)MR * NV;  // partial sums per row block (MRR <= MR)
  // f(rows-per-tile constant, first row) for row block ib
  auto with_block = [&](int ib, auto&& f) {
    if (ib < nfull)
      f(std::integral_constant<int, MR>(), ib * MR);
    else if constexpr (MRR > 0)
      f(std::integral_constant<int, MRR>(), nfull * MR + (ib - nfull) * MRR);
  };
  rf_parallel(nt, [&] {
    RF_FLUSH_DENORMALS_SCOPE;
    std::vector<V> partial(kblocked ? mblocks * tile : 0);
    std::vector<V> xpartial(kblocked && split ? mblocks * tile : 0);
    for (int s = 0; s < a.steps; ++s) {
      const long in = a.keep_all ? s : (s & 1), out = a.keep_all ? s + 1 : ((s + 1) & 1);
      const T* h_prev = a.hs + in * BH;
      T* h_new = a.hs + out * BH;
      const T* c_prev = a.cs ? a.cs + in * BH : nullptr;
      T* c_new = a.cs ? a.cs + out * BH : nullptr;
      const int32_t* tid = a.tidx + (long)s * B;
      // Row pointers of a tile at i0 (rows past B repeat the first); -> valid rows.
      auto h_rows = [&](int i0, auto& rows) {
        constexpr int R = std::extent<std::remove_reference_t<decltype(rows)>>::value;
        const int mr = B - i0 < R ? B - i0 : R;
        for (int r = 0; r < R; ++r) rows[r] = h_prev + (long)(i0 + (r < mr ? r : 0)) * H;
        return mr;
      };
      auto x_rows = [&](int i0, auto& rows) {
        constexpr int R = std::extent<std::remove_reference_t<decltype(rows)>>::value;
        const int mr = B - i0 < R ? B - i0 : R;
        for (int r = 0; r < R; ++r) {
          const int b = i0 + (r < mr ? r : 0);
          const long t = tid[b] < 0 ? 0 : tid[b];  // a frozen row computes, unstored
          rows[r] = a.x + (t * B + b) * I;
        }
      };
      // acc += rows (R x k) times k rows of a panel: R-row tiles in NVK- or NV-vector passes.
      auto product = [&](int k, auto& rows, const T* bp, auto& acc) {
        constexpr int R = std::extent<std::remove_reference_t<decltype(rows)>>::value;
        if constexpr (R == 1)
          row_kernel_add<T, NV>(k, rows[0], bp, acc);
        else
          tile_product_add<T, R, NV, R == MR ? NVK : NV>(k, rows, bp, acc);
      };
      // keep (one tile in memory) += rows times a K block of the panel; fresh: from zero
      auto block = [&](V* keep, bool fresh, int kc, auto& rows, const T* bp) {
        constexpr int R = std::extent<std::remove_reference_t<decltype(rows)>>::value;
        V acc[R][NV];  // in registers; partial sums go through memory between blocks
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < NV; ++v) acc[r][v] = fresh ? V{} : keep[r * NV + v];
        product(kc, rows, bp, acc);
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < NV; ++v) keep[r * NV + v] = acc[r][v];
      };
#pragma omp for schedule(static)
      for (int task = 0; task < ntasks; ++task) {
        const int p = kblocked ? task : task / mblocks;
        const T* panel = a.packed + p * panel_stride;  // x rows, then h rows
        const T* hpanel = panel + (long)I * NR;
        int k0 = 0;          // the K block of the h rows the epilogue pass starts at
        bool xdone = false;  // the x part is summed in partial (xpartial for GRU)
        if (kblocked) {
          if (fused) {
            V* xkeep = split ? xpartial.data() : partial.data();
            for (int kx = 0; kx < I; kx += KC)
              for (int ib = 0; ib < mblocks; ++ib)
                with_block(ib, [&](auto R_c, int i0) {
                  const T* rows[decltype(R_c)::value];
                  x_rows(i0, rows);
                  for (const T*& r : rows) r += kx;
                  block(xkeep + ib * tile, kx == 0, I - kx < KC ? I - kx : KC, rows,
                        panel + (long)kx * NR);
                });
            xdone = true;
          }
          const bool hfresh = !xdone || split;
          for (; k0 + KC < H; k0 += KC)
            for (int ib = 0; ib < mblocks; ++ib)
              with_block(ib, [&](auto R_c, int i0) {
                const T* rows[decltype(R_c)::value];
                h_rows(i0, rows);
                for (const T*& r : rows) r += k0;
                block(partial.data() + ib * tile, k0 == 0 && hfresh, KC, rows,
                      hpanel + (long)k0 * NR);
              });
        }
        const int ib0 = kblocked ? 0 : task % mblocks, ib1 = kblocked ? mblocks : ib0 + 1;
        for (int ib = ib0; ib < ib1; ++ib)
          with_block(ib, [&](auto R_c, int i0) {
            constexpr int R = decltype(R_c)::value;
            const T* rows[R];
            const int mr = h_rows(i0, rows);
            V acc[R][NV], xacc[R][NV];
            if (k0 > 0 || (xdone && !split)) {  // the last K block onto the partial sums
              for (int r = 0; r < R; ++r)
                for (int v = 0; v < NV; ++v) acc[r][v] = partial[ib * tile + r * NV + v];
            } else {
              zero_tile<T, R, NV>(acc);
            }
            for (const T*& r : rows) r += k0;
            if (fused && xdone && split) {
              for (int r = 0; r < R; ++r)
                for (int v = 0; v < NV; ++v) xacc[r][v] = xpartial[ib * tile + r * NV + v];
            } else if (fused && !xdone) {  // x_t W_ih^T: into acc, or apart in xacc (GRU)
              const T* xrows[R];
              x_rows(i0, xrows);
              if (split) zero_tile<T, R, NV>(xacc);
              if (split)
                product(I, xrows, panel, xacc);
              else
                product(I, xrows, panel, acc);
            }
            product(H - k0, rows, hpanel + (long)k0 * NR, acc);
            FwdRows<T> io[R];
            int live = -1;  // a row that steps; rows that don't get no stores
            for (int r = 0; r < R; ++r) {
              io[r] = FwdRows<T>();
              if (r >= mr) continue;
              const int b = i0 + r;
              const long t = tid[b];
              const long row = b * (long)H;
              if (t < 0) {  // past this sequence's end: state frozen
                const int u0 = p * Cell::template units<T>();
                const int n =
                    H - u0 < Cell::template units<T>() ? H - u0 : Cell::template units<T>();
                freeze_units(u0, n, h_prev + row, h_new + row, c_prev ? c_prev + row : nullptr,
                             c_new ? c_new + row : nullptr);
                continue;
              }
              live = r;
              io[r].x = a.xproj + (t * B + b) * a.ldx;
              io[r].h_prev = h_prev + row;
              io[r].h_new = h_new + row;
              io[r].c_prev = c_prev ? c_prev + row : nullptr;
              io[r].c_new = c_new ? c_new + row : nullptr;
              io[r].y = a.y ? a.y + t * B * a.ldy + b * a.ldy : nullptr;
              io[r].cache =
                  a.cache ? a.cache + ((long)s * B + b) * cell_cache_width(a.cell) * H : nullptr;
              io[r].b_hn = a.b_hn;
            }
            if (live < 0) return;
            for (int r = 0; r < R; ++r)
              if (!io[r].h_new) {  // computed alongside from a live row's inputs, not stored
                io[r].x = io[live].x;
                io[r].h_prev = io[live].h_prev;
                io[r].c_prev = io[live].c_prev;
                io[r].b_hn = a.b_hn;
              }
            Cell::template forward_epilogue<T, R>(a.cell, p, H, acc, split ? xacc : nullptr, io);
          });
      }
    }
  });
}

template <typename T, class Cell>
void recurrent_forward(const LayerFwd<T>& a, int nthreads) {
  constexpr int NV = Cell::NV;
  constexpr int MR = RecurrentTile<NV>::MR, NVK = RecurrentTile<NV>::NVK;
  const int B = a.batch, H = a.hidden, G = cell_gates(a.cell);
  const int npanels = (H + Cell::template units<T>() - 1) / Cell::template units<T>();
  const int mblocks = (B + MR - 1) / MR;
  const int K = a.x ? a.in_size + H : H;
  int nt = rf_threads_for(nthreads, rf_step_work(B, (long)G * H, K));
  if (nt > npanels * mblocks) nt = npanels * mblocks;
  // Cost per computed row (measured on AVX2, LSTM): two-pass 6-row tiles 1, one-pass 3-row
  // tiles 1.13, 2-row tiles 2.4 (few rows to share each loaded weight vector). Of: 6-row
  // tiles padding the last one, 6-row tiles and the rest in 2-row tiles, 3-row tiles, the
  // cheapest runs (B = 8: 3-row; B = 32: 6 + 2; B = 64: 6, padded).
  constexpr int MR1 = MicroRows<NV>::MR;
  const double padded = (B + MR - 1) / MR * MR;
  const double mixed = B / MR * MR + 2.4 * ((B % MR + 1) / 2 * 2);
  const double small = 1.13 * ((B + MR1 - 1) / MR1 * MR1);
  if (B == 1)
    recurrent_forward_tasks<T, Cell, 1, NV, 0>(a, nt, npanels);
  else if (NVK == NV)
    recurrent_forward_tasks<T, Cell, MR, NVK, 0>(a, nt, npanels);
  else if (small < padded && small < mixed)
    recurrent_forward_tasks<T, Cell, MR1, NV, 0>(a, nt, npanels);
  else if (mixed < padded)
    recurrent_forward_tasks<T, Cell, MR, NVK, 2>(a, nt, npanels);
  else
    recurrent_forward_tasks<T, Cell, MR, NVK, 0>(a, nt, npanels);
}

template <typename T, class Cell>
void recurrent_backward(const LayerBwd<T>& a, int nthreads) {
  const int B = a.batch, H = a.hidden, G = cell_gates(a.cell);
  const long BH = (long)B * H, GH = (long)G * H;
  int nt = rf_threads_for(nthreads, rf_step_work(B, (long)G * H, H));
  T* direct = a.direct;
  rf_parallel(nt, [&] {
    RF_FLUSH_DENORMALS_SCOPE;
    for (int s = a.steps - 1; s >= 0; --s) {
      const int32_t* tid = a.tidx + (long)s * B;
#pragma omp for schedule(static)
      for (int b = 0; b < B; ++b) {
        const long t = tid[b];
        T* dah = a.da_hh + ((long)s * B + b) * GH;
        if (t < 0) {  // frozen step: the gradient passes through unchanged
          for (long j = 0; j < GH; ++j) dah[j] = T(0);
          for (int j = 0; j < H; ++j) direct[b * H + j] = a.dh[b * H + j];
          continue;
        }
        BwdRows<T> io;
        io.dy = a.dy ? a.dy + t * B * a.ldy + b * a.ldy : nullptr;
        io.dh = a.dh + b * H;
        io.dc = a.dc ? a.dc + b * H : nullptr;
        io.h_prev = a.hs + s * BH + b * H;
        io.h_new = a.hs + (s + 1) * BH + b * H;
        io.c_prev = a.cs ? a.cs + s * BH + b * H : nullptr;
        io.cache = a.cache ? a.cache + ((long)s * B + b) * cell_cache_width(a.cell) * H : nullptr;
        io.da_hh = dah;
        io.da_ih = a.da_ih == a.da_hh ? nullptr : a.da_ih + (t * B + b) * GH;
        io.direct = direct + b * H;
        Cell::template backward_row<T>(a.cell, H, io);
      }
      // dh_{s-1} = dA_s W_hh + direct  (implicit barriers around both phases)
      gemm_prepacked<T>(B, H, (int)GH, a.da_hh + (long)s * B * GH, GH, a.packed_whh_t, a.dh, H,
                        direct, H);
    }
  });
}

// Defines and instantiates a cell's entry points (kernels.h) from its Cell type.
#define RF_DEFINE_CELL(name, Cell)                                                             \
  template <typename T>                                                                        \
  long name##_packed_size(int in_size, int H) {                                                \
    return recurrent_packed_size<T, Cell>(in_size, H);                                         \
  }                                                                                            \
  template <typename T>                                                                        \
  void name##_pack(T* dst, const T* w_ih, int in_size, const T* w_hh, int H) {                 \
    recurrent_pack<T, Cell>(dst, w_ih, in_size, w_hh, H);                                      \
  }                                                                                            \
  template <typename T>                                                                        \
  void name##_forward(const LayerFwd<T>& a, int nt) {                                          \
    recurrent_forward<T, Cell>(a, nt);                                                         \
  }                                                                                            \
  template <typename T>                                                                        \
  void name##_backward(const LayerBwd<T>& a, int nt) {                                         \
    recurrent_backward<T, Cell>(a, nt);                                                        \
  }                                                                                            \
  RF_INSTANTIATE_CELL(name, float)                                                             \
  RF_INSTANTIATE_CELL(name, double)

}  // namespace RF_NS
}  // namespace rnnfast
