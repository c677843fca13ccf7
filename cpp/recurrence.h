// The time loop shared by every cell. Per step, one fused kernel: the recurrent
// product h_{s-1} W_hh^T (plus x_t W_ih^T for layers whose input product runs in the
// loop) on weights packed once (one panel = the gate columns of a block of hidden
// units), then the cell's epilogue in registers. Backward runs the cell's elementwise
// step, then dh_{s-1} = dA W_hh on pre-packed weights.
// Cells provide (see lstm.cpp): NV, kSplitInput (a product with x_t keeps the x and h
// sums apart), units(), column(), forward_epilogue<T, R, Full>() (Full: every unit of the
// panel is below H), backward_row().
#pragma once
#include <algorithm>
#include <optional>
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

// Register tiles of the recurrent product: MR rows times NVK vectors per pass. A
// 4-vector panel on 16 registers goes in two passes of 6 x 2 (12 accumulators, 8 loads
// per 12 FMAs) rather than one of 3 x 4 (12 accumulators but 17 registers, so 3
// FMAs read memory): mid LSTM inference 67.4 -> 64.2 ms on 2 cores.
// LR rows: the shorter one-pass tile over all NV vectors, taken where the MR tiles would
// pad enough rows to pay its higher cost per row, kLowCost (recurrent_forward).
template <int NV>
struct RecurrentTile {
#if defined(RF_ISA_avx512)
  static constexpr int NVK = NV;
  static constexpr int LR = 4;
  static constexpr double kLowCost = 1.1;
#else
  static constexpr int NVK = NV == 4 ? 2 : NV;
  static constexpr int LR = MicroRows<NV>::MR;
  static constexpr double kLowCost = 1.05;
#endif
  static constexpr int MR = MicroRows<NVK>::MR;
};

// Bytes of a slice's K block that stay in L1 while every row block passes over it (AVX2:
// 2-vector slices, so 16 KiB spans 256 rows of K). AVX-512 does not block K: on Zen 5
// (48 KiB L1, 1 MiB L2) each tile streaming its panel's whole K from L2, sums in registers,
// beat 32 KiB blocks (alternating rounds, inference: charrnn LSTM -3.4%, mid LSTM -4.3%,
// large LSTM -4.2%, large GRU -6.7%; 32 KiB had beaten 16 and 48 KiB blocks).
#if defined(RF_ISA_avx512)
constexpr bool kBlockK = false;
#else
constexpr bool kBlockK = true;
#endif
constexpr int kPanelBlockBytes = 16384;

// The last panel, where H leaves it partial, packed compact where a panel is one slice and
// K is not blocked (AVX-512): its `cv` vectors, read as one run of cv * W lanes, hold lanes
// [0, s) of vector v at [v s, v s + s), s the fewest lanes (a power of 2) that hold every
// unit of a vector. Its tiles compute cv vectors where a full panel's compute NV, and
// spread them over NV before the epilogue (spread_compact). LSTM H = 100: the last panel's
// 4 units of each gate in 1 vector, not 4.
template <int NV>
constexpr bool kCompactLast = RecurrentTile<NV>::NVK == NV && !kBlockK;
struct CompactPanel {
  int s = 0, cv = 0;  // cv = 0: not compact
};
template <typename T, class Cell>
CompactPanel compact_last(int H) {
  constexpr int W = Simd<T>::W, NV = Cell::NV, U = Cell::template units<T>();
  const int left = H - (H + U - 1) / U * U + U;  // units in the last panel
  if (!kCompactLast<NV> || left == U) return {};
  CompactPanel c;
  if constexpr (U == W) {  // vector v: gate v of the panel's units
    for (c.s = 1; c.s < left;) c.s *= 2;
    c.cv = ((NV - 1) * c.s + left + W - 1) / W;
  } else {  // vector v: units [v W, v W + W) of the panel
    c.s = W, c.cv = (left + W - 1) / W;
  }
  if (c.cv >= NV) return {};
  return c;
}

// [W_ih | W_hh]^T ((in+H) x G*H) packed into panels of K = in + H rows, each panel in
// slices of NVK vectors (one slice per pass of the tile, K x NVK vectors contiguous);
// vector v, lane u of panel p holds the column Cell::column(p, v, u, H) (zero past H).
// A step with an input projection already done uses the last H rows of each slice only.
// A compact last panel (compact_last) is K x cv vectors.
template <typename T, class Cell>
void recurrent_pack(T* dst, const T* w_ih, int in_size, const T* w_hh, int H) {
  constexpr int W = Simd<T>::W, NV = Cell::NV, NR = NV * W;
  constexpr int LV = RecurrentTile<NV>::NVK;
  const long np = (H + Cell::template units<T>() - 1) / Cell::template units<T>();
  const long K = in_size + H;
  const CompactPanel c = compact_last<T, Cell>(H);
  for (long p = 0; p < np; ++p) {
    T* panel = dst + p * K * NR;
    if (c.cv && p == np - 1) std::fill(panel, panel + K * c.cv * W, T(0));
    for (int v = 0; v < NV; ++v)
      for (long k = 0; k < K; ++k)
        for (int u = 0; u < W; ++u) {
          const long col = Cell::template column<T>(p, v, u, H);
          T val = T(0);
          if (col >= 0) val = k < in_size ? w_ih[col * in_size + k] : w_hh[col * H + k - in_size];
          if (!c.cv || p < np - 1)
            panel[(v / LV) * K * LV * W + (k * LV + v % LV) * W + u] = val;
          else if (u < c.s && col >= 0)
            panel[k * c.cv * W + v * c.s + u] = val;
        }
  }
}

