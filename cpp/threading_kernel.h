// Per-ISA helpers for kernels: thread ids, how many threads a product is worth,
// and the flush-denormals-to-zero scope every parallel region opens.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>
#include "simd.h"
#include "threading.h"
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#include <xmmintrin.h>
#endif

namespace rnnfast {
namespace RF_NS {

static inline int rf_thread_num() { return pool_thread_num(); }
static inline int rf_team_size() { return pool_team_size(); }
static inline void rf_barrier() { pool_barrier(); }

// The first of thread `id`'s items when n items are shared among `team` threads in
// contiguous, near-equal runs (thread id has [rf_share(n, id, team), rf_share(n, id + 1, team))).
static inline long rf_share(long n, int id, int team) { return n * id / team; }

// Runs body() on a team of nt threads of the pool (threading.h), or directly on this
// one when nt <= 1. Bodies split their tasks with rf_for, pool_next_task or rf_share of
// rf_thread_num() / rf_team_size(); either runs whole on a lone thread. independent:
// body has no barrier (see pool_run).
template <class F>
static inline void rf_parallel(int nt, F&& body, bool independent = false) {
  typedef std::remove_reference_t<F> Body;
  pool_run(nt, [](void* b) { (*static_cast<Body*>(b))(); },
           const_cast<void*>(static_cast<const void*>(&body)), independent);
}

// f(i) for this thread's share of [0, n) (rf_share).
template <class F>
static inline void rf_each(long n, F&& f) {
  const int id = rf_thread_num(), team = rf_team_size();
  for (long i = rf_share(n, id, team), end = rf_share(n, id + 1, team); i < end; ++i) f(i);
}

// rf_each, then a barrier of the team. (Loops with large bodies are written out with
// rf_share instead: as lambdas, GCC compiled gemm_impl's 12% slower.)
template <class F>
static inline void rf_for(long n, F&& f) {
  rf_each(n, f);
  rf_barrier();
}

// A timestamp for comparing spans within a call (TSC ticks on x86, 16 ns a read against 29
// for steady_clock here; else nanoseconds), not wall time. Compared across cores: Linux
// keeps the TSC as its clock only where the cores' agree (PanelSplit::record drops timings
// that show them apart).
static inline double rf_ticks() {
#if defined(__x86_64__) || defined(__i386__)
  return (double)__rdtsc();
#else
  return (double)std::chrono::steady_clock::now().time_since_epoch().count();
#endif
}

// A test probe's wait (delay_steps): asleep, as a late worker is (delay_workers).
static inline void probe_wait_us(int us) {
  if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
}

// Threads worth using for `flops` of work: at least 0.1 MFLOP (~1.5 us) per thread, so
// tiny products stay on one thread. Measured on `small` (B=8, H=128, 2 cores): a 2 MFLOP
// threshold kept every step on one thread, and 0.1 MFLOP made LSTM 1.8x, GRU 1.8x and RNN
// 1.7x faster there.
static inline int rf_threads_for(int nthreads, double flops) {
  double by_work = flops / 0.1e6;
  int n = by_work < 1.0 ? 1 : (by_work < nthreads ? (int)by_work : nthreads);
  return n < 1 ? 1 : n;
}

// Work of an M x N x K product on weights that stream from memory: with few rows it is
// bound by reading the N x K weights, so count a single row as 2. (Counted as 8, batch-1
// RNN-128 went to 2 threads: 3.1 us a step when the other core wakes fast, 5.2 when it
// wakes slowly, against 2.7 on one thread.)
static inline double rf_step_work(long M, long N, long K) {
  return 2.0 * (M < 2 ? 2 : M) * N * K;
}

// Sets flush-to-zero and denormals-are-zero for this thread; restores on exit.
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(__x86_64__) || defined(__i386__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);
#elif defined(__aarch64__)
    asm volatile("mrs %0, fpcr" : "=r"(saved_));
    const unsigned long long fz = saved_ | (1ull << 24);  // FZ: flush denormals to zero
    asm volatile("msr fpcr, %0" : : "r"(fz));
#endif
  }
  ~FlushDenormals() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_setcsr(saved_);
#elif defined(__aarch64__)
    asm volatile("msr fpcr, %0" : : "r"(saved_));
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#if defined(__aarch64__)
  unsigned long long saved_ = 0;
#else
  unsigned saved_ = 0;
#endif
};

