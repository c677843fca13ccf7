#include "threading.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace rnnfast {

namespace {
std::atomic<int> g_threads{0};     // 0 = default
std::atomic<bool> g_forked{false};
std::atomic<int> g_threads_in_use{0};   // by calls on the process-wide budget

// CPUs this process may run on (its affinity mask), else the machine's.
int usable_cpus() {
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
    return CPU_COUNT(&set);
#endif
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? (int)hc : 1;
}

// Adds to `in_use` what it takes of `limit` less what is in use, up to `want` and at least
// one; -> that.
int take_free(std::atomic<int>& in_use, int limit, int want) {
  int cur = in_use.load(std::memory_order_relaxed), take;
  do {
    const int free_now = limit - cur;
    take = want < free_now ? want : (free_now > 1 ? free_now : 1);
  } while (!in_use.compare_exchange_weak(cur, cur + take));
  return take;
}

int default_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {  // "4" or "4,2": the first
      const long v = std::strtol(env, nullptr, 10);
      if (v > 0) return (int)(v < 4096 ? v : 4096);
    }
    return usable_cpus();
  }();
  return n;
}
}  // namespace

constexpr int kMaxThreads = 4096;

int max_threads() {
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

void set_max_threads(int n) { g_threads.store(n > 0 ? (n < kMaxThreads ? n : kMaxThreads) : 0); }

ThreadBudget::ThreadBudget(int requested)
    : n_(requested > 0 ? (requested < kMaxThreads ? requested : kMaxThreads) : max_threads()),
      shared_(requested <= 0) {
  if (shared_) n_ = take_free(g_threads_in_use, n_, n_);  // what is free of the count
}

ThreadBudget::~ThreadBudget() {
  if (shared_) g_threads_in_use -= n_;
}

bool in_forked_child() { return g_forked.load(); }

// ------------------------------------------------------------------------------ the pool
// Our own pool rather than OpenMP's: GNU OpenMP hangs a child forked after the parent used
// a team (so a forked child had to run on one thread), and on the 2-core Zen 5 VM a GOMP
// fork and join of two threads cost ~410 ns (quiet) to ~850 ns (slow spells) against
// ~100-140 ns here, and a GOMP barrier ~190-410 ns against ~50-190 (cpp/README.md).
// Workers wait for work spinning, then yielding, then asleep; a caller claims idle
// workers for its team (several Python threads calling at once get separate teams).
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Threads of the multi-threaded regions running now (one cut down to its caller counts
// as 1), and the CPUs there are for them (set with the pool).
std::atomic<int> g_team_threads{0};
std::atomic<int> g_cpus{1};
std::atomic<int> g_worker_delay_us{0};  // test probes (delay_workers, late_shares_run)
std::atomic<long> g_late_shares{0};
std::atomic<long> g_steals{0};
std::atomic<long> g_helps{0};
std::atomic<int> g_step_delay_us{0};

// A test probe's count, written only once a test has read one: the steps of streams
// (PanelSplit's, and batched ones' row sweeps) would otherwise write a process-wide line
// each, which streams on other threads would pull back and forth.
std::atomic<bool> g_counting{false};
struct GatedCount {
  std::atomic<long> n{0};
  void add() {
    if (g_counting.load(std::memory_order_relaxed)) n.fetch_add(1, std::memory_order_relaxed);
  }
  long read() {
    g_counting.store(true);
    return n.load();
  }
};
GatedCount g_split_toward, g_split_away, g_row_sweeps, g_calls_on_one;

// Waits until done() holds: spins, then yields the CPU between checks (a team member
// that lost its CPU gets it back sooner), at once when teams outnumber the CPUs.
int spin_rounds() {
  return g_team_threads.load(std::memory_order_relaxed) > g_cpus.load(std::memory_order_relaxed)
             ? 20
             : 2000;
}

template <class Done>
void wait_until(Done done) {
  const int spins = spin_rounds();
  for (int i = 0; !done();) {
    if (i < spins) {
      cpu_relax();
      ++i;
    } else {
      std::this_thread::yield();
    }
  }
}

struct Team {
  void (*fn)(void*);
  void* ctx;
  int n;
  alignas(64) std::atomic<int> arrived{0};
  alignas(64) std::atomic<unsigned> generation{0};
  alignas(64) std::atomic<long> next_task{0};
};

struct alignas(64) Worker {
  std::atomic<unsigned> go{0};  // bumped by the caller that hands this worker a job
  Team* team = nullptr;
  int id = 0;
  alignas(64) std::atomic<unsigned> done{0};  // = go once the job has finished
  std::atomic<unsigned> taken{0};  // the last job the worker or (late worker) its caller took
  alignas(64) std::atomic<bool> busy{true};   // claimed by a caller (or being created)
  std::atomic<bool> sleeping{false};
  std::atomic<int> avoid_cpu{-1};  // its creator's or waker's CPU (see leave_cpu)
  std::mutex mutex;
  std::condition_variable wake;
};

// The CPU the calling thread runs on, -1 where unknown.
int current_cpu() {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

// A worker created or woken onto its caller's CPU shares it with the caller until the
// kernel moves it; seen for 50 ms and more on the 2-core VM when the other CPU was busy
// (another library's spinning thread) as the worker started: a 2-thread `small` GRU then
// ran at half the speed of one thread. Such a worker moves itself: barred from that CPU,
// then allowed every CPU again (where it now runs, it stays). Only on creation and wake,
// not per job.
void leave_cpu(int cpu) {
#ifdef __linux__
  if (cpu < 0 || sched_getcpu() != cpu) return;
  cpu_set_t all, others;
  if (sched_getaffinity(0, sizeof(all), &all) != 0) return;
  others = all;
  CPU_CLR(cpu, &others);
  if (CPU_COUNT(&others) == 0) return;
  if (sched_setaffinity(0, sizeof(others), &others) == 0) sched_setaffinity(0, sizeof(all), &all);
#else
  (void)cpu;
#endif
}

// A worker spins for kSpinTime, yields until kYieldTime, then sleeps until woken. A woken
// worker may be placed on its waker's CPU and share it until the kernel moves it (a
// stream on one thread for 12 ms between probes of two: LSTM-128 steps averaged 3.6 us
// with ~3.1 typical; yielding for 50 ms instead of 2, 3.1 and 3.1).
constexpr auto kQuietTime = std::chrono::microseconds(20);
constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr auto kYieldTime = std::chrono::milliseconds(20);

// A thread's team, its number in it and (pool_next_task) where its current loop's tasks
// start. Initial-exec TLS: one load, not a __tls_get_addr call per access (libgomp does
// the same); 24 bytes of the static TLS that glibc keeps for modules loaded later.
struct Membership {
  Team* team = nullptr;
  int id = 0;
  long task_base = 0;
};
__attribute__((tls_model("initial-exec"))) thread_local Membership tls;

void run_job(Team* team, int id) {
  tls = Membership{team, id, 0};
  team->fn(team->ctx);
  tls = Membership();
}

// Takes job g of w for the calling thread (the worker, or its caller in place of a late
// worker): true for exactly one of them. Every earlier job was taken before g was handed
// out, so taken == g - 1 until one of them takes it; a worker late enough to find later
// jobs handed out finds its own taken.
bool take(Worker* w, unsigned g) {
  unsigned before = g - 1;
  return w->taken.compare_exchange_strong(before, g, std::memory_order_acq_rel);
}

void worker_main(Worker* w) {
  leave_cpu(w->avoid_cpu.load(std::memory_order_relaxed));
  unsigned seen = 0;
  for (;;) {
    unsigned g;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; (g = w->go.load(std::memory_order_acquire)) == seen; ++i) {
      if ((i & 255) != 255) {
        cpu_relax();
        continue;
      }
      const auto idle = std::chrono::steady_clock::now() - t0;
      if (idle < kQuietTime) continue;
      // Other teams hold every CPU: sleep rather than take one from them. (Read only after
      // kQuietTime: reading the count's line between a stream's steps would make the
      // caller's next update of it wait for the line.)
      const bool crowded = g_team_threads.load(std::memory_order_relaxed) >=
                           g_cpus.load(std::memory_order_relaxed);
      if (idle < kSpinTime && !crowded) continue;
      if (idle < kYieldTime && !crowded) {
        std::this_thread::yield();
        continue;
      }
      // Asleep: the caller sees `sleeping` (both sequentially consistent) or we see go.
      w->sleeping.store(true);
      if (w->go.load() == seen) {
        std::unique_lock<std::mutex> lock(w->mutex);
        w->wake.wait(lock, [&] { return w->go.load() != seen; });
      }
      w->sleeping.store(false);
      leave_cpu(w->avoid_cpu.load(std::memory_order_relaxed));
    }
    seen = g;
    const int delay = g_worker_delay_us.load(std::memory_order_relaxed);
    if (delay > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay));
    if (take(w, g)) run_job(w->team, w->id);  // else its caller ran it (pool_run)
    w->done.store(g, std::memory_order_release);
  }
}

constexpr int kMaxWorkers = 4096;

struct Pool {
  std::atomic<Worker*> slots[kMaxWorkers] = {};
  std::atomic<int> count{0};
  std::atomic_flag adding = ATOMIC_FLAG_INIT;

  // Claims up to n idle workers into out; -> how many. Creates workers when too few are
  // idle (as many as the most threads ever asked for at once, less the callers).
  int claim(int n, Worker** out) {
    int got = 0;
    const int c = count.load(std::memory_order_acquire);
    for (int i = 0; i < c && got < n; ++i) {
      Worker* w = slots[i].load(std::memory_order_acquire);
      bool idle = false;
      if (!w->busy.load(std::memory_order_relaxed) && w->busy.compare_exchange_strong(idle, true))
        out[got++] = w;
    }
    if (got == n) return got;
    while (adding.test_and_set(std::memory_order_acquire)) cpu_relax();
    while (got < n) {
      const int i = count.load(std::memory_order_relaxed);
      if (i >= kMaxWorkers) break;
      Worker* w = new Worker();  // busy from the start: ours
      w->avoid_cpu.store(current_cpu(), std::memory_order_relaxed);
      try {
        std::thread(worker_main, w).detach();
      } catch (...) {  // no more threads: run with those we have
        delete w;
        break;
      }
      slots[i].store(w, std::memory_order_release);
      count.store(i + 1, std::memory_order_release);
      out[got++] = w;
    }
    adding.clear(std::memory_order_release);
    return got;
  }
};

// Never destroyed: workers outlive static destruction. A forked child has none of the
// parent's threads, so it starts a pool of its own (the parent's is left as it was).
std::atomic<Pool*> g_pool{nullptr};

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return *p;
  Pool* fresh = new Pool();
  g_cpus.store(usable_cpus());
  if (g_pool.compare_exchange_strong(p, fresh)) return *fresh;
  delete fresh;
  return *p;
}