// Sums of a compact panel's tile (R x CV) spread over the NV vectors of a full one's: lanes
// [v s, v s + s) to lanes [0, s) of vector v. Lanes past s get other sums: they stand for
// units past H, which the epilogue does not store.
template <typename T, int R, int CV, int NV>
static inline __attribute__((always_inline)) void spread_compact(
    const typename Simd<T>::V* csums, typename Simd<T>::V* sums, int s) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  for (int v = 0; v < NV; ++v) {
    const int from = v * s / W, shift = v * s % W;
    for (int r = 0; r < R; ++r)
      sums[r * NV + v] = from >= CV ? V{}
                         : shift    ? rotate_lanes<T>(csums[r * CV + from], shift)
                                    : csums[r * CV + from];
  }
}

// sums (R rows of ld vectors; the first NV of each) = (fresh ? 0 : sums) + rows (R x n)
// times the panel rows at bp, then + rows2 (R x n2) times those at bp2 (NV vectors in
// slices of NVS, ss apart). The sums go through memory between passes: kept in registers
// from pass to pass (x rows, then h rows) they left GCC short of registers for the row
// pointers, reloaded from the stack per broadcast (charrnn LSTM layer 1 ran 5% slower).
template <typename T, int R, int NV, int NVS>
static inline __attribute__((always_inline)) void tile_pass(
    typename Simd<T>::V* sums, int ld, bool fresh, long ss, int n, const T* const* rows,
    const T* bp, int n2, const T* const* rows2, const T* bp2, bool far = false) {
  typedef typename Simd<T>::V V;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = fresh ? V{} : sums[r * ld + v];
  if constexpr (R == 1) {
    auto add = [&](auto pf) __attribute__((always_inline)) {
      row_kernel_add<T, NV, NVS, decltype(pf)::value>(n, rows[0], bp, acc, ss);
      if (n2) row_kernel_add<T, NV, NVS, decltype(pf)::value>(n2, rows2[0], bp2, acc, ss);
    };
    if (far)
      add(std::true_type());
    else
      add(std::false_type());
  } else {
    micro_kernel_add<T, R, NV, NVS>(n, rows, 1, bp, acc, ss);
    if (n2) micro_kernel_add<T, R, NV, NVS>(n2, rows2, 1, bp2, acc, ss);
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) sums[r * ld + v] = acc[r][v];
}

// Row tiles of B rows, of heights from hi down to lo (every height between, one kind of
// pass): the fewest tiles, as even as they go, the first `extra` one row taller. Where B
// rows fall short of n tiles of lo rows, n tiles of lo rows, the last one padded. The
// lowest height costs `low_cost` times as much a row where it is `low` (AVX-512's 4 x NV
// one-pass tile against its 6 x 4 and 8 x 3 ones). Fewer or taller tiles never compute
// fewer rows, nor do shorter ones at a lower cost: AVX-512 LSTM B = 13 as 5 + 4 + 4, not
// 6 + 6 + 5 with 4 rows of padding (one thread, I 256 H 256: 1.37x B = 12's time ->
// 1.12x); AVX-512 GRU (8 down to 4 rows) B = 5 as one 5-row tile, not 7 with 2 padded.
struct TilePlan {
  int n = 0, base = 0, extra = 0;  // n tiles: `extra` of base + 1 rows, then base rows
  int rows = 0;                    // computed, padding included
  double cost = 0;                 // rows, those of `low` tiles weighted
  int tiles() const { return n; }
  int height(int i) const { return i < extra ? base + 1 : base; }
};
static inline TilePlan plan_tiles(int B, int hi, int lo, int low, double low_cost) {
  TilePlan p;
  p.n = (B + hi - 1) / hi;
  if (p.n == 0) return p;
  p.base = B / p.n, p.extra = B % p.n;
  if (p.base < lo) p.base = lo, p.extra = 0;
  p.rows = p.n * p.base + p.extra;
  p.cost = p.rows + (p.base == low ? (low_cost - 1) * (p.n - p.extra) * low : 0);
  return p;
}

// Calls f(integral_constant<int, n>) for n in [LO, HI].
template <int HI, int LO, class F>
static inline __attribute__((always_inline)) void with_constant(int n, F&& f) {
  if constexpr (HI > LO) {
    if (n != HI) return with_constant<HI - 1, LO>(n, f);
  }
  f(std::integral_constant<int, HI>());
}

// A thread's step split by rows (FLOPs of its product) from which a thread done with its
// rows helps with another's (HelpedRuns), forward and backward: a joint step's hand-offs
// cost ~1 us. RNN `small` (0.16 MFLOP, ~1.3 us) ran 6% slower helped; LSTM and GRU `small`
// (0.66 and 0.49) faster (cpp/README.md, twenty-third session).
constexpr double kHelpFlops = 0.3e6;