#define RF_FLUSH_DENORMALS_SCOPE FlushDenormals rf_ftz_scope_

// Tasks [0, n) shared as rf_share does, each thread's run walked from its front, and a
// thread done with its own run taking the other runs' last tasks one at a time, so a thread
// slowed by its CPU (another tenant, a late wake) does not hold the barrier that follows.
// Static runs keep each thread on the same weights step after step (its L2); only the
// imbalance moves. A grab is a compare-and-swap on the run's own line, which stays in its
// owner's cache until a thief arrives (one grab per task from a shared counter, tried in
// the ninth session, cost a line's trip between the cores each). cpp/README.md, Intel.
// run(gen, n, reverse, f) in a region: f(task) once per task, each run walked back to front
// when reverse. Calls on one object must be apart by a barrier and pass a gen other than
// the call before's (a step counter). A slot packs (gen, front, back); one still of another
// gen is set up by whichever thread reaches it first, so a call needs no barrier of its own.
class StealShares {
 public:
  explicit StealShares(int nt) : slot_(nt > 0 ? nt : 1) {}

  template <class F>
  void run(long gen, long n, bool reverse, F&& f) {
    const int me = rf_thread_num(), team = rf_team_size();
    if (n >= (1L << 24)) {  // more tasks than a slot counts: the static runs
      const long first = rf_share(n, me, team), count = rf_share(n, me + 1, team) - first;
      for (long i = 0; i < count; ++i) f(first + (reverse ? count - 1 - i : i));
      return;
    }
    if (me == 1) probe_wait_us(step_delay_us());  // test probe
    const uint64_t g = (uint64_t)(gen % 0xFFFF) + 1;  // never 0, the unset slots' gen
    for (int d = 0; d < team; ++d) {
      const int v = (me + d) % team;
      bool took = false;
      const long first = rf_share(n, v, team), count = rf_share(n, v + 1, team) - first;
      std::atomic<uint64_t>& c = slot_[v].v;
      uint64_t st = c.load(std::memory_order_relaxed);
      for (;;) {
        if (st >> 48 != g) {
          const uint64_t fresh = g << 48 | (uint64_t)count << 24;
          if (!c.compare_exchange_weak(st, fresh, std::memory_order_relaxed)) continue;
          st = fresh;
        }
        const long front = (long)(st & 0xFFFFFF), back = (long)(st >> 24 & 0xFFFFFF);
        if (front >= back) break;
        const bool own = d == 0;  // own run from the front, another's from the back
        const uint64_t next = own ? st + 1 : st - (uint64_t(1) << 24);
        if (!c.compare_exchange_weak(st, next, std::memory_order_relaxed)) continue;
        const long i = own ? front : back - 1;
        if (!own && !took) took = true, note_steal();
        f(first + (reverse ? count - 1 - i : i));
        st = c.load(std::memory_order_relaxed);
      }
    }
  }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> v{0};
  };
  std::vector<Slot> slot_;
};

// Runs of steps that a thread done with its own helps with (the time loops split by rows,
// forward and backward, recurrence.h). Each thread owns a run: steps [s0, s1) of its own
// rows, tasks_of(id) tasks a step, with no barrier between steps since its rows never meet
// another thread's.
// A thread done with its run asks an unfinished one for help; its owner, at its next step,
// hands the rest over as joint steps: both claim the step's tasks (the owner from the
// front, the helper from the back, on one line) and wait for the step's last task before
// the next step, whose tasks read its output. Without it the slower of two CPUs held the
// join for its whole run (cpp/README.md, twenty-third session).
// run(s0, s1, tasks_of, f) in a region: f(id, s, task) once per task of every run (id: the
// run's owner), in step order within a run. One object per region.
class HelpedRuns {
 public:
  // help: whether threads help at all (else each runs its own run alone).
  HelpedRuns(int nt, bool help) : help_(help), run_(nt > 0 ? nt : 1) {}