void on_fork_child() {
  g_forked.store(true);
  g_pool.store(nullptr);
  g_threads_in_use.store(0);  // calls of other threads did not come along
  g_team_threads.store(0);
}

struct AtForkRegistration {
  AtForkRegistration() { pthread_atfork(nullptr, nullptr, on_fork_child); }
} g_atfork;

}  // namespace

int pool_thread_num() { return tls.team ? tls.id : 0; }
int pool_team_size() { return tls.team ? tls.team->n : 1; }

void pool_barrier() {
  Team* t = tls.team;
  if (!t || t->n == 1) return;
  const unsigned g = t->generation.load(std::memory_order_acquire);
  if (t->arrived.fetch_add(1, std::memory_order_acq_rel) == t->n - 1) {
    t->arrived.store(0, std::memory_order_relaxed);
    t->generation.store(g + 1, std::memory_order_release);
  } else {
    wait_until([&] { return t->generation.load(std::memory_order_acquire) != g; });
  }
}

// The team's counter only grows: a loop of n tasks takes n + team-size tickets (each
// thread's last grab fails), so every thread knows where the next loop starts.
bool pool_next_task(long n, long* task) {
  Team* t = tls.team;
  if (!t) {  // a team of one: tls.task_base counts this thread's own tasks
    if (tls.task_base < n) {
      *task = tls.task_base++;
      return true;
    }
    tls.task_base = 0;
    return false;
  }
  const long i = t->next_task.fetch_add(1, std::memory_order_relaxed) - tls.task_base;
  if (i < n) {
    *task = i;
    return true;
  }
  tls.task_base += n + t->n;
  return false;
}