// Rows a thread may take beyond an equal share and still split a step by rows, in FLOPs:
// about what a step's barrier and its h lines from the other core cost.
constexpr double kRowSlackFlops = 40e3;

// The time loop. A task is one panel times one tile of batch rows, or (where K is blocked,
// see kBlockK) when the panel outgrows L1 and several row tiles share it, the panel times
// all row tiles, K block by K block with partial sums in memory (AVX2 LSTM inference: mid
// 69.6 -> 67.4 ms, charrnn 42.4 -> 40.7 ms on 2 cores). A pass covers PV vectors of a
// panel: one slice, or all slices at once when PV = NV. The cell's epilogue follows a
// tile's last pass. Row tiles are MR down to LO rows high.
template <typename T, class Cell, int MR, int PV, int LO>
void recurrent_forward_tasks(const LayerFwd<T>& a, int nt, int npanels, bool by_rows) {
  typedef typename Simd<T>::V V;
  constexpr int NV = Cell::NV, W = Simd<T>::W, LV = RecurrentTile<NV>::NVK, NP = NV / PV;
  constexpr int KC = kPanelBlockBytes / (PV * W * (int)sizeof(T));
  const int B = a.batch, H = a.hidden, I = a.in_size;
  const long LB = a.ldb, BH = LB * H, ss = (long)(I + H) * LV * W, panel_stride = ss * (NV / LV);
  const bool fused = a.x != nullptr;
  const bool split = fused && Cell::kSplitInput;
  // A compact last panel (compact_last) where a pass covers the whole panel
  constexpr bool kCompact = kCompactLast<NV> && PV == NV;
  const CompactPanel compact = kCompact ? compact_last<T, Cell>(H) : CompactPanel();
  // Row tiles (plan_tiles) over all B rows, or by rows over each of nt ranges of B / nt
  // rows (range id's first tile is range_tile[id]), so that every range gets tiles of each
  // height alike. All B rows tiled at once gave AVX-512 LSTM at B = 32 ranges of 17 and 15
  // rows, so LR tiles ran instead, 7% slower a row than 6 + 5 + 5 (one thread, I 64, H 256).
  struct RowTile {
    int i0, end;  // rows [i0, i0 + rows), those below end real
    int rows;
  };
  const int ranges = by_rows ? nt : 1;
  auto plan_of = [&](int id) {
    return plan_tiles(rf_share(B, id + 1, ranges) - rf_share(B, id, ranges), MR, LO, 0, 1);
  };
  int mblocks = 0;
  for (int id = 0; id < ranges; ++id) mblocks += plan_of(id).tiles();
  // Small buffers on the stack (no allocation for a stream's step)
  constexpr int kLocal = 32;
  RowTile local_tiles[kLocal];
  int local_ranges[kLocal + 1];
  std::vector<RowTile> heap_tiles(mblocks > kLocal ? mblocks : 0);
  std::vector<int> heap_ranges(ranges > kLocal ? ranges + 1 : 0);
  RowTile* const row_tiles = mblocks > kLocal ? heap_tiles.data() : local_tiles;
  int* const range_tile = ranges > kLocal ? heap_ranges.data() : local_ranges;
  for (int id = 0, ib = 0; id < ranges; ++id) {
    const TilePlan plan = plan_of(id);
    const int r1 = rf_share(B, id + 1, ranges);
    range_tile[id] = ib;
    for (int n = 0, i0 = rf_share(B, id, ranges); n < plan.n; i0 += plan.height(n++), ++ib)
      row_tiles[ib] = {i0, r1, plan.height(n)};
  }
  range_tile[ranges] = mblocks;
  // Blocked when several tiles share a panel (all passes) of more than 1.5 kPanelBlockBytes
  // (small LSTM, 20 KiB panels, one thread: 1.23 ms blocked, 1.16 not).
  const long panel_bytes = (long)((fused ? I : 0) + H) * NV * W * sizeof(T);
  const bool kblocked =
      kBlockK && !by_rows && MR > 1 && mblocks > 1 && panel_bytes > kPanelBlockBytes * 3 / 2;
  const int ntasks = kblocked ? npanels : npanels * mblocks;
  if (by_rows) note_row_sweep();
  const bool prefetch = (double)npanels * panel_stride * sizeof(T) > (8 << 20);
  // Batch 1 reads each weight once: beyond the cores' L2 (over 4 MiB), ahead of use where
  // that helps (far_prefetch).
  const bool far = MR == 1 && (double)npanels * panel_bytes > (4 << 20) && far_prefetch();
  const size_t tile = (size_t)MR * NV;  // partial sums per row tile (the tallest)
  // f(rows-per-tile constant, first row, end of its real rows) for row tile ib
  auto with_block = [&](int ib, auto&& f) {
    const RowTile& t = row_tiles[ib];
    with_constant<MR, LO>(t.rows, [&](auto R_c) { f(R_c, t.i0, t.end); });
  };
  // Several row tiles and steps: a thread done with its share of a step takes the other's
  // last tasks (StealShares). Not for batch 1 (a stolen panel is read from the other
  // core's cache for one row: RNN-256/512 streams 5-9% slower) nor by rows (no barrier).
  std::optional<StealShares> shares;
  if (!by_rows && nt > 1 && MR > 1 && a.steps - a.s0 > 1) shares.emplace(nt);
  StealShares* const steal = shares ? &*shares : nullptr;
  // By rows: a thread done with its rows helps the others with theirs (HelpedRuns), where
  // a thread's step is worth sharing: a joint step's hand-offs cost ~1 us.
  std::optional<HelpedRuns> helping;
  const double row_step_flops = 2.0 * B / nt * npanels * NV * W * ((fused ? I : 0) + H);
  if (by_rows) helping.emplace(nt, row_step_flops >= kHelpFlops);
  HelpedRuns* const helped = helping ? &*helping : nullptr;
  // Tasks split statically (not by rows, no stealing): the threads' runs sized by a
  // PanelSplit, and timed for it. One step (a stream's): a.split, on each thread's start
  // lag and time; a sequence (batch 1): a.seq_split, on each thread's time in its runs (a
  // barrier a step, so no lag). A team cut below nt (other teams hold CPUs) takes equal
  // runs, untimed.
  constexpr int kSplitMax = PanelSplit::kMaxThreads;
  const bool one_step = a.steps - a.s0 == 1;
  PanelSplit* const sizer = by_rows || steal ? nullptr : (one_step ? a.split : a.seq_split);
  const bool sized = sizer && nt > 1 && nt <= kSplitMax;
  int runs[kSplitMax + 1];
  double lag[kSplitMax], busy[kSplitMax];
  int timed_team = 0;
  if (sized) sizer->runs(ntasks, nt, runs);
  const double call_start = sized ? rf_ticks() : 0;
  rf_parallel(nt, [&] {
    RF_FLUSH_DENORMALS_SCOPE;
    std::vector<V> heap(kblocked ? (split ? 2 : 1) * mblocks * tile : 0);
    V* partial = heap.data();
    V* xpartial = kblocked && split ? partial + mblocks * tile : nullptr;
    // Task j of step s: over all row tiles, or (by_rows) over the nib row tiles from ib0.
    auto task_at = [&](int s, int ib0, int nib, int j) {
      const long in = a.keep_all ? s : (s & 1), out = a.keep_all ? s + 1 : ((s + 1) & 1);
      const T* h_prev = a.hs + in * BH;
      T* h_new = a.hs + out * BH;
      const T* c_prev = a.cs ? a.cs + (a.c_in_place ? 0 : in * BH) : nullptr;
      T* c_new = a.cs ? a.cs + (a.c_in_place ? 0 : out * BH) : nullptr;
      const int32_t* tid = a.tidx + (long)s * LB;
      // Row pointers of a tile at i0, from column k0 of x (xsrc) or h (rows from end on
      // repeat the first); -> valid rows.
      auto tile_rows = [&](bool xsrc, int i0, int end, int k0, auto& rows) {
        constexpr int R = std::extent<std::remove_reference_t<decltype(rows)>>::value;
        const int mr = end - i0 < R ? end - i0 : R;
        for (int r = 0; r < R; ++r) {
          const int b = i0 + (r < mr ? r : 0);
          if (xsrc) {
            rows[r] = a.x + row_at(a.xo, tid[b], b) * I + k0;
          } else {
            rows[r] = h_prev + (long)b * H + k0;
          }
        }
        return mr;
      };
      // Pass h of the tile with sums at `sums` (R x NV): its PV vectors (from zero when
      // fresh) += rows (R x n) times slice rows [k, k + n) (x rows, then h rows), then
      // rows2 times slice rows [k2, k2 + n2).
      auto pass = [&](auto R_c, V* sums, bool fresh, const T* panel, int h, int n,
                      const T* const* rows, long k, int n2 = 0, const T* const* rows2 = nullptr,
                      long k2 = 0) {
        constexpr int R = decltype(R_c)::value;
        const T* bp = panel + h * ss;
        tile_pass<T, R, PV, LV>(sums + h * PV, NV, fresh, ss, n, rows, bp + k * LV * W, n2,
                                rows2, bp + k2 * LV * W, far);
      };
      // The epilogue of a tile (R rows at i0, those below end real) from its sums.
      auto finish = [&](auto R_c, int p, int i0, int end, const V* sums, const V* xsums) {
        constexpr int R = decltype(R_c)::value;
        const int mr = end - i0 < R ? end - i0 : R;
        V acc[R][NV], xacc[R][NV];
        for (int r = 0; r < R; ++r)
          for (int v = 0; v < NV; ++v) {
            acc[r][v] = sums[r * NV + v];
            xacc[r][v] = split ? xsums[r * NV + v] : V{};
          }
        FwdRows<T> io[R];
        for (int r = 0; r < R; ++r) {
          io[r] = FwdRows<T>();
          if (r >= mr) continue;
          const int b = i0 + r;
          const long t = tid[b];
          const long row = b * (long)H;
          io[r].x = a.xproj + (a.xrow ? a.xrow[t * LB + b] : row_at(a.xo, t, b)) * a.ldx;
          io[r].h_prev = h_prev + row;
          io[r].h_new = h_new + row;
          io[r].c_prev = c_prev ? c_prev + row : nullptr;
          io[r].c_new = c_new ? c_new + row : nullptr;
          io[r].y = a.y ? a.y + row_at(a.yo, t, b) * a.ldy : nullptr;
          io[r].cache =
              a.cache ? a.cache + ((long)s * LB + b) * cell_cache_width(a.cell) * H : nullptr;
          io[r].cache_stream = a.cache_stream;
          io[r].b_hn = a.b_hn;
        }
        for (int r = mr; r < R; ++r) {  // padding: computed alongside from row 0, not stored
          io[r].x = io[0].x;
          io[r].h_prev = io[0].h_prev;
          io[r].c_prev = io[0].c_prev;
          io[r].b_hn = a.b_hn;
        }
        // Full panels (all but maybe the last) load and store whole vectors, no lane checks.
        const V(*xa)[NV] = split ? xacc : nullptr;
        if ((p + 1) * Cell::template units<T>() <= H)
          Cell::template forward_epilogue<T, R, true>(a.cell, p, H, acc, xa, io);
        else
          Cell::template forward_epilogue<T, R, false>(a.cell, p, H, acc, xa, io);
      };
      // Walked in order or in reverse by the parity of s + a.parity, so each step runs
      // opposite to the one before: going back over its panels first finds the ones it read
      // last still in L2, where a walk in one direction over weights about the size of L2
      // would miss throughout (the least recently used lines are the next ones needed).
      const bool reverse = (s + a.parity) & 1;
      if (by_rows) j = reverse ? npanels * nib - 1 - j : j;
      const int task = by_rows ? (j / nib) * mblocks + ib0 + j % nib : j;
      const int p = kblocked ? task : task / mblocks;
      const T* panel = a.packed + p * panel_stride;  // per slice: x rows, then h rows
      if (!kblocked) {  // one tile, all of K per pass
        with_block(task % mblocks, [&](auto R_c, int i0, int end) {
          constexpr int R = decltype(R_c)::value;
          V sums[R * NV], xsums[R * NV];
          const T *xr[R], *hr[R];
          tile_rows(false, i0, end, 0, hr);
          if (fused) tile_rows(true, i0, end, 0, xr);
          if constexpr (kCompact) {
            if (compact.cv && p == npanels - 1) {  // cv vectors (x rows, then h rows)
              with_constant<NV - 1, 1>(compact.cv, [&](auto CV_c) {
                constexpr int CV = decltype(CV_c)::value;
                V cs[R * CV], cxs[R * CV];
                const T* hp = panel + (long)I * CV * W;
                if (split)
                  tile_pass<T, R, CV, CV>(cxs, CV, true, 0, I, xr, panel, 0, nullptr, hp, far);
                if (fused && !split)
                  tile_pass<T, R, CV, CV>(cs, CV, true, 0, I, xr, panel, H, hr, hp, far);
                else
                  tile_pass<T, R, CV, CV>(cs, CV, true, 0, H, hr, hp, 0, nullptr, hp, far);
                spread_compact<T, R, CV, NV>(cs, sums, compact.s);
                if (split) spread_compact<T, R, CV, NV>(cxs, xsums, compact.s);
              });
              finish(R_c, p, i0, end, sums, xsums);
              return;
            }
          }
          for (int h = 0; h < NP; ++h) {
            if (split) pass(R_c, xsums, true, panel, h, I, xr, 0);
            if (fused && !split)
              pass(R_c, sums, true, panel, h, I, xr, 0, H, hr, I);
            else
              pass(R_c, sums, true, panel, h, H, hr, I);
          }
          finish(R_c, p, i0, end, sums, xsums);
        });
        return;
      }
      // Blocks of the slice rows [k0, k1): over [x | h] (x only for fused layers; GRU
      // sums x and h apart, so its blocks do not straddle them), split evenly into
      // blocks of at most KC rows, each for every pass and every tile, into partial (x
      // into xpartial when split); the epilogue follows the last.
      auto range = [&](int lo, int hi, bool xp) {
        const int nb = (hi - lo + KC - 1) / KC, kc = (hi - lo + nb - 1) / nb;
        for (int k0 = lo; k0 < hi; k0 += kc) {
          const int k1 = k0 + kc < hi ? k0 + kc : hi;
          for (int h = 0; h < NP; ++h) {
            // Weights beyond the last-level cache: the next block (the next pass's slice,
            // else the next K block) is requested into L2 in shares, one per tile, while
            // this one is in use; otherwise it arrives from memory on its first tile
            // (large LSTM inference, one thread: 82 -> 85 GFLOP/s; where the weights stay
            // cached, charrnn and mid lost 2-4% with it).
            const int hn = h + 1 < NP ? h + 1 : 0, kn0 = h + 1 < NP ? k0 : k1;
            const int kn1 = h + 1 < NP ? k1 : (k1 + kc < hi ? k1 + kc : hi);
            const long span = prefetch ? (long)(kn1 - kn0) * LV * W * sizeof(T) : 0;
            const long share = (span + 64L * mblocks - 1) / (64L * mblocks) * 64;
            for (int ib = 0; ib < mblocks; ++ib)
              with_block(ib, [&](auto R_c, int i0, int end) {
                constexpr int R = decltype(R_c)::value;
                for (int sl = hn * PV / LV; sl < (hn + 1) * PV / LV; ++sl) {
                  const char* next = (const char*)(panel + sl * ss + (long)kn0 * LV * W);
                  for (long b = ib * share; b < span && b < (ib + 1) * share; b += 64)
                    __builtin_prefetch(next + b, 0, 2);
                }
                V* sums = (xp ? xpartial : partial) + ib * tile;
                const T *xr[R], *hr[R];
                if (k1 <= I || k0 >= I) {
                  tile_rows(k0 < I, i0, end, k0 < I ? k0 : k0 - I, k0 < I ? xr : hr);
                  pass(R_c, sums, k0 == lo, panel, h, k1 - k0, k0 < I ? xr : hr, k0);
                } else {  // straddles x and h
                  tile_rows(true, i0, end, k0, xr);
                  tile_rows(false, i0, end, 0, hr);
                  pass(R_c, sums, k0 == lo, panel, h, I - k0, xr, k0, k1 - I, hr, I);
                }
                if (!xp && k1 == hi && h == NP - 1)
                  finish(R_c, p, i0, end, sums, split ? xpartial + ib * tile : nullptr);
              });
          }
        }
      };
      if (split) range(0, I, true);
      range(fused && !split ? 0 : I, I + H, false);
    };
    const int team = rf_team_size(), me = rf_thread_num();
    if (by_rows) {  // this thread's row tiles on every panel, step after step; then helping
      // (a team cut below nt takes the ranges in runs)
      auto tiles = [&](int id) { return range_tile[rf_share(nt, id, team)]; };
      helped->run(
          a.s0, a.steps, [&](int id) { return (long)npanels * (tiles(id + 1) - tiles(id)); },
          [&](int id, long s, long j) {
            task_at((int)s, tiles(id), tiles(id + 1) - tiles(id), (int)j);
          });
    } else {
      // This thread's share of the tasks: a static split, whose last tasks another thread
      // may take with steal; or its run of the sizer's.
      const bool timed = sized && team == nt;
      const int first = timed ? runs[me] : rf_share(ntasks, me, team);
      const int last = timed ? runs[me + 1] : rf_share(ntasks, me + 1, team);
      const double began = timed ? rf_ticks() : 0;
      double in_runs = 0;  // a sequence's: time in this thread's runs, barriers excluded
      const int delay = timed && !one_step && me == 1 ? step_delay_us() : 0;  // test probe
      for (int s = a.s0; s < a.steps; ++s) {
        const double step_began = timed && !one_step ? rf_ticks() : 0;
        probe_wait_us(delay);
        // Batch 1: h (and x) come from the other core's cache; request every line now
        // rather than as the K loop reaches each one (a few at a time in the reorder window).
        if (MR == 1 && nt > 1) {
          constexpr int L = 64 / sizeof(T);
          const T* h_prev = a.hs + (a.keep_all ? s : (s & 1)) * BH;
          const int32_t t0 = a.tidx[(long)s * LB];
          for (int k = 0; k < H; k += L) __builtin_prefetch(h_prev + k, 0, 3);
          const T* x_row = fused && t0 >= 0 ? a.x + row_at(a.xo, t0, 0) * I : nullptr;
          for (int k = 0; x_row && k < I; k += L) __builtin_prefetch(x_row + k, 0, 3);
        }
        auto run_task = [&](int j) { task_at(s, 0, 0, j); };
        if (steal)
          steal->run(s, ntasks, (s + a.parity) & 1, run_task);
        else
          for (int i = first; i < last; ++i)
            run_task((s + a.parity) & 1 ? last - 1 - (i - first) : i);
        if (timed && !one_step) in_runs += rf_ticks() - step_began;
        if (s + 1 < a.steps) rf_barrier();  // the last step's: the join
      }
      if (timed) {
        lag[me] = one_step ? began - call_start : 0;
        busy[me] = one_step ? rf_ticks() - began : in_runs;
        if (me == 0) timed_team = team;
      }
    }
    if (a.cache_stream) stream_fence();
  // Independent (no barrier; HelpedRuns helps only threads already running their rows): a
  // late worker's share runs on the caller.
  }, a.steps - a.s0 == 1 || by_rows);
  if (timed_team == nt) {
    sizer->record(nt, runs, lag, busy, rf_ticks() - call_start);
    note_split(runs[1], ntasks, nt);
  }
}

