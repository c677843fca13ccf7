// A multi-layer, optionally bidirectional recurrent network: parameters and
// gradients in flat buffers (PyTorch's names, order and shapes), weights packed
// when set, forward over sequences and BPTT backward through the kernel table.
#pragma once
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common.h"
#include "threading.h"

namespace rnnfast {

// Buffers the kernels stream with vector loads start on a cache line: std::vector's
// operator new gives 16 bytes (glibc), so every 64-byte load of a packed panel spanned two
// lines. Buffers of 2 MiB or more start on a 2 MiB boundary and ask Linux for huge pages
// (transparent huge pages in "madvise" mode give none otherwise). A stream paced by its
// input finds its weights out of cache; with 4 KiB pages each page then costs a page walk
// from memory too, and the prefetchers stop at its edge. Zen 4, µs a step after a 10 ms
// pause (builds alternating, medians of 5 processes): one thread LSTM-512 444 -> 227,
// GRU-512 342 -> 187, LSTM-256 110 -> 67; two threads LSTM-512 227 -> 147, GRU-512 223 ->
// 99; back to back level (bench/paced.py compares both in one process).
// RNNFAST_HUGE_PAGES=0 turns the request off (a huge page keeps 2 MiB resident at once).
bool huge_pages();
bool set_huge_pages(bool on);  // for tests and bench/paced.py; returns the previous value
// Training's gate cache written past the caches: -1 by its size, 0 never, 1 always (tests);
// returns the previous mode.
int set_stream_cache(int mode);
template <typename T>
struct LineAllocator {
  typedef T value_type;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  static constexpr size_t kHuge = size_t(2) << 20;
  static size_t align_for(size_t bytes) { return bytes >= kHuge ? kHuge : 64; }
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    void* p = ::operator new(bytes, std::align_val_t(align_for(bytes)));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= kHuge && huge_pages())
      madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);  // a hint: may fail
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    ::operator delete(p, std::align_val_t(align_for(n * sizeof(T))));
  }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};
template <typename T>
using LineVec = std::vector<T, LineAllocator<T>>;

// The order and grouping of a call's rows. Where some sequences end before the last step,
// rows run sorted by length, longest first (stable), so the rows active at step s are the
// first n(s) in either direction: the kernels run once per run of steps with the same n
// (a segment) on those rows alone, and rows past their end cost nothing.
struct RowPlan {
  struct Segment {
    int s0, s1, rows;  // steps [s0, s1) run rows [0, rows)
  };
  std::vector<int32_t> perm;     // engine row -> caller row; empty: the caller's order
  std::vector<int32_t> lens;     // steps of each engine row
  std::vector<int32_t> tidx[2];  // per direction: (step, engine row) -> time, -1 past the end
  std::vector<Segment> segments;
  bool padded = false;           // some sequence ends before the last step
  bool shifted = false;          // some sequence starts after step 0
  int plain_steps = -1, plain_batch = -1, plain_dirs = -1;  // a plan without lengths, kept
  const int32_t* order() const { return perm.empty() ? nullptr : perm.data(); }
};

struct ParamEntry {
  std::string name;
  long offset;
  std::vector<long> shape;
};

template <typename T>
class Engine {
 public:
  Engine(int cell, int input_size, int hidden_size, int num_layers, bool bidirectional, bool bias);