void pool_spin(int round) {
  if (round < spin_rounds())
    cpu_relax();
  else
    std::this_thread::yield();
}

void pool_run(int nt, void (*fn)(void*), void* ctx, bool independent) {
  if (nt <= 1 || tls.team) {  // alone, or nested: a team of one
    const Membership outer = tls;
    tls = Membership();
    fn(ctx);
    tls = outer;
    return;
  }
  // Teams never outnumber the CPUs: a region takes at most the CPUs that other regions
  // running now leave (at least its caller's). With 4 threads on 2 cores, small training
  // steps had run 2.2x slower than on 2 (OpenMP's 4 threads 8.6x); two Python threads
  // running 2-thread models at once, 1.6x slower than OpenMP's teams.
  Pool& pl = pool();
  const int cpus = g_cpus.load(std::memory_order_relaxed);
  nt = take_free(g_team_threads, cpus, nt < kMaxWorkers ? nt : kMaxWorkers);
  if (nt <= 1) {
    fn(ctx);
    g_team_threads.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  Worker* stack_workers[16];
  Worker** workers = nt - 1 <= 16 ? stack_workers : new Worker*[nt - 1];
  Team team;
  team.fn = fn;
  team.ctx = ctx;
  const int k = pl.claim(nt - 1, workers);
  team.n = k + 1;
  for (int j = 0; j < k; ++j) {
    Worker* w = workers[j];
    w->team = &team;
    w->id = j + 1;
    // Sequentially consistent, against the worker's `sleeping`. Only the claiming caller
    // writes go, so its job is done when done == go.
    w->go.store(w->go.load(std::memory_order_relaxed) + 1);
    if (w->sleeping.load()) {
      {
        std::lock_guard<std::mutex> lock(w->mutex);
        w->avoid_cpu.store(current_cpu(), std::memory_order_relaxed);
      }
      w->wake.notify_one();
    }
  }
  run_job(&team, 0);  // kernels do not throw
  for (int j = 0; j < k; ++j) {
    Worker* w = workers[j];
    const unsigned g = w->go.load(std::memory_order_relaxed);
    // A late worker's share runs here; the worker, when it comes, finds the job taken and
    // touches nothing of the team (which lives on this stack).
    if (independent && w->taken.load(std::memory_order_acquire) != g && take(w, g)) {
      run_job(&team, j + 1);
      g_late_shares.fetch_add(1, std::memory_order_relaxed);
    } else {
      wait_until([&] { return w->done.load(std::memory_order_acquire) == g; });
    }
    w->busy.store(false, std::memory_order_release);
  }
  g_team_threads.fetch_sub(nt, std::memory_order_relaxed);
  if (workers != stack_workers) delete[] workers;
}

StepThreadChoice::Plan StepThreadChoice::next() {
  switch (phase_) {
    case kWarm:
      slot_ = -1;
      return {false, true};
    case kProbing: {
      const int arm = (int)(pos_ / kBlock) & 1, in_block = (int)(pos_ % kBlock);
      const int counted = (int)(pos_ / (2 * kBlock)) * (kBlock - 1) + in_block - 1;
      slot_ = in_block > 0 ? arm * kCounted + counted : -1;
      if (slot_ < 0) ++pos_;  // untimed: moves on at once (a block's last step is timed)
      return {arm == 1, slot_ >= 0};
    }
    case kRun:  // timed where watched, but for the cycle's last step
      if (++pos_ < run_steps_) return {use_one_, watch_};
      end_cycle();  // leaves use_one_ as it is
      return {use_one_, false};
  }
  return {false, false};
}

void StepThreadChoice::end_cycle() {
  pos_ = 0;
  phase_ = use_one_ ? kWarm : kProbing;
}

void StepThreadChoice::record(double start, double seconds) {
  if (phase_ == kRun) {  // a watched run step (no other step is timed in this phase)
    const bool moved = seconds > kSlow * chosen_ || kSlow * seconds < chosen_;
    slow_ = moved ? slow_ + 1 : 0;
    if (slow_ >= kSlowRun || (use_one_ && start - decided_at_ > kOneTime)) end_cycle();
    return;
  }
  if (phase_ == kWarm) {
    if (pos_++ == 0) warm_start_ = start;
    if ((pos_ >= kBlock && start + seconds - warm_start_ >= kWarmTime) || pos_ >= warm_max_) {
      pos_ = 0;
      phase_ = kProbing;
    }
    return;
  }
  if (phase_ != kProbing || slot_ < 0) return;
  probe_[slot_ / kCounted][slot_ % kCounted] = seconds;
  slot_ = -1;
  if (++pos_ == 2 * kProbe) decide(start + seconds);
}

void StepThreadChoice::decide(double now) {
  decided_at_ = now;
  auto median = [](double* p) {
    std::sort(p, p + kCounted);
    return (p[(kCounted - 1) / 2] + p[kCounted / 2]) / 2;
  };
  const double all = median(probe_[0]), one = median(probe_[1]);
  const bool was_one = use_one_;
  use_one_ = one < all;
  chosen_ = use_one_ ? one : all;
  slow_ = 0;  // counted afresh each run phase
  const bool far = std::max(all, one) > 1.5 * std::min(all, one);
  long steps = cycle_;
  if (far && (!use_one_ || was_one))
    steps = 16 * cycle_;
  else if (watch_ && use_one_ && !was_one)
    steps = std::max<long>(cycle_ / 16, 4 * kProbe);
  run_steps_ = steps - 2 * kProbe;
  warm_max_ = std::max<long>(kWarmMin, run_steps_ / 8);
  pos_ = 0;
  phase_ = kRun;
}

void StepThreadChoice::restart() {
  phase_ = kWarm;
  pos_ = 0;
  use_one_ = false;
  slot_ = -1;
  warm_max_ = kCycle;
}

void step_thread_choice_trace(const double* count_s, const double* one_s, long n,
                              signed char* out, long cycle, bool watch) {
  StepThreadChoice choice(cycle, watch);
  double now = 0;
  for (long i = 0; i < n; ++i) {
    const auto plan = choice.next();
    const double dt = plan.one ? one_s[i] : count_s[i];
    if (plan.timed) choice.record(now, dt);
    now += dt;
    out[i] = plan.one;
  }
}

namespace {
struct BarrierProbe {
  int rounds;
  double seconds;
};
void barrier_probe_body(void* p) {
  auto* b = static_cast<BarrierProbe*>(p);
  pool_barrier();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < b->rounds; ++i) pool_barrier();
  if (pool_thread_num() == 0)
    b->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                 b->rounds;
}

struct TeamProbe {
  std::atomic<int> ran{0};
  std::thread::id ids[64];
};
void team_probe_body(void* p) {
  auto* t = static_cast<TeamProbe*>(p);
  if (pool_thread_num() < 64) t->ids[pool_thread_num()] = std::this_thread::get_id();
  t->ran.fetch_add(1);
  pool_barrier();  // all alive at once
}
}  // namespace

