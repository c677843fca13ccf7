#include "threading.h"

#include <pthread.h>

#include <atomic>
#ifdef RF_HAVE_OPENMP
#include <omp.h>
#endif

namespace rnnfast {

namespace {
std::atomic<int> g_threads{0};     // 0 = default
std::atomic<bool> g_forked{false};
std::atomic<int> g_threads_in_use{0};   // by calls on the process-wide budget

int default_threads() {
#ifdef RF_HAVE_OPENMP
  static const int n = omp_get_max_threads();  // reads OMP_NUM_THREADS once
  return n > 0 ? n : 1;
#else
  return 1;
#endif
}

void on_fork_child() { g_forked.store(true); }

struct AtForkRegistration {
  AtForkRegistration() { pthread_atfork(nullptr, nullptr, on_fork_child); }
} g_atfork;
}  // namespace

constexpr int kMaxThreads = 4096;

int max_threads() {
  if (g_forked.load()) return 1;
  int n = g_threads.load();
  return n > 0 ? n : default_threads();
}

void set_max_threads(int n) { g_threads.store(n > 0 ? (n < kMaxThreads ? n : kMaxThreads) : 0); }

namespace {
// `requested` (a model's own setting, 0 = process-wide); 1 in a forked child.
int threads_for_call(int requested) {
  if (g_forked.load()) return 1;
  int n = requested > 0 ? (requested < kMaxThreads ? requested : kMaxThreads) : max_threads();
#ifndef RF_HAVE_OPENMP
  n = 1;
#endif
  return n;
}

}  // namespace

ThreadBudget::ThreadBudget(int requested)
    : n_(threads_for_call(requested)), shared_(requested <= 0) {
  if (!shared_) return;
  // Take what is free of the process-wide count, at least one thread.
  int in_use = g_threads_in_use.load();
  int take;
  do {
    const int free_now = n_ - in_use;
    take = free_now < 1 ? 1 : free_now;
  } while (!g_threads_in_use.compare_exchange_weak(in_use, in_use + take));
  n_ = take;
}

ThreadBudget::~ThreadBudget() {
  if (shared_) g_threads_in_use -= n_;
}

bool openmp_available() {
#ifdef RF_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

bool in_forked_child() { return g_forked.load(); }

double barrier_seconds(int nthreads, int rounds) {
#ifdef RF_HAVE_OPENMP
  if (nthreads < 2 || rounds < 1) return 0.0;
  double seconds = 0.0;
#pragma omp parallel num_threads(nthreads)
  {
#pragma omp barrier
    const double t0 = omp_get_wtime();
    for (int i = 0; i < rounds; ++i) {
#pragma omp barrier
    }
    if (omp_get_thread_num() == 0) seconds = (omp_get_wtime() - t0) / rounds;
  }
  return seconds;
#else
  (void)nthreads;
  (void)rounds;
  return 0.0;
#endif
}

}  // namespace rnnfast