template <typename T, class Cell>
void recurrent_forward(const LayerFwd<T>& a, int nthreads) {
  constexpr int NV = Cell::NV;
  constexpr int MR = RecurrentTile<NV>::MR, NVK = RecurrentTile<NV>::NVK;
  constexpr int LR = RecurrentTile<NV>::LR;
  // Tile heights from MR down to LO. A second height one row less where that keeps enough
  // accumulators (>= 10 FMA chains cover the FMA latency): 6 and 5 rows cover every B >= 20
  // without padding. Where LR tiles make passes over the same vectors (one pass over the
  // panel: AVX-512), every height down to LR.
  constexpr int MR2 = MR * NVK >= 12 && (MR - 1) * NVK >= 10 ? MR - 1 : MR;
  constexpr int LO = NVK == NV && LR < MR2 ? LR : MR2;
  const int B = a.batch, H = a.hidden, G = cell_gates(a.cell);
  const int npanels = (H + Cell::template units<T>() - 1) / Cell::template units<T>();
  const int K = a.x ? a.in_size + H : H;
  int nt = rf_threads_for(nthreads, rf_step_work(B, (long)G * H, K));
  // Rows computed (padding included) by MR/MR2 tiles against one-pass tiles of LR rows
  // over all NV vectors, which cost more per row. AVX2, 5%: 3 x 4 against two passes of
  // 6 x 2 or 5 x 2, so B = 8 takes 3-row tiles. AVX-512, 10%: 4 x 4 loads a weight vector
  // per 4 FMAs instead of 6 (forced where nothing is padded, B = 12-64 LSTM inference ran
  // 1-4% slower), so B = 8 takes 2 x 4 rows, not 6 + 5. B = 32 and 64: 6- and 5-row tiles.
  // AVX-512 mixes in the lower heights where 6 and 5 leave rows over (plan_tiles); LR
  // tiles alone where they cost no more.
  constexpr double kLow = RecurrentTile<NV>::kLowCost;
  auto plan = [&](int rows) { return plan_tiles(rows, MR, LO, LR, kLow); };
  const TilePlan mixed = plan(B);
  const int lblocks = (B + LR - 1) / LR;
  const double low = kLow * lblocks * LR;
  auto capped = [&](int tiles) { return nt < npanels * tiles ? nt : npanels * tiles; };
  const double weight_bytes = (double)npanels * NV * Simd<T>::W * K * sizeof(T);
  // Weights small enough for each thread to read whole from its L2 every step: threads
  // take a range of rows each rather than panels and never wait for each other, where a
  // kind of tile over each range gives no thread over 5% more rows than an equal share of
  // the fewer rows either kind computes over all B; the cheaper such kind.
  bool low_tiles = low <= mixed.cost, by_rows = false;
  if (nt > 1 && B > 1 && weight_bytes <= row_sweep_bytes((double)B / nt)) {
    const double fewer = std::min(mixed.rows, lblocks * LR);
    int most_low = 0, most_mixed = 0;
    double mixed_cost = 0;
    for (int id = 0; id < nt; ++id) {
      const int n = rf_share(B, id + 1, nt) - rf_share(B, id, nt);
      const TilePlan p = plan(n);
      most_low = std::max(most_low, (n + LR - 1) / LR * LR);
      most_mixed = std::max(most_mixed, p.rows);
      mixed_cost = std::max(mixed_cost, p.cost);
    }
    const double row_flops = 2.0 * weight_bytes / sizeof(T);  // a row's step: 2 a weight
    auto even = [&](int most) {
      return most * nt <= fewer * 1.05 || (most - fewer / nt) * row_flops <= kRowSlackFlops;
    };
    const bool low_ok = even(most_low), mixed_ok = even(most_mixed);
    by_rows = low_ok || mixed_ok;
    if (by_rows) low_tiles = low_ok && (!mixed_ok || kLow * most_low <= mixed_cost);
  }
  // Fewer rows than LR: one tile of exactly B rows (padded to LR, B = 2 took as long as
  // B = 4; cpp/README.md).
  if (B == 1)
    recurrent_forward_tasks<T, Cell, 1, NV, 1>(a, nt, npanels, false);
  else if (B == 2 && LR > 2)
    recurrent_forward_tasks<T, Cell, 2, NV, 2>(a, nt, npanels, false);
  else if (B == 3 && LR > 3)
    recurrent_forward_tasks<T, Cell, 3, NV, 3>(a, nt, npanels, false);
  else if (low_tiles)
    recurrent_forward_tasks<T, Cell, LR, NV, LR>(a, capped(lblocks), npanels, by_rows);
  else
    recurrent_forward_tasks<T, Cell, MR, NVK, LO>(a, capped(mixed.tiles()), npanels, by_rows);
}