void delay_workers(int us) { g_worker_delay_us.store(us > 0 ? us : 0); }
long late_shares_run() { return g_late_shares.load(); }

void PanelSplit::runs(int n, int nt, int* first) const {
  first[0] = 0;
  if (nt >= 2 && nt <= kMaxThreads && n >= nt && team_.load(std::memory_order_relaxed) == nt) {
    float w[kMaxThreads], total = 0;
    for (int i = 0; i < nt; ++i) total += w[i] = share_[i].load(std::memory_order_relaxed);
    if (total > 0) {  // each run at least one task, so each thread's rate stays measured
      float sum = 0;
      for (int i = 1; i < nt; ++i) {
        sum += w[i - 1];
        const int at = (int)(n * sum / total + 0.5f), lo = first[i - 1] + 1, hi = n - (nt - i);
        first[i] = at < lo ? lo : (at > hi ? hi : at);
      }
      first[nt] = n;
      return;
    }
  }
  for (int i = 1; i <= nt; ++i) first[i] = (int)((long)n * i / nt);
}

void PanelSplit::record(int nt, const int* first, const double* lag, const double* busy,
                        double span) {
  if (nt < 2 || nt > kMaxThreads) return;
  const int n = first[nt];
  // Member i at rate[i] a task, from lag[i] on, finishes n_i tasks at lag[i] + n_i rate[i];
  // all at `end` where sum over members starting before it of (end - lag[i]) / rate[i] = n
  // (the others get none; the one that starts first always has some).
  double rate[kMaxThreads];
  bool in[kMaxThreads];
  for (int i = 0; i < nt; ++i) {
    const int k = first[i + 1] - first[i];
    if (k <= 0 || !(busy[i] > 0) || !(lag[i] >= 0) || !(lag[i] + busy[i] <= span))
      return;  // keep the shares
    rate[i] = busy[i] / k;
    in[i] = true;
  }
  double end = 0;
  for (bool dropped = true; dropped;) {
    double inv = 0, lagged = 0;
    for (int i = 0; i < nt; ++i)
      if (in[i]) inv += 1 / rate[i], lagged += lag[i] / rate[i];
    end = (n + lagged) / inv;
    dropped = false;
    for (int i = 0; i < nt; ++i)
      if (in[i] && end < lag[i]) in[i] = false, dropped = true;
  }
  if (team_.load(std::memory_order_relaxed) != nt) {  // a first team of this size
    for (int i = 0; i < nt; ++i) share_[i].store(1.0f / nt, std::memory_order_relaxed);
    team_.store(nt, std::memory_order_relaxed);
  }
  for (int i = 0; i < nt; ++i) {
    const double want = in[i] ? (end - lag[i]) / rate[i] / n : 0;  // shares sum to 1
    const float now = share_[i].load(std::memory_order_relaxed);
    share_[i].store(now + (float)(want - now) * 0.125f, std::memory_order_relaxed);
  }
}

