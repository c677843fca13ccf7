// Process-wide thread settings. The default honours OMP_NUM_THREADS; a forked
// child runs single-threaded because GNU OpenMP's pool does not survive fork().
#pragma once

namespace rnnfast {

int max_threads();              // the process-wide setting (>= 1; 1 in a forked child)
void set_max_threads(int n);    // n <= 0 restores the default
// Threads for one call, held for its duration: `requested` when the model sets its own
// count, else what is left of the process-wide count by the calls running at the same
// time, at least one (four Python threads calling at once with 2 threads set run on
// 2 + 1 + 1 + 1, not 4 x 2).
class ThreadBudget {
 public:
  explicit ThreadBudget(int requested);
  ~ThreadBudget();
  ThreadBudget(const ThreadBudget&) = delete;
  ThreadBudget& operator=(const ThreadBudget&) = delete;
  int threads() const { return n_; }

 private:
  int n_;
  bool shared_;
};

bool openmp_available();
bool in_forked_child();
// Seconds per barrier of a team of nthreads passing `rounds` barriers (0 for one thread or
// without OpenMP): the hand-off between cores a step of the recurrence pays (bench probe).
double barrier_seconds(int nthreads, int rounds);

}  // namespace rnnfast