template <typename T>
static inline void add_row(T* acc, const T* x, long n) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  long j = 0;
  for (; j + W <= n; j += W) vstore(acc + j, vload<V>(acc + j) + vload<V>(x + j));
  for (; j < n; ++j) acc[j] += x[j];
}

template <typename T, class Cell>
void recurrent_backward(const LayerBwd<T>& a, int nthreads) {
  const int B = a.batch, H = a.hidden, G = cell_gates(a.cell);
  const long LB = a.ldb, BH = LB * H, GH = (long)G * H, DW = (long)cell_da_width(a.cell) * H;
  int nt = rf_threads_for(nthreads, rf_step_work(B, (long)G * H, H));
  // Rows of a batch do not meet in the backward sweep: with W_hh small enough for each
  // thread to read whole from its L2 every step, each thread sweeps its own rows with
  // no barrier per step (two otherwise: after dA, after the product). At least 4 rows a
  // thread, but for one thread with 3: with fewer the product's tiles run short of rows.
  // Two threads, training, B = 7 by rows: 2-8% faster in quiet spells, 3-16% in slow ones;
  // B = 4-6: level to 6% slower in quiet spells (GRU H = 200), so they keep to panels.
  const bool by_rows = nt > 1 && B >= 4 * nt - 1 &&
                       GH * H * (long)sizeof(T) <= row_sweep_bytes((double)B / nt);
  if (by_rows) note_row_sweep();
  T* direct = a.direct;  // null but for GRU (cell_has_direct)
  // Bias gradients: a partial sum per batch row, added to while the row's dA is in L1
  // (a separate pass over all T*B rows afterwards took 3% of mid LSTM training), then
  // summed in row order: the same result for any thread count. b_ih's sums are b_hh's
  // but for GRU's n rows (da_ih_gap_at).
  auto row = [&](int s, int b) {
    const long t = a.tidx[(long)s * LB + b];
    T* da = a.da + ((long)s * LB + b) * a.ldda;
    BwdRows<T> io;
    io.dy = a.dy ? a.dy + row_at(a.dyo, t, b) * a.ldy : nullptr;
    io.dh = a.dh + b * H;
    io.dc = a.dc ? a.dc + b * H : nullptr;
    io.h_prev = a.hs + s * BH + b * H;
    io.h_new = a.hs + (s + 1) * BH + b * H;
    io.c_prev = a.cs ? a.cs + s * BH + b * H : nullptr;
    io.cache = a.cache ? a.cache + ((long)s * LB + b) * cell_cache_width(a.cell) * H : nullptr;
    io.da = da;
    io.direct = direct ? direct + b * H : nullptr;
    Cell::template backward_row<T>(a.cell, H, io);
    if (a.db_part) add_row(a.db_part + DW * b, da, DW);
  };
  // Both phases of a step shared as the forward's (StealShares; 2 threads, alternating
  // rounds on the Intel VM, training: mid LSTM 0.94-1.00 of the static split, the others
  // level within the host's noise).
  std::optional<StealShares> shares;
  if (!by_rows && nt > 1 && B > 1 && a.steps - a.s0 > 1) shares.emplace(nt);
  StealShares* const steal = shares ? &*shares : nullptr;
  // By rows: a thread done with its rows helps the others with theirs, as forward.
  constexpr long product_cols = 2L * kPrepackedNV * Simd<T>::W;
  const long product_tasks = (H + product_cols - 1) / product_cols;
  std::optional<HelpedRuns> helping;
  if (by_rows) helping.emplace(nt, 2.0 * B / nt * GH * H >= kHelpFlops);
  HelpedRuns* const helped = helping ? &*helping : nullptr;
  rf_parallel(nt, [&] {
    RF_FLUSH_DENORMALS_SCOPE;
    if (by_rows) {
      // Each step in two phases of HelpedRuns: the rows (a task each), then dh = dA W_hh
      // over those rows (a task per two column panels: a tile's pair, gemm_prepacked).
      const int team = rf_team_size();
      auto rows_of = [&](int id) { return rf_share(B, id, team); };
      auto tasks_of = [&](int id) -> long {
        const long nb = rows_of(id + 1) - rows_of(id);
        return nb > product_tasks ? nb : product_tasks;
      };
      helped->run(0, 2L * (a.steps - a.s0), tasks_of, [&](int id, long k, long j) {
        const int s = a.steps - 1 - (int)(k / 2), b0 = rows_of(id), b1 = rows_of(id + 1);
        if (k % 2 == 0) {
          if (b0 + j < b1) row(s, b0 + (int)j);
          return;
        }
        if (j >= product_tasks) return;
        const long c0 = j * product_cols, n = H - c0 < product_cols ? H - c0 : product_cols;
        gemm_prepacked<T>(b1 - b0, (int)n, (int)GH, a.da + ((long)s * LB + b0) * a.ldda,
                          a.ldda, a.packed_whh_t + c0 * GH, a.dh + (long)b0 * H + c0, H,
                          direct ? direct + (long)b0 * H + c0 : nullptr, H, false);
      });
      rf_barrier();
    } else {
      for (int s = a.steps - 1; s >= a.s0; --s) {
        rf_for(B, [&](long b) { row(s, (int)b); }, steal, 2 * s);
        // dh_{s-1} = dA_s W_hh (+ direct)  (implicit barriers around both phases)
        gemm_prepacked<T>(B, H, (int)GH, a.da + (long)s * LB * a.ldda, a.ldda, a.packed_whh_t, a.dh,
                          H, direct, H, true, steal, 2 * s + 1);
      }
    }
    if (a.db_part && a.s0 == 0) {  // after a barrier; the engine's last call: all rows
      const long gap = da_ih_gap_at(a.cell, H);  // dA columns [gap, gap + H): b_hh's alone
      rf_for(DW, [&](long j) {  // column j of dA: row j of b_hh, a row of b_ih, or both
        T sum = T(0);
        for (int b = 0; b < B; ++b) sum += a.db_part[DW * b + j];
        if (j < GH) a.db_hh[j] += sum;
        if (j < gap || j >= gap + H) a.db_ih[j < gap ? j : j - H] += sum;
      });
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