void panel_split_trace(int n, int nt, const double* lag, const double* rate,
                       const double* skew, int calls, int* first) {
  PanelSplit split;
  for (int c = 0; c < calls; ++c) {
    split.runs(n, nt, first);
    double busy[PanelSplit::kMaxThreads], seen[PanelSplit::kMaxThreads], span = 0;
    for (int i = 0; i < nt; ++i) {
      busy[i] = rate[i] * (first[i + 1] - first[i]);
      span = std::max(span, lag[i] + busy[i]);
      seen[i] = lag[i] + (skew ? skew[i] : 0);
    }
    split.record(nt, first, seen, busy, span);
  }
  split.runs(n, nt, first);
}

void note_split(int caller_tasks, int n, int nt) {
  const long even = (long)n / nt;  // member 0's equal run (rf_share)
  if (caller_tasks > even) g_split_toward.add();
  if (caller_tasks < even) g_split_away.add();
}
long splits_toward_caller() { return g_split_toward.read(); }
long splits_away_from_caller() { return g_split_away.read(); }
void note_row_sweep() { g_row_sweeps.add(); }
long row_sweeps() { return g_row_sweeps.read(); }
void note_call_on_one_thread() { g_calls_on_one.add(); }
long calls_on_one_thread() { return g_calls_on_one.read(); }

