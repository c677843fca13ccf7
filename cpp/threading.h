// Process-wide thread settings and the thread pool every parallel region runs on.
// The default count honours OMP_NUM_THREADS, else the CPUs this process may use.
#pragma once

namespace rnnfast {

int max_threads();              // the process-wide setting (>= 1)
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

bool in_forked_child();
// Seconds per barrier of a team of nthreads passing `rounds` barriers (0 for one thread):
// the hand-off between cores a step of the recurrence pays (bench probe).
double barrier_seconds(int nthreads, int rounds);
// How many distinct threads ran a region asked to run on nthreads (test probe).
int team_threads(int nthreads);
// Test probes: workers wait `us` microseconds before taking a job (0: none); how many
// members' shares their callers have run so far in place of late workers.
void delay_workers(int us);
long late_shares_run();

// The pool (threading.cpp). pool_run runs fn(ctx) on a team of up to nt threads, the
// caller as thread 0, and returns when all have finished; from inside a team, or with
// nt <= 1, it runs fn(ctx) on the caller alone (a team of one). Inside fn:
int pool_thread_num();   // 0 .. pool_team_size() - 1
int pool_team_size();
void pool_barrier();     // all of the team's threads arrive before any leaves
// Work-sharing of n tasks handed out one at a time: true and the next task in *task
// while any are left. Every thread of the team must call it until it returns false, and
// the team must pass a barrier before the next such loop.
bool pool_next_task(long n, long* task);
// independent: fn's members never wait for each other (no barrier, no pool_next_task), so
// a worker that has not taken its job when the caller has finished its own share has that
// share run by the caller instead of waited for (asleep, preempted, or sharing the
// caller's CPU, a worker can be hundreds of microseconds late).
void pool_run(int nt, void (*fn)(void*), void* ctx, bool independent = false);

}  // namespace rnnfast