  template <class N, class F>
  void run(long s0, long s1, N&& tasks_of, F&& f) {
    const int me = rf_thread_num(), team = rf_team_size();
    Run& own = run_[me];
    own.ctl.store(kAlone, std::memory_order_release);
    const long n = tasks_of(me);
    const int delay = me == 1 ? step_delay_us() : 0;  // test probe
    long s = s0;
    for (; s < s1 && own.ctl.load(std::memory_order_relaxed) != kAsked; ++s) {
      probe_wait_us(delay);
      for (long j = 0; j < n; ++j) f(me, s, j);
    }
    if (s < s1) {  // asked: the rest as joint steps (h of step s - 1 published)
      own.ctl.store(kJoint + s, std::memory_order_release);
      joint(own, me, true, s, s1, n, delay, f);
    } else {
      own.ctl.exchange(kDone, std::memory_order_acq_rel);  // seen by a helper that asked since
    }
    // Help the others still running alone (not those yet to start: a worker yet to take its
    // job may have it run by its caller, pool_run).
    for (int d = 1; d < team && help_; ++d) {
      const int g = (me + d) % team;
      Run& r = run_[g];
      long v = kAlone;
      if (r.ctl.load(std::memory_order_relaxed) != kAlone ||
          !r.ctl.compare_exchange_strong(v, kAsked, std::memory_order_acq_rel))
        continue;
      for (int i = 0; (v = r.ctl.load(std::memory_order_acquire)) == kAsked; ++i) pool_spin(i);
      if (v == kDone) continue;
      note_help();
      joint(r, g, false, v - kJoint, s1, tasks_of(g), delay, f);
    }
  }

 private:
  static constexpr long kIdle = -1, kAlone = 0, kAsked = 1, kJoint = 2;  // kJoint + first step
  static constexpr long kDone = 0x7fffffffffffffffL;
  struct alignas(64) Run {
    std::atomic<long> ctl{kIdle};
    alignas(64) std::atomic<uint64_t> slot{0};  // (gen, back, front) of the joint step
    alignas(64) std::atomic<long> done{0};      // joint steps' tasks finished, + 1 a thread
  };

  template <class F>
  static void joint(Run& r, int g, bool owner, long js, long s1, long n, int delay, F& f) {
    for (long s = js; s < s1; ++s) {
      probe_wait_us(delay);
      const uint64_t gen = (uint64_t)((s - js) % 0xFFFF) + 1;  // never 0, the unset slot's
      long mine = 0;
      uint64_t st = r.slot.load(std::memory_order_relaxed);
      for (;;) {
        if (st >> 48 != gen) {  // the first to reach the step sets it up
          const uint64_t fresh = gen << 48 | (uint64_t)n << 24;
          if (!r.slot.compare_exchange_weak(st, fresh, std::memory_order_relaxed)) continue;
          st = fresh;
        }
        const long front = (long)(st & 0xFFFFFF), back = (long)(st >> 24 & 0xFFFFFF);
        if (front >= back) break;
        const uint64_t next = owner ? st + 1 : st - (uint64_t(1) << 24);
        if (!r.slot.compare_exchange_weak(st, next, std::memory_order_relaxed)) continue;
        f(g, s, owner ? front : back - 1);
        ++mine;
        st = r.slot.load(std::memory_order_relaxed);
      }
      // Both arrive (the + 1 each) before either goes on: a thread that claimed nothing
      // would otherwise meet the next step's slot in its loop and set it up again.
      const long target = (s - js + 1) * (n + 2);
      if (r.done.fetch_add(mine + 1, std::memory_order_acq_rel) + mine + 1 < target)
        for (int i = 0; r.done.load(std::memory_order_acquire) < target; ++i) pool_spin(i);
    }
  }

  bool help_;
  std::vector<Run> run_;
};

// rf_for shared through steal (its run for this gen, then the barrier) when given.
template <class F>
static inline void rf_for(long n, F&& f, StealShares* steal, long gen) {
  if (!steal) return rf_for(n, f);
  steal->run(gen, n, false, f);
  rf_barrier();
}

// A region that is one loop: f(i) for i in [0, n) on up to nt threads (no more than n),
// denormals flushed. Its threads never wait for each other (the join is its only barrier),
// so a late worker's share runs on the caller (pool_run).
template <class F>
static inline void rf_parallel_for(int nt, long n, F&& f) {
  if (nt > n) nt = n < 1 ? 1 : (int)n;
  rf_parallel(
      nt,
      [&] {
        RF_FLUSH_DENORMALS_SCOPE;
        rf_each(n, f);
      },
      true);
}

}  // namespace RF_NS
}  // namespace rnnfast