void note_steal() { g_steals.fetch_add(1, std::memory_order_relaxed); }
long steals() { return g_steals.load(); }
void note_help() { g_helps.fetch_add(1, std::memory_order_relaxed); }
long helps() { return g_helps.load(); }
void delay_steps(int us) { g_step_delay_us.store(us > 0 ? us : 0); }
int step_delay_us() { return g_step_delay_us.load(std::memory_order_relaxed); }
int set_pool_cpus(int n) {
  pool();  // sets g_cpus first, so the new limit is not overwritten
  return g_cpus.exchange(n > 0 ? n : usable_cpus());
}

int team_threads(int nthreads) {
  TeamProbe t;
  pool_run(nthreads < 64 ? nthreads : 64, team_probe_body, &t);
  int distinct = 0;
  for (int i = 0; i < t.ran.load(); ++i) {
    bool seen = false;
    for (int j = 0; j < i; ++j) seen = seen || t.ids[j] == t.ids[i];
    distinct += !seen;
  }
  return distinct;
}

double barrier_seconds(int nthreads, int rounds) {
  if (nthreads < 2 || rounds < 1) return 0.0;
  BarrierProbe b{rounds, 0.0};
  pool_run(nthreads, barrier_probe_body, &b);
  return b.seconds;
}

}  // namespace rnnfast
