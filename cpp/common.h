// Plain types shared by the dispatcher and the per-ISA kernels. Kept free of
// std:: templates and non-static inline functions: kernels are compiled once per
// instruction set and must not share out-of-line code with other copies.
#pragma once
#include <climits>
#include <cstddef>
#include <cstdint>

namespace rnnfast {

class PanelSplit;  // threading.h

enum Cell : int { RNN_TANH = 0, RNN_RELU = 1, LSTM = 2, GRU = 3 };

// Gates per cell (rows of weight_ih / weight_hh are G*H).
static inline int cell_gates(int cell) { return cell == LSTM ? 4 : cell == GRU ? 3 : 1; }
// Values cached per (step, row) for backward, in units of H.
static inline int cell_cache_width(int cell) { return cell == LSTM ? 5 : cell == GRU ? 4 : 0; }
// Pre-activation gradients per (step, row) in backward, in units of H: the G gates'
// (W_hh's and W_ih's alike), and for GRU [dr | dz | dn*r | dn], W_hh's n rows then W_ih's.
static inline int cell_da_width(int cell) { return cell == GRU ? 4 : cell_gates(cell); }
// W_ih's rows (and dx's K) read dA with a gap of H columns at this one: GRU's dn*r, W_hh's
// alone. INT_MAX: no gap (W_ih's and W_hh's rows share every column).
static inline int da_ih_gap_at(int cell, int H) { return cell == GRU ? 2 * H : INT_MAX; }
// Whether backward has a part of dh_prev beside dA W_hh (GRU's z * dh; the others pass
// all of it through W_hh).
static inline bool cell_has_direct(int cell) { return cell == GRU; }

// A second block of columns for a product: columns [n1, N) of B and C are read from B2
// and written to C2 (both given from their own column 0). Lets the weight gradients
// dW_hh and dW_ih, which share dA, come from one product that packs dA once.
template <typename T>
struct GemmCols2 {
  int n1;
  const T* B2;
  long rsb2, csb2;
  T* C2;
  long ldc2;
};

// A read with gaps: its rows from m_at on lie m_skip rows further on, and its columns (K)
// from k_at on k_skip columns further on. GRU's one dA row [dr | dz | dn*r | dn] gives W_ih's
// gradient ([dr | dz | dn] as rows) and dx ([dr | dz | dn] as K) through it.
struct GemmGaps {
  int m_at, m_skip, k_at, k_skip;
};

// Where row (t, b) of a sequence of T steps of B rows lies, counted in rows:
// t * B + b time-major ({B, 1}), b * T + t batch-first ({1, T}). With perm, the engine's
// row b is the caller's row perm[b] (rows sorted by length, see Engine::plan_rows).
struct RowOrder {
  long t, b;
  const int32_t* perm = nullptr;
};
static inline long row_at(RowOrder o, long t, long b) {
  return t * o.t + (o.perm ? o.perm[b] : b) * o.b;
}

// Whether batch-1 steps on weights beyond L2 request each weight line ahead of use
// (defined in dispatch.cpp: by CPU, see cpp/README.md item 2).
bool far_prefetch();
// Whether the GEMM reads a transposed A whose columns lie an odd number of cache lines
// apart in place rather than packing it (defined in dispatch.cpp: by CPU).
bool transposed_a_in_place();
// Weights a step reads (bytes) up to which threads split a step's rows, not its panels
// (recurrence.h): three quarters of one core's L2 (defined in dispatch.cpp).
long row_sweep_bytes();
// The same for threads of `rows` rows each: beyond 4 rows a thread, the base limit times
// rows / 4 (at most 8 times, at most a quarter of the L3; the base where the L3 is unknown).
// Each thread then reads all the weights a step, from L3, for more rows. Zen 4, 2 threads,
// by rows against panels: B 16, 1 MiB of weights -2.7%; `charrnn` LSTM -2.5 to -3.5%.
long row_sweep_bytes(double rows);

// One layer and direction of the recurrence, everything row-major. Sequences (x, xproj,
// y, dy) have their rows in the order xo / yo / dyo; the engine's own buffers are
// time-major.
//   xproj  (T,B,G*H)  x_t W_ih^T + b_ih (+ b_hh except GRU's n rows), rows in order xo;
//                     row stride ldx (0: one row of biases for every row, see x)
//   packed            recurrent_pack() of [W_ih | W_hh] (K = in_size + H per panel)
//   x      (T,B,in)   fused input, rows in order xo: each step multiplies [x_t | h] by all
//                     of `packed`, so no separate input projection runs (xproj is then
//                     the bias row, ldx 0); null: the step multiplies h by the W_hh rows only
//   tidx   (T,B)      time index processed by row b at step s, or -1 when inactive
//   s0, steps, batch   this call runs steps [s0, steps) on rows [0, batch) of arrays whose
//                     steps hold ldb rows each (tidx, hs, cs, cache); the engine calls once
//                     per run of steps with the same rows active (rows sorted by length),
//                     so every row of a call is inside its sequence at every step of it
//   hs     (S,B,H)    states in step order: hs[0] = h0, hs[s+1] = state after step s.
//                     S = T+1 when training (kept for backward), 2 for inference (ping-pong)
//   cs     (S,B,H)    LSTM cell states, same convention
//   cache  (T,B,W*H)  per-step gate values kept for backward (training only, else null)
//   y      (T,B,ldy)  outputs, row (t, b) at y + row_at(yo, t, b) * ldy (y already offset
//                     to the direction)
template <typename T>
struct LayerFwd {
  int cell, steps, batch, hidden;
  int s0 = 0, ldb = 0;
  int in_size;
  const T* xproj;
  long ldx;
  const int32_t* xrow = nullptr;  // if given, xproj's row of (t, b) is xrow[t * ldb + b]
  const int32_t* tidx;
  const T* packed;
  const T* x;
  const T* b_hn;           // GRU only: b_hh rows of n (inside the reset product); may be null
  T* hs;
  T* cs;
  T* cache;
  bool cache_stream = false;  // the cache is written past the caches (too big to stay)
  T* y;
  long ldy;
  RowOrder xo, yo;
  bool keep_all;           // training: hs/cs hold all steps; else ping-pong
  bool c_in_place = false; // inference: cs is one slot, each c_prev read before its c_new
                           // is stored (a stream's own state, not copied in and out)
  int parity;              // step s walks its tasks backwards when s + parity is odd
  PanelSplit* split = nullptr;      // one step: the threads' runs of tasks (may be null)
  PanelSplit* seq_split = nullptr;  // several steps, tasks split statically: the same
};

//   dy     (T,B,ldy)  upstream gradient of this direction's outputs, rows in order dyo
//   dh     (B,H)      in: gradient of the final state; out: gradient of h0
//   dc     (B,H)      same for LSTM cell state
//   da     (T,B,DW)   out: pre-activation grads, in step order (DW = cell_da_width * H),
//                     rows ldda apart
//   direct (B,H)      scratch: the part of dh_{s-1} that bypasses W_hh (cell_has_direct;
//                     else null)
template <typename T>
struct LayerBwd {
  int cell, steps, batch, hidden;
  int s0 = 0, ldb = 0;  // as in LayerFwd: steps [s0, steps) of rows [0, batch), backwards
  const int32_t* tidx;
  const T* packed_whh_t;   // prepack() of W_hh (G*H x H), for dh_prev = dA W_hh
  const T* hs;
  const T* cs;
  const T* cache;
  const T* dy;
  long ldy;
  RowOrder dyo;
  T* dh;
  T* dc;
  T* da;
  long ldda;
  T* direct;
  // Bias gradients (accumulated), summed while the sweep makes dA: null without biases.
  // db_part holds one partial sum per batch row (DW each), zeroed by the engine
  // before its first call; the call that ends at step 0 adds them (in row order) to db_*.
  T* db_hh;
  T* db_ih;
  T* db_part;
};

}  // namespace rnnfast
