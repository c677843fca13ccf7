#include "engine.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "dispatch.h"
#include "threading.h"

namespace rnnfast {

namespace {
std::atomic<bool> g_huge_pages{[] {
  const char* env = std::getenv("RNNFAST_HUGE_PAGES");
  return !(env && std::string(env) == "0");
}()};
}  // namespace

bool huge_pages() { return g_huge_pages.load(std::memory_order_relaxed); }
bool set_huge_pages(bool on) { return g_huge_pages.exchange(on); }

namespace {
// Buffers reused across calls (per thread), so repeated calls of one shape neither
// allocate nor page-fault: glibc serves large blocks with fresh mmap'd pages.
template <typename T>
struct Workspace {
  LineVec<T> xproj, out_a, out_b, hs, cs, dinput_a, dinput_b, da, direct, dh, dc,
      db_part, rows_h, rows_x, rows_dx;
  std::vector<long> step_rows, time_rows;  // padded batches: the rows inside their sequences
  std::vector<long> x_of_step;             // the x row of each product row, in step order
  std::vector<int32_t> place;
  RowPlan plan;  // inference's (training keeps its own in the cache)
};
// Input projections with at most this many rows (T*B) use the weights pre-packed at
// load time; larger ones pack panels on the fly, which the row count amortises.
constexpr long kFewRows = 32;
// Whether a layer runs its input product inside the time loop (no xproj written and
// read back). Measured on 2 cores, LSTM inference: small (I 32, H 128) 0.652 -> 0.624 ms,
// charrnn (64/256, 256/256) 40.3 -> 39.3, mid (256/512) 64.2 -> 61.7; with I = H the
// second charrnn layer too (36.0 -> 34.2, GRU 25.7 -> 24.5) while its [W_ih | W_hh]
// stays well inside the last-level cache; large (1024/1024, 32 MB) 334 -> 362 ms, where
// the one big GEMM wins.
// Batch 1 over several steps with a large W_ih is the exception: a step is bound by reading
// its weights, and fused it reads W_ih as well, where one GEMM over all the steps reads it
// once. Zen 4, 2 threads, T 200, time in quiet spells / in slow ones: LSTM I 512 H 512
// -14% / -11%, I 256 H 256 -22% / -5%, GRU 256/512 -10% / -6%, 256/256 -11% / -1%, RNN
// 512/512 -15% / -8%. With W_ih under 512 KiB the GEMM and its hand-offs cost about what
// they save: LSTM 64/128 -10% / +20%, RNN 256/256 -16% / +3%.
static bool fuse_input(int in_size, int hidden, int gates, size_t elem, int batch) {
  const long GH = (long)gates * hidden;
  if (batch == 1 && (double)in_size * GH * elem >= (512 << 10)) return false;
  const double bytes = (double)(in_size + hidden) * GH * elem;
  return in_size <= 64 || 2 * in_size <= hidden || (in_size <= hidden && bytes <= (8 << 20));
}

// Whether training's gate cache of one layer and direction (T*B rows) is written past the
// caches (vstore_stream). Plain stores made each step's weights (and h) leave L2 for lines
// that backward reads long after. Intel Xeon (family 6 model 207, 2 MiB of L2 a core, L3
// at ~50 GB/s a core), 2 threads, alternating rounds, forward (training) / whole step:
// LSTM charrnn (16 MB) -11% / -4.6%, mid (33 MB) -11% / -3.5%, GRU mid -17% / -9%; LSTM
// charrnn on one thread -14% / -6.4%; caches of 3.3-6.6 MB -2 to -7% whole (one shape
// level); 2-2.5 MB level to +2%, LSTM small (1 MB) level. Backward, which now reads the
// cache from memory, level (+-2%); prefetching its next step's rows gained nothing.
// Zen 4 VM (1 MiB of L2 a core), training, three alternating rounds: streamed by size
// against never, LSTM and GRU `charrnn` and `mid` level (within the rounds' noise);
// `small` always streamed slower, LSTM 1.08 -> 1.13 ms, GRU 0.85 -> 0.90-0.97.
static std::atomic<int> g_stream_cache{-1};  // -1 by size, 0 never, 1 always (tests)
static bool stream_gate_cache(long rows, int cell, int hidden, size_t elem) {
  const int mode = g_stream_cache.load(std::memory_order_relaxed);
  if (mode >= 0) return mode == 1;
  return (double)rows * cell_cache_width(cell) * hidden * elem > (3 << 20);
}
}  // namespace
int set_stream_cache(int mode) { return g_stream_cache.exchange(mode < 0 ? -1 : mode > 0); }
namespace {

// Rows of F values between a sequence in `order` (the caller's: batch-first, or rows
// permuted) and a time-major one in the engine's row order.
template <typename T>
void gather_rows(const T* src, RowOrder order, int steps, int batch, long F, T* dst) {
  for (int t = 0; t < steps; ++t)
    for (int b = 0; b < batch; ++b)
      std::memcpy(dst + ((long)t * batch + b) * F, src + row_at(order, t, b) * F, sizeof(T) * F);
}
template <typename T>
void scatter_rows(const T* src, RowOrder order, int steps, int batch, long F, T* dst) {
  for (int t = 0; t < steps; ++t)
    for (int b = 0; b < batch; ++b)
      std::memcpy(dst + row_at(order, t, b) * F, src + ((long)t * batch + b) * F, sizeof(T) * F);
}
// States (B, H): the caller's rows into the engine's order (take) and back (put).
template <typename T>
void take_rows(const T* src, const int32_t* perm, int batch, long H, T* dst) {
  for (int b = 0; b < batch; ++b)
    std::memcpy(dst + b * H, src + (perm ? perm[b] : b) * H, sizeof(T) * H);
}
template <typename T>
void put_rows(const T* src, const int32_t* perm, int batch, long H, T* dst) {
  for (int b = 0; b < batch; ++b)
    std::memcpy(dst + (perm ? perm[b] : b) * H, src + b * H, sizeof(T) * H);
}
// A padded batch's rows inside their sequences, in increasing order: (step, row) pairs as
// s * B + b (step_rows, may be null) and (time, row) pairs as t * B + b (time_rows); place
// gets each time row's index in time_rows, -1 outside (the same for both directions).
static void rows_inside(const RowPlan& plan, int steps, int batch, std::vector<long>* step_rows,
                        std::vector<long>& time_rows, std::vector<int32_t>& place) {
  if (step_rows) step_rows->clear();
  time_rows.clear();
  place.assign((size_t)steps * batch, -1);
  for (const RowPlan::Segment& seg : plan.segments)
    for (int st = seg.s0; st < seg.s1; ++st)
      for (int b = 0; b < seg.rows; ++b) {
        if (step_rows) step_rows->push_back((long)st * batch + b);
        place[(size_t)plan.tidx[0][(size_t)st * batch + b] * batch + b] = 0;
      }
  for (size_t r = 0; r < place.size(); ++r)
    if (place[r] == 0) {
      place[r] = (int32_t)time_rows.size();
      time_rows.push_back((long)r);
    }
}

// Rows idx[i] (increasing, t * B + b) of F values: gathered into dst from a sequence in
// `order` (time-major in the engine's order: {B, 1}), or moved down to row i in place.
template <typename T>
void gather_listed(const T* src, RowOrder order, int batch, const std::vector<long>& idx, long F,
                   T* dst) {
  for (size_t i = 0; i < idx.size(); ++i)
    std::memcpy(dst + i * F, src + row_at(order, idx[i] / batch, idx[i] % batch) * F,
                sizeof(T) * F);
}
template <typename T>
void compact_listed(T* buf, const std::vector<long>& idx, long F, long ld) {
  for (size_t i = 0; i < idx.size(); ++i)
    if (idx[i] != (long)i) std::memcpy(buf + i * ld, buf + idx[i] * ld, sizeof(T) * F);
}

template <typename T>
Workspace<T>& workspace() {
  static thread_local Workspace<T> ws;
  return ws;
}

// After each call, a buffer over 64 MiB that the call sized to under a quarter of its
// capacity shrinks to its size: one large call must not pin its memory in every thread
// that made it (workspaces) or in the model (the training cache), while calls of one shape
// keep theirs (no new pages to fault in).
template <typename T>
void trim(LineVec<T>& v) {
  constexpr size_t kKeepBytes = 64 << 20;
  if (v.capacity() * sizeof(T) > kKeepBytes && v.size() < v.capacity() / 4) v.shrink_to_fit();
}

template <typename T>
void trim(Workspace<T>& ws) {
  for (LineVec<T>* v : {&ws.xproj, &ws.out_a, &ws.out_b, &ws.hs, &ws.cs, &ws.dinput_a,
                        &ws.dinput_b, &ws.da, &ws.direct, &ws.dh, &ws.dc,
                        &ws.db_part, &ws.rows_h, &ws.rows_x, &ws.rows_dx})
    trim(*v);
}
}  // namespace

template <typename T>
Engine<T>::Engine(int cell, int input_size, int hidden_size, int num_layers, bool bidirectional,
                  bool bias)
    : cell_(cell), I_(input_size), H_(hidden_size), L_(num_layers), D_(bidirectional ? 2 : 1),
      G_(cell_gates(cell)), bias_(bias) {
  if (cell < RNN_TANH || cell > GRU) throw std::invalid_argument("unknown cell kind");
  if (I_ <= 0 || H_ <= 0 || L_ <= 0) throw std::invalid_argument("sizes must be positive");
  long off = 0;
  const long GH = (long)G_ * H_;
  for (int k = 0; k < L_; ++k)
    for (int d = 0; d < D_; ++d) {
      Slot s;
      s.in_size = k == 0 ? I_ : D_ * H_;
      const std::string sfx = "_l" + std::to_string(k) + (d ? "_reverse" : "");
      s.w_ih = off;
      layout_.push_back({"weight_ih" + sfx, off, {GH, (long)s.in_size}});
      off += GH * s.in_size;
      s.w_hh = off;
      layout_.push_back({"weight_hh" + sfx, off, {GH, (long)H_}});
      off += GH * H_;
      s.b_ih = s.b_hh = -1;
      if (bias_) {
        s.b_ih = off;
        layout_.push_back({"bias_ih" + sfx, off, {GH}});
        off += GH;
        s.b_hh = off;
        layout_.push_back({"bias_hh" + sfx, off, {GH}});
        off += GH;
      }
      slots_.push_back(std::move(s));
    }
  params_.assign(off, T(0));
  grads_.assign(off, T(0));
  repack();
}

template <typename T>
void Engine<T>::repack() {
  std::unique_lock<std::shared_mutex> lock(pack_mutex_);
  repack_locked();
}

template <typename T>
void Engine<T>::assign_params(const T* src) {
  std::unique_lock<std::shared_mutex> lock(pack_mutex_);
  std::copy(src, src + params_.size(), params_.begin());
  repack_locked();
}

template <typename T>
void Engine<T>::repack_locked() {
  const KernelTable<T>& kt = kernels<T>();
  const long GH = (long)G_ * H_;
  for (Slot& s : slots_) {
    const T* whh = params_.data() + s.w_hh;
    const T* wih = params_.data() + s.w_ih;
    // The packers write every element, padding included: no zero fill first (this runs
    // after every optimizer step).
    s.packed_cat.resize(kt.packed_size[cell_](s.in_size, H_));
    kt.pack[cell_](s.packed_cat.data(), wih, s.in_size, whh, H_);
    s.packed_bwd.resize(kt.prepacked_size((int)GH, H_));
    kt.prepack(s.packed_bwd.data(), (int)GH, H_, whh, H_, 1);
    s.packed_ih.resize(kt.prepacked_size(s.in_size, (int)GH));
    kt.prepack(s.packed_ih.data(), s.in_size, (int)GH, wih, 1, s.in_size);
    s.bias_sum.assign(GH, T(0));
    if (bias_) {
      const T* bih = params_.data() + s.b_ih;
      const T* bhh = params_.data() + s.b_hh;
      // GRU keeps b_hn out: it sits inside the reset product.
      const long nsum = cell_ == GRU ? 2L * H_ : GH;
      for (long j = 0; j < GH; ++j) s.bias_sum[j] = bih[j] + (j < nsum ? bhh[j] : T(0));
    }
  }
  packed_with_ = &kt;
}

template <typename T>
std::shared_lock<std::shared_mutex> Engine<T>::packed_lock() {
  std::shared_lock<std::shared_mutex> lock(pack_mutex_);
  // Only a test that switches instruction sets at run time finds the packing stale.
  if (packed_with_ != &kernels<T>()) {
    lock.unlock();
    repack();
    lock.lock();
  }
  return lock;
}

template <typename T>
void Engine<T>::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template <typename T>
void Engine<T>::plan_rows(int steps, int batch, const int32_t* lengths, const int32_t* starts,
                          RowPlan& p) const {
  // A stream's steps, and calls of one shape without lengths, reuse the plan as it is.
  if (!lengths && p.plain_steps == steps && p.plain_batch == batch && p.plain_dirs == D_) return;
  p.plain_steps = lengths ? -1 : steps;
  p.plain_batch = lengths ? -1 : batch;
  p.plain_dirs = lengths ? -1 : D_;
  p.lens.resize(batch);
  bool sorted = true;
  p.padded = p.shifted = false;
  for (int b = 0; starts && b < batch; ++b) p.shifted = p.shifted || starts[b] > 0;
  for (int b = 0; b < batch; ++b) {
    p.lens[b] = lengths ? lengths[b] : steps;
    sorted = sorted && (b == 0 || p.lens[b] <= p.lens[b - 1]);
    p.padded = p.padded || p.lens[b] < steps;
  }
  p.perm.clear();
  if (!sorted) {
    p.perm.resize(batch);
    for (int b = 0; b < batch; ++b) p.perm[b] = b;
    std::stable_sort(p.perm.begin(), p.perm.end(),
                     [&](int32_t i, int32_t j) { return lengths[i] > lengths[j]; });
    for (int b = 0; b < batch; ++b) p.lens[b] = lengths[p.perm[b]];
  }
  const int32_t* order = p.order();
  for (int d = 0; d < D_; ++d) {
    p.tidx[d].resize((size_t)steps * batch);
    for (int s = 0; s < steps; ++s)
      for (int b = 0; b < batch; ++b) {
        const int len = p.lens[b], t0 = starts ? starts[order ? order[b] : b] : 0;
        p.tidx[d][(size_t)s * batch + b] = s < len ? t0 + (d == 0 ? s : len - 1 - s) : -1;
      }
  }
  // Runs of steps with the same active rows: [s, lens[n - 1]) with the n rows longer than s.
  p.segments.clear();
  int n = batch;
  for (int s = 0; s < steps;) {
    while (n > 0 && p.lens[n - 1] <= s) --n;
    if (n == 0) break;  // steps past every sequence's end: nothing runs
    p.segments.push_back({s, p.lens[n - 1], n});
    s = p.lens[n - 1];
  }
}

template <typename T>
double Engine<T>::forward_flops(int steps, int batch) const {
  double f = 0;
  for (int l = 0; l < L_; ++l)
    f += 2.0 * steps * batch * ((l == 0 ? I_ : D_ * H_) + H_) * G_ * H_ * D_;
  return f;
}

template <typename T>
template <class Run>
void Engine<T>::run_chosen(int kind, int steps, int batch, double scale, int nt, Run&& run) {
  if (nt <= 1 || steps <= 1 || scale * forward_flops(steps, batch) > kChoiceFlops)
    return run(nt);
  StepThreadChoice* choice;
  StepThreadChoice::Plan plan;
  {
    std::lock_guard<std::mutex> guard(choice_mutex_);
    CallChoice* e = nullptr;
    for (CallChoice& c : choices_)
      if (c.kind == kind && c.steps == steps && c.batch == batch && c.nt == nt) e = &c;
    if (!e) {  // the least recently used entry starts afresh
      e = &choices_[0];
      for (CallChoice& c : choices_)
        if (c.used < e->used) e = &c;
      *e = CallChoice{kind, steps, batch, nt};
    }
    e->used = ++calls_;
    choice = &e->choice;
    plan = choice->next();
  }
  if (plan.one) note_call_on_one_thread();
  StepThreadChoice::run(plan, nt, run, [&](double start, double seconds) {
    std::lock_guard<std::mutex> guard(choice_mutex_);
    choice->record(start, seconds);
  });
}

template <typename T>
void Engine<T>::forward(const T* x, int steps, int batch, const T* h0, const T* c0,
                        const int32_t* lengths, const int32_t* starts, bool training,
                        double dropout, uint64_t seed, int nthreads, T* y, T* hn, T* cn,
                        bool batch_first, long x_rows_apart) {
  const ThreadBudget budget(nthreads);
  run_chosen(training ? 1 : 0, steps, batch, 1, budget.threads(), [&](int nt) {
    forward_on(x, steps, batch, h0, c0, lengths, starts, training, dropout, seed, nt, y, hn, cn,
               batch_first, x_rows_apart);
  });
}

template <typename T>
void Engine<T>::forward_on(const T* x, int steps, int batch, const T* h0, const T* c0,
                           const int32_t* lengths, const int32_t* starts, bool training,
                           double dropout, uint64_t seed, int nt, T* y, T* hn, T* cn,
                           bool batch_first, long x_rows_apart) {
  if (x_rows_apart > 0 && (steps != 1 || training))
    throw std::logic_error("spaced input rows are for one inference step");
  std::unique_lock<std::mutex> train_lock(train_mutex_, std::defer_lock);
  if (training) train_lock.lock();
  const auto lock = packed_lock();
  const KernelTable<T>& kt = kernels<T>();
  const long TB = (long)steps * batch, BH = (long)batch * H_, GH = (long)G_ * H_;
  const long DH = (long)D_ * H_;
  const bool use_dropout = training && dropout > 0 && L_ > 1;
  Workspace<T>& ws = workspace<T>();
  RowPlan& plan = training ? cache_.plan : ws.plan;
  plan_rows(steps, batch, lengths, starts, plan);
  const int32_t* perm = plan.order();
  // A step of a stream (its c given as c0 and cn) updates an LSTM's c where it lies: each
  // element is read, then written, by the one task that owns its row and unit, so a
  // worker's part stays in its cache (copied in and out: LSTM-128 steps ~0.2 us more).
  const bool c_in_place =
      cell_ == LSTM && !training && steps == 1 && c0 && c0 == cn && !perm && !plan.padded;
  // The engine's buffers are time-major in its row order; the caller's x and y are in
  // `caller` order, which maps engine rows to the caller's.
  const RowOrder time_major{batch, 1},
      caller{batch_first ? 1 : batch, batch_first ? steps : 1, perm};
  // One step runs the fused input product, which finds each x row through the order.
  const RowOrder x_order = x_rows_apart > 0 ? RowOrder{caller.t, x_rows_apart, perm} : caller;
  // Steps alternate the direction of their walk over the weights from call to call as
  // within one (batch-1 streams make one step per call).
  const int parity = (int)(steps_run_.fetch_add(steps, std::memory_order_relaxed) & 1);
  if (training) {
    cache_.valid = false;
    cache_.steps = steps;
    cache_.batch = batch;
    cache_.dropout = use_dropout ? dropout : 0.0;
    cache_.batch_first = batch_first;
    cache_.inputs.resize(L_);
    cache_.masks.resize(L_);
    cache_.hs.resize(slots_.size());
    cache_.cs.resize(slots_.size());
    cache_.gates.resize(slots_.size());
    if (batch_first || perm) {  // kept time-major in the engine's order, as later layers' input
      cache_.inputs[0].resize(TB * I_);
      gather_rows(x, caller, steps, batch, I_, cache_.inputs[0].data());
    } else {
      cache_.inputs[0].assign(x, x + TB * I_);
    }
  }

  LineVec<T>& xproj = ws.xproj;
  LineVec<T>& out_a = ws.out_a;   // layer outputs, ping-pong
  LineVec<T>& out_b = ws.out_b;
  const T* layer_in = training ? cache_.inputs[0].data() : x;
  const int stride_state = training ? steps + 1 : 2;
  LineVec<T>& hs_local = ws.hs;
  LineVec<T>& cs_local = ws.cs;
  bool listed = false;  // ws.time_rows and ws.place hold this call's rows inside

  for (int k = 0; k < L_; ++k) {
    const bool last = k == L_ - 1;
    T* layer_out;
    if (last) {
      layer_out = y;
    } else {
      // Training keeps each inner output as the next layer's input (dropout applies in place).
      LineVec<T>& buf = training ? cache_.inputs[k + 1] : (k % 2 == 0) ? out_a : out_b;
      buf.resize(TB * DH);
      layer_out = buf.data();
    }
    if (plan.padded) std::memset(layer_out, 0, sizeof(T) * TB * DH);  // stays 0 outside
    // Fused input: each step multiplies [x_t | h] by [W_ih | W_hh] and no input projection
    // runs (GRU keeps the two sums apart: its reset gate multiplies the h part of n). For
    // one step, and for narrow inputs, whose projection GEMM is bound by writing xproj
    // (batch 1 aside, see fuse_input).
    const int in_k = slots_[k * D_].in_size;
    const bool fused = steps == 1 || fuse_input(in_k, H_, cell_gates(cell_), sizeof(T), batch);
    // A padded batch projects the rows inside their sequences alone, gathered; the kernels
    // find each one's projection through ws.place.
    const bool gathered = !fused && plan.padded;
    const T* proj_in = layer_in;
    long proj_rows = TB;
    if (gathered) {
      if (!listed) rows_inside(plan, steps, batch, nullptr, ws.time_rows, ws.place);
      listed = true;
      proj_rows = (long)ws.time_rows.size();
      ws.rows_x.resize(proj_rows * in_k);
      gather_listed(layer_in, layer_in == x ? x_order : time_major, batch, ws.time_rows, in_k,
                    ws.rows_x.data());
      proj_in = ws.rows_x.data();
    }
    for (int d = 0; d < D_; ++d) {
      const int si = k * D_ + d;
      Slot& s = slots_[si];
      const T* wih = params_.data() + s.w_ih;
      const T* bias_row = bias_ ? s.bias_sum.data() : nullptr;
      if (!fused) {  // fused: the bias row stands for xproj in every batch row (ldx = 0)
        xproj.resize(proj_rows * GH);
        if (proj_rows <= kFewRows)  // weights packed at load time, nothing packed per call
          kt.gemm_prepacked((int)proj_rows, (int)GH, in_k, proj_in, in_k, s.packed_ih.data(),
                            xproj.data(), GH, bias_row, nt);
        else
          kt.gemm((int)proj_rows, (int)GH, in_k, proj_in, in_k, 1, wih, 1, in_k, xproj.data(),
                  GH, false, bias_row, nt);
      }

      LineVec<T>& hs = training ? cache_.hs[si] : hs_local;
      LineVec<T>& cs = training ? cache_.cs[si] : cs_local;
      hs.resize((size_t)stride_state * BH);
      if (h0)
        take_rows(h0 + si * BH, perm, batch, H_, hs.data());
      else
        std::memset(hs.data(), 0, sizeof(T) * BH);
      if (cell_ == LSTM && !c_in_place) {
        cs.resize((size_t)stride_state * BH);
        if (c0)
          take_rows(c0 + si * BH, perm, batch, H_, cs.data());
        else
          std::memset(cs.data(), 0, sizeof(T) * BH);
      }
      T* gate_cache = nullptr;
      if (training && cell_cache_width(cell_) > 0) {
        cache_.gates[si].resize(TB * cell_cache_width(cell_) * H_);
        gate_cache = cache_.gates[si].data();
      }
      LayerFwd<T> a;
      a.cell = cell_;
      a.steps = steps;
      a.batch = batch;
      a.hidden = H_;
      a.in_size = s.in_size;
      a.xproj = fused ? s.bias_sum.data() : xproj.data();
      a.ldx = fused ? 0 : GH;
      a.xrow = gathered ? ws.place.data() : nullptr;
      a.tidx = plan.tidx[d].data();
      a.packed = s.packed_cat.data();
      a.x = fused ? layer_in : nullptr;
      a.b_hn = (cell_ == GRU && bias_) ? params_.data() + s.b_hh + 2 * H_ : nullptr;
      a.hs = hs.data();
      a.cs = c_in_place ? cn + si * BH : cell_ == LSTM ? cs.data() : nullptr;
      a.c_in_place = c_in_place;
      a.cache = gate_cache;
      a.cache_stream = gate_cache && stream_gate_cache(TB, cell_, H_, sizeof(T));
      a.y = layer_out + d * H_;
      a.ldy = DH;
      a.xo = layer_in == x ? x_order : time_major;  // the projection keeps its input's order
      a.yo = last ? caller : time_major;
      a.keep_all = training;
      a.parity = parity;
      a.split = s.split.get();
      a.seq_split = s.seq_split.get();
      a.ldb = batch;
      for (const RowPlan::Segment& g : plan.segments) {
        a.s0 = g.s0;
        a.steps = g.s1;
        a.batch = g.rows;
        kt.forward[cell_](a, nt);
      }
      // Each row's final state is where its last step left it (inference: the ping-pong
      // buffer of that step).
      for (int b = 0; b < batch; ++b) {
        const long fin = training ? plan.lens[b] : (plan.lens[b] & 1);
        const long to = si * BH + (perm ? perm[b] : b) * H_, from = fin * BH + b * H_;
        std::memcpy(hn + to, hs.data() + from, sizeof(T) * H_);
        if (cell_ == LSTM && !c_in_place) std::memcpy(cn + to, cs.data() + from, sizeof(T) * H_);
      }
    }
    if (!last) {
      if (use_dropout) {  // the mask of each element in the caller's order (as the reference)
        LineVec<T>& mask = cache_.masks[k + 1];
        mask.resize(TB * DH);
        if (perm) {
          const RowOrder caller_tm{batch, 1, perm};
          ws.out_a.resize(TB * DH);
          ws.out_b.resize(TB * DH);
          scatter_rows(layer_out, caller_tm, steps, batch, DH, ws.out_a.data());
          kt.dropout(ws.out_a.data(), ws.out_a.data(), ws.out_b.data(), TB * DH, dropout, seed, k,
                     nt);
          gather_rows(ws.out_a.data(), caller_tm, steps, batch, DH, layer_out);
          gather_rows(ws.out_b.data(), caller_tm, steps, batch, DH, mask.data());
        } else {
          kt.dropout(layer_out, layer_out, mask.data(), TB * DH, dropout, seed, k, nt);
        }
      }
      layer_in = layer_out;
    }
  }
  if (training) {
    cache_.valid = true;
    for (auto* group : {&cache_.inputs, &cache_.masks, &cache_.hs, &cache_.cs, &cache_.gates})
      for (LineVec<T>& v : *group) trim(v);
  }
  trim(ws);
}

template <typename T>
void Engine<T>::backward(const T* dy, const T* dhn, const T* dcn, int nthreads, T* dx, T* dh0,
                         T* dc0) {
  std::lock_guard<std::mutex> train_lock(train_mutex_);
  const ThreadBudget budget(nthreads);
  const int steps = cache_.steps, batch = cache_.batch;
  run_chosen(2, steps, batch, 2, budget.threads(),
             [&](int nt) { backward_on(dy, dhn, dcn, nt, dx, dh0, dc0); });
}

// Under train_mutex_ (backward).
template <typename T>
void Engine<T>::backward_on(const T* dy, const T* dhn, const T* dcn, int nt, T* dx, T* dh0,
                            T* dc0) {
  std::shared_lock<std::shared_mutex> lock(pack_mutex_);
  if (!cache_.valid) throw std::logic_error("backward() needs a forward(training=True) first");
  if (packed_with_ != &kernels<T>())
    throw std::logic_error("the instruction set changed between forward and backward");
  const KernelTable<T>& kt = kernels<T>();
  const int steps = cache_.steps, batch = cache_.batch;
  const long TB = (long)steps * batch, BH = (long)batch * H_, GH = (long)G_ * H_;
  const long DH = (long)D_ * H_;
  const RowPlan& plan = cache_.plan;
  const int32_t* perm = plan.order();
  const RowOrder time_major{batch, 1},
      caller{cache_.batch_first ? 1 : batch, cache_.batch_first ? steps : 1, perm};

  Workspace<T>& ws = workspace<T>();
  LineVec<T>&da = ws.da, &direct = ws.direct;
  LineVec<T>&dh = ws.dh, &dc = ws.dc;
  // A row of dA: DW values, LDA apart, an odd number of cache lines. At 4H floats rows
  // were a multiple of 4 KiB apart for H 256 and 512, in the same L1 sets, and the products
  // read 8-12 rows at once (LSTM backward, 2 threads: charrnn -4.4%, mid -4.5%).
  const long DW = (long)cell_da_width(cell_) * H_, line = 64 / sizeof(T);
  long LDA = (DW + line - 1) / line * line;
  if (LDA / line % 2 == 0) LDA += line;
  da.resize(TB * LDA);
  direct.resize(cell_has_direct(cell_) ? BH : 0);
  dh.resize(BH);
  dc.resize(cell_ == LSTM ? BH : 0);
  if (bias_) ws.db_part.resize(DW * batch);
  // A padded batch's weight and input gradients come from products over the rows inside
  // their sequences alone, gathered in step order (dA, h_prev; x and dx through the rows'
  // time order, time_rows or x_of_step); the same rows for both directions.
  const bool compact = plan.padded;
  std::vector<long>&step_rows = ws.step_rows, &time_rows = ws.time_rows;
  if (compact) rows_inside(plan, steps, batch, &step_rows, time_rows, ws.place);
  const long rows = compact ? (long)step_rows.size() : TB;
  const T* dlayer = dy;  // gradient w.r.t. the current layer's output
  for (int k = L_ - 1; k >= 0; --k) {
    const int in_size = slots_[k * D_].in_size;
    T* dx_k = dx;
    if (k > 0 || cache_.batch_first || perm) {  // inner layers' input grads alternate
      // between two buffers; dx in another order than the engine's comes from dinput_b
      LineVec<T>& buf = k % 2 ? ws.dinput_a : ws.dinput_b;
      buf.resize(TB * in_size);
      dx_k = buf.data();
    }
    const T* x_k = cache_.inputs[k].data();
    for (int d = 0; d < D_; ++d) {
      const int si = k * D_ + d;
      Slot& s = slots_[si];
      // Step order equals time order in the forward direction unless rows start late.
      const bool in_time_order = d == 0 && !plan.shifted;
      if (dhn)
        take_rows(dhn + si * BH, perm, batch, H_, dh.data());
      else
        std::fill(dh.begin(), dh.end(), T(0));
      if (cell_ == LSTM) {
        if (dcn)
          take_rows(dcn + si * BH, perm, batch, H_, dc.data());
        else
          std::fill(dc.begin(), dc.end(), T(0));
      }
      LayerBwd<T> a;
      a.cell = cell_;
      a.steps = steps;
      a.batch = batch;
      a.hidden = H_;
      a.tidx = plan.tidx[d].data();
      a.packed_whh_t = s.packed_bwd.data();
      a.hs = cache_.hs[si].data();
      a.cs = cell_ == LSTM ? cache_.cs[si].data() : nullptr;
      a.cache = cell_cache_width(cell_) > 0 ? cache_.gates[si].data() : nullptr;
      a.dy = dlayer + d * H_;
      a.ldy = DH;
      a.dyo = k == L_ - 1 ? caller : time_major;
      a.dh = dh.data();
      a.dc = cell_ == LSTM ? dc.data() : nullptr;
      a.da = da.data();
      a.ldda = LDA;
      a.direct = cell_has_direct(cell_) ? direct.data() : nullptr;
      T* g = grads_.data();
      a.db_hh = bias_ ? g + s.b_hh : nullptr;
      a.db_ih = bias_ ? g + s.b_ih : nullptr;
      a.db_part = bias_ ? ws.db_part.data() : nullptr;
      a.ldb = batch;
      if (bias_) std::fill(ws.db_part.begin(), ws.db_part.end(), T(0));
      // Rows past their end keep dh and dc as they are: the gradient passes through.
      for (auto seg = plan.segments.rbegin(); seg != plan.segments.rend(); ++seg) {
        a.s0 = seg->s0;
        a.steps = seg->s1;
        a.batch = seg->rows;
        kt.backward[cell_](a, nt);
      }
      put_rows(dh.data(), perm, batch, H_, dh0 + si * BH);
      if (cell_ == LSTM) put_rows(dc.data(), perm, batch, H_, dc0 + si * BH);

      // Weight gradients as large products after the sweep; where W_ih's and W_hh's share
      // dA (LSTM, RNN), one product over [H_prev | X] packs dA once (mid LSTM: 56.1 -> 53.7
      // ms). GRU's differ in the n rows: W_hh's product reads dA's first 3H columns, W_ih's
      // and dx skip its dn*r (GemmGaps).
      // dA is in step order; in another order than time (the reverse direction, late
      // starts), x rows are gathered in step order and dx scattered back: one dA, no second
      // one in time order (bidirectional LSTM, backward, 2 threads: I 128 H 256 B 64 T 50
      // 62.9 -> 61.1 ms, I 32 H 128 B 8 2.39 -> 2.23).
      const T* wih = params_.data() + s.w_ih;
      const T *h_rows = cache_.hs[si].data(), *x_rows = x_k;
      T* dx_rows = dx_k;
      const std::vector<long>* x_sel = nullptr;  // x (and dx) rows of the products' rows
      if (!in_time_order) {
        std::vector<long>& sel = ws.x_of_step;
        sel.clear();
        for (long i = 0; i < rows; ++i) {
          const long r = compact ? step_rows[i] : i;
          sel.push_back((long)plan.tidx[d][r] * batch + r % batch);
        }
        x_sel = &sel;
      } else if (compact) {
        x_sel = &time_rows;  // the same rows as step_rows in time order
      }
      if (compact) {  // dA rows move down in place
        compact_listed(da.data(), step_rows, DW, LDA);
        ws.rows_h.resize(rows * H_);
        gather_listed(h_rows, time_major, batch, step_rows, H_, ws.rows_h.data());
        h_rows = ws.rows_h.data();
      }
      if (x_sel) {
        ws.rows_x.resize(rows * s.in_size);
        ws.rows_dx.resize(rows * s.in_size);
        gather_listed(x_rows, time_major, batch, *x_sel, s.in_size, ws.rows_x.data());
        x_rows = ws.rows_x.data();
        dx_rows = ws.rows_dx.data();
      }
      // W_ih's rows (as dA's rows) and dx's K (as its columns) skip GRU's dn*r.
      const int gap_at = da_ih_gap_at(cell_, H_);
      if (cell_ != GRU) {
        const GemmCols2<T> ih{H_, x_rows, s.in_size, 1, g + s.w_ih, s.in_size};
        kt.gemm_cols2((int)GH, H_ + s.in_size, (int)rows, da.data(), 1, LDA, h_rows, H_, 1,
                      g + s.w_hh, H_, ih, true, nt);
      } else {
        kt.gemm((int)GH, H_, (int)rows, da.data(), 1, LDA, h_rows, H_, 1, g + s.w_hh, H_, true,
                nullptr, nt);
        kt.gemm_gapped((int)GH, s.in_size, (int)rows, da.data(), 1, LDA, {gap_at, H_, INT_MAX, 0},
                       x_rows, s.in_size, 1, g + s.w_ih, s.in_size, true, nt);
      }
      // dx = sum over directions: the first writes, the second adds.
      kt.gemm_gapped((int)rows, s.in_size, (int)GH, da.data(), LDA, 1, {INT_MAX, 0, gap_at, H_},
                     wih, s.in_size, 1, dx_rows, s.in_size, d > 0 && !x_sel, nt);
      if (x_sel) {  // zero outside the sequences
        if (d == 0) std::memset(dx_k, 0, sizeof(T) * TB * s.in_size);
        for (long i = 0; i < rows; ++i) {
          T* to = dx_k + (*x_sel)[i] * s.in_size;
          const T* from = dx_rows + i * s.in_size;
          for (int j = 0; j < s.in_size; ++j) to[j] += from[j];
        }
      }
    }
    if (k > 0) {  // through the dropout between layers k-1 and k
      if (cache_.dropout > 0) {
        const T* m = cache_.masks[k].data();
        for (long e = 0; e < TB * in_size; ++e) dx_k[e] *= m[e];
      }
      dlayer = dx_k;
    }
  }
  if (cache_.batch_first || perm) scatter_rows(ws.dinput_b.data(), caller, steps, batch, I_, dx);
  trim(ws);
}

template class Engine<float>;
template class Engine<double>;

}  // namespace rnnfast