  int cell() const { return cell_; }
  int input_size() const { return I_; }
  int hidden_size() const { return H_; }
  int num_layers() const { return L_; }
  int directions() const { return D_; }
  bool has_bias() const { return bias_; }
  const std::vector<ParamEntry>& layout() const { return layout_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  long num_params() const { return (long)params_.size(); }

  // Re-derives packed weights and summed biases from params(); call after writing them.
  void repack();
  // Copies num_params() values into params() and repacks, excluding concurrent forwards.
  void assign_params(const T* src);
  void zero_grad();

  // x (T,B,I), or (B,T,I) when batch_first; h0/c0 (L*D,B,H) or null; lengths (B) or null,
  // 1 <= len <= T; starts (B) or null: row b's valid steps are [start, start + len)
  // (0 <= start <= T - len), else [0, len). y (T,B,D*H) (batch_first: (B,T,D*H)), hn/cn
  // (L*D,B,H) are written (hn/cn may be h0/c0: each layer reads its initial state before it
  // writes its final one). training keeps what backward needs. x_rows_apart > 0 (one
  // inference step only): x's batch rows lie that many rows of I apart (a slice of a longer
  // batch-first sequence) instead of next to each other.
  void forward(const T* x, int steps, int batch, const T* h0, const T* c0, const int32_t* lengths,
               const int32_t* starts, bool training, double dropout, uint64_t seed, int nthreads,
               T* y, T* hn, T* cn, bool batch_first = false, long x_rows_apart = 0);
  // dy (T,B,D*H), dhn/dcn or null. Writes dx (T,B,I), dh0/dc0; adds into grads(). dy and
  // dx are (B,T,.) when the forward was batch_first.
  void backward(const T* dy, const T* dhn, const T* dcn, int nthreads, T* dx, T* dh0, T* dc0);
  // Sequence calls (T > 1) of at most kChoiceFlops, and their backward, choose by timing
  // between one thread and the count, as streams do (StepThreadChoice): one choice a kind
  // of call (inference, training forward, backward), shape and count. Either gives the
  // same bits. Larger calls always run on the count.
  static constexpr double kChoiceFlops = 50e6;
  bool has_cache() const { return cache_.valid; }
  bool cache_batch_first() const { return cache_.batch_first; }
  int cache_steps() const { return cache_.steps; }
  int cache_batch() const { return cache_.batch; }

 private:
  struct Slot {  // one layer and direction
    int in_size;
    long w_ih, w_hh, b_ih, b_hh;  // offsets into params_ (-1 when no bias)
    LineVec<T> packed_cat, packed_bwd, packed_ih, bias_sum;
    // the threads' runs of one-step calls and of sequences (recurrence.h)
    std::unique_ptr<PanelSplit> split = std::make_unique<PanelSplit>();
    std::unique_ptr<PanelSplit> seq_split = std::make_unique<PanelSplit>();
  };
  struct Cache {
    bool valid = false;
    int steps = 0, batch = 0;
    double dropout = 0;
    bool batch_first = false;            // the caller's x, y, dy, dx are (B,T,.)
    RowPlan plan;
    std::vector<LineVec<T>> inputs;  // per layer: its input (after dropout), engine row order
    std::vector<LineVec<T>> masks;   // per layer k >= 1: dropout mask of its input
    std::vector<LineVec<T>> hs, cs, gates;  // per slot
  };

  std::shared_lock<std::shared_mutex> packed_lock();  // held, on weights packed for the ISA
  void repack_locked();
  void forward_on(const T* x, int steps, int batch, const T* h0, const T* c0,
                  const int32_t* lengths, const int32_t* starts, bool training, double dropout,
                  uint64_t seed, int nt, T* y, T* hn, T* cn, bool batch_first,
                  long x_rows_apart);
  void backward_on(const T* dy, const T* dhn, const T* dcn, int nt, T* dx, T* dh0, T* dc0);
  // FLOPs of a forward over steps x batch rows (shared/rnn-equations.md), all layers.
  double forward_flops(int steps, int batch) const;
  // run(n) on n = one thread or nt, as the call's choice says (kind: 0 inference, 1
  // training forward, 2 backward; its FLOPs: `scale` times its forward's, 2 for a
  // backward).
  template <class Run>
  void run_chosen(int kind, int steps, int batch, double scale, int nt, Run&& run);
  void plan_rows(int steps, int batch, const int32_t* lengths, const int32_t* starts,
                 RowPlan& plan) const;

  int cell_, I_, H_, L_, D_, G_;
  bool bias_;
  LineVec<T> params_, grads_;
  std::vector<ParamEntry> layout_;
  std::vector<Slot> slots_;
  const void* packed_with_ = nullptr;  // the kernel table that packed the weights
  Cache cache_;
  std::shared_mutex pack_mutex_;   // inference shares; repack excludes
  std::mutex train_mutex_;         // training forward/backward touch the cache
  std::atomic<unsigned long> steps_run_{0};  // forward steps so far: their walks' direction
  // run_chosen's, one a kind of call, shape and thread count. Cycles of 1024 calls, not a
  // stream's 256: where neither choice is 1.5x faster (cycles not lengthened), a probe's 16
  // calls every 256 would fall into about 3 in 10 of the bench's 20 ms samples of RNN
  // `small` training (~150 calls a round: 90 priming, 60 timed); every 1024, under 1 in 10.
  struct CallChoice {
    int kind = -1, steps = 0, batch = 0, nt = 0;
    unsigned long used = 0;  // when last used (calls_)
    StepThreadChoice choice{4 * StepThreadChoice::kCycle, true};  // watched
  };
  std::mutex choice_mutex_;
  CallChoice choices_[6];
  unsigned long calls_ = 0;
};

// Batch-B streaming over an engine: the state lives here between steps, and a step
// is the engine's one-step forward writing the new state in place. Steps on one
// stream are serialized; streams over one engine run concurrently.
template <typename T>
class Stream {
 public:
  Stream(Engine<T>& engine, int batch)
      : engine_(engine),
        batch_(batch),
        h_((size_t)engine.num_layers() * engine.directions() * batch * engine.hidden_size()),
        c_(engine.cell() == LSTM ? h_.size() : 0) {}
  const Engine<T>& engine() const { return engine_; }
  int batch() const { return batch_; }
  int num_threads() const { return nthreads_; }
  void set_num_threads(int n) {  // the next step probes the new count afresh
    std::lock_guard<std::mutex> lock(mutex_);
    nthreads_ = n;
    choice_.restart();
  }
  T* h() { return h_.data(); }
  T* c() { return c_.empty() ? nullptr : c_.data(); }
  // x (B, I) -> y (B, D*H); the state moves one step. x's rows lie x_rows_apart rows of I
  // apart (0: next to each other).
  void step(const T* x, T* y, long x_rows_apart = 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    if ((nthreads_ > 0 ? nthreads_ : max_threads()) == 1) {
      run(x, x_rows_apart, y, 1);
      return;
    }
    // one thread or the count (threading.h)
    StepThreadChoice::run(
        choice_.next(), nthreads_, [&](int n) { run(x, x_rows_apart, y, n); },
        [&](double start, double seconds) { choice_.record(start, seconds); });
  }

 private:
  void run(const T* x, long x_rows_apart, T* y, int nthreads) {
    engine_.forward(x, 1, batch_, h(), c(), nullptr, nullptr, false, 0.0, 0, nthreads, y, h(),
                    c(), false, x_rows_apart);
  }

  Engine<T>& engine_;
  int batch_;
  int nthreads_ = 0;  // at most this many threads; 0: the process-wide setting
  LineVec<T> h_, c_;  // (L*D, B, H), zero at the start
  std::mutex mutex_;
  StepThreadChoice choice_;  // on more than one thread
};

}  // namespace rnnfast
