// Process-wide thread settings and the thread pool every parallel region runs on.
// The default count honours OMP_NUM_THREADS, else the CPUs this process may use.
#pragma once
#include <atomic>
#include <chrono>

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

// Which thread count each step of a batch-1 stream runs on (Stream::step): the stream's
// count or one thread; also each small sequence call, a call for a step
// (Engine::run_chosen). A step lasts a few microseconds, and what a second thread costs
// (waking it, one cache-line round trip each way) swings with the machine: on the 2-core
// Zen 5 VM, GRU-128 took 2.5 us on two threads in some spells and 4.3 in others, against
// ~3 on one; on the Zen 4, RNN-256 5.5 us on two in a slow spell against 5.1 on one, 3.3
// against 5.2 in quiet ones. So each cycle of kCycle steps starts with kProbe steps on
// each choice in blocks of kBlock, alternating, and runs the rest on the one whose median
// probe step was faster, a block's first step not counted.
// - Blocks, not single steps: a step after one of the other choice finds the state on the
//   other core, and every probe step of a choice walked the weights one way (recurrence.h).
// - Medians, not the fastest: in slow spells two threads vary far more than one, and their
//   fastest step misled (LSTM-128 ran ~3.4 us a step on the choice, 3.0 on one thread).
// - A probe after a cycle on one thread (and a stream's first) starts with steps on the
//   count, not timed into the choice, for at least kWarmTime: a worker idle for
//   milliseconds is asleep or its CPU is, and the Zen 4 VM then ran the next steps on two
//   threads slow for 0.1-0.4 ms (GRU-256: 90, 25, 40 us, then 11). Probed in that
//   window, two threads looked slower than one, the cycle ran on one, its worker went back
//   to sleep, and the next probe found the same. At most an eighth of the cycle before
//   (at least kWarmMin steps; kCycle for a stream's first): a worker sleeps after 20 ms
//   idle (threading.cpp), which only long cycles give it, and where one thread wins by
//   little (short cycles), a warm-up each cycle costs a few percent (1.2x: 40 of 288 steps
//   on the count, 2.8%). With 32 steps at most, LSTM-128 (3.4 us steps) still stuck on one
//   thread in one process of four.
// - Where one choice was over 1.5x faster, the cycle is 16 times longer (probing a 2x
//   slower choice costs a long step 3% of its time at kCycle); for one thread, only where
//   the probe before chose one thread too (else 1x: a slow start looks the same).
// - Watched (sequence calls, each tens of microseconds or more, where two clock reads cost
//   nothing): every step of the run phase is timed too, and kSlowRun steps in a row over
//   kSlow times the chosen arm's probe median, or under it by as much, end the cycle
//   early. A slow spell starting mid-cycle is then probed within a few calls, not up to a
//   cycle later (RNN `small` training on two threads ran 0.66-0.75 ms for seconds in such
//   spells, against ~0.51 on one), and so is its end, where the probe ran in it. A
//   watched cycle on one thread also ends kOneTime after its probe, and lasts cycle / 16
//   calls where the probe before chose the count (or there was none): one thread's times
//   say nothing of the count's, and a choice of one thread misled by a moment's noise, or
//   made in a spell since over, held calls 1.6x slower for a cycle (1 or 2 processes in
//   10-12 of the bench's pattern, RNN `small` training) or 16 (~8 s of calls). Where the
//   count is 1.5x slower, its probes then cost ~1%, 2x slower ~2.4%. Streams' steps (1-5
//   us) stay untimed between probes.
// Either choice gives the same bits.
class StepThreadChoice {
 public:
  static constexpr long kCycle = 256;
  // cycle: steps a cycle (kCycle for a stream's steps); watch: time every step (above)
  explicit StepThreadChoice(long cycle = kCycle, bool watch = false)
      : cycle_(cycle), watch_(watch) {}
  struct Plan {
    bool one;    // run the step on one thread
    bool timed;  // time it and pass the time to record()
  };
  Plan next();
  // The step that next() asked to time began at `start` and lasted `seconds`.
  void record(double start, double seconds);
  // step(n) on the plan's count (one thread, or nt); where the plan asks, its start and
  // seconds go to done(start, seconds) (which calls record()).
  template <class Step, class Done>
  static void run(Plan plan, int nt, Step&& step, Done&& done) {
    const int n = plan.one ? 1 : nt;
    if (!plan.timed) return step(n);
    typedef std::chrono::duration<double> Seconds;
    const auto t0 = std::chrono::steady_clock::now();
    step(n);
    const auto t1 = std::chrono::steady_clock::now();
    done(Seconds(t0.time_since_epoch()).count(), Seconds(t1 - t0).count());
  }
  void restart();  // probe afresh from the next step

 private:
  static constexpr int kProbe = 8, kBlock = 4, kCounted = kProbe / kBlock * (kBlock - 1);
  static constexpr int kWarmMin = 32;
  static constexpr double kWarmTime = 500e-6;
  static constexpr double kSlow = 1.5;
  static constexpr int kSlowRun = 8;
  static constexpr double kOneTime = 0.25;  // seconds
  enum Phase { kWarm, kProbing, kRun };
  void decide(double now);
  void end_cycle();
  long cycle_;
  bool watch_;
  int slow_ = 0;            // watched run steps in a row kSlow times off chosen_
  double chosen_ = 0;       // the chosen arm's median probe step, seconds
  double decided_at_ = 0;   // when the probe ended
  Phase phase_ = kWarm;
  long pos_ = 0;            // steps into the phase
  long run_steps_ = 0;      // steps of this cycle's kRun phase
  long warm_max_ = kCycle;  // steps the next warm-up may take
  double warm_start_ = 0;   // when the warm-up's first step began
  bool use_one_ = false;    // the last probe chose one thread
  int slot_ = -1;           // probe_ slot of the step being timed (-1: warm-up)
  double probe_[2][kCounted] = {};  // counted probe steps of each choice, seconds
};
// Test probe: the choices (0: the count, 1: one thread) a StepThreadChoice(cycle, watch)
// makes over n steps whose durations on each choice are count_s[i] and one_s[i].
void step_thread_choice_trace(const double* count_s, const double* one_s, long n,
                              signed char* out, long cycle, bool watch);

bool in_forked_child();
// Seconds per barrier of a team of nthreads passing `rounds` barriers (0 for one thread):
// the hand-off between cores a step of the recurrence pays (bench probe).
double barrier_seconds(int nthreads, int rounds);
// How many distinct threads ran a region asked to run on nthreads (test probe).
int team_threads(int nthreads);
// Test probes: workers wait `us` microseconds before taking a job (0: none); how many
// members' shares their callers have run so far in place of late workers; how many times a
// thread has taken tasks from another's share (StealShares: once per share robbed per run,
// however many tasks).
void delay_workers(int us);
long late_shares_run();
void note_steal();
long steals();
// Test probes: how many times a thread has helped another with its rows (HelpedRuns: once
// per run joined, however many steps); thread 1 of a team waits `us` microseconds before
// each step of its rows and of the rows it helps with, of its run of a sequence sized by
// PanelSplit, or of its share of a phase run by StealShares (0: none).
void note_help();
long helps();
// Test probe: time loops (a layer and direction, forward or backward) whose threads split
// the batch rows rather than the weights, counted from a test's first read of a gated
// count (this or splits_*) on.
void note_row_sweep();
long row_sweeps();
// Test probe: sequence calls that their thread choice ran on one thread (Engine::run_chosen),
// counted from a test's first read of a gated count on.
void note_call_on_one_thread();
long calls_on_one_thread();
void delay_steps(int us);
int step_delay_us();
// Test probe: teams may hold up to n threads (0: the CPUs this process may use, the
// default), so that a 2-core machine can run the splits of larger teams; -> the previous
// limit.
int set_pool_cpus(int n);

// How tasks split statically are shared between the threads of a team (a layer's, kept
// across calls): in runs sized by how fast each thread got through its last ones, not in
// equal runs. A single step (a stream's) and a batch-1 sequence keep each thread on its
// run's weights (its L2) and do not steal (a stolen batch-1 panel is read from the other
// core's cache), so with equal runs the slower CPU held every step, and in a single step
// the worker, starting later than its caller, held the join: a single step counts each
// thread's start lag too, a sequence (a barrier a step) only its time in its runs. Any split
// gives the same bits.
class PanelSplit {
 public:
  static constexpr int kMaxThreads = 16;
  // first[0..nt]: member i's run is [first[i], first[i+1]) of n tasks; equal runs (as
  // rf_share) until record() has seen a team of nt, or where n < nt or nt > kMaxThreads.
  void runs(int n, int nt, int* first) const;
  // A call's timings, on the runs of runs(): member i began lag[i] after the call and spent
  // busy[i] on its run; the call lasted `span` on its caller's clock (any one unit). Moves
  // each run's share an eighth of the way to the runs that would have finished together.
  // Timings no clock could give (a lag below 0, a run ending after the call: the members'
  // clocks disagree) change nothing.
  void record(int nt, const int* first, const double* lag, const double* busy, double span);

 private:
  std::atomic<int> team_{0};
  std::atomic<float> share_[kMaxThreads] = {};  // of the tasks, summing to ~1
};
// Test probe: the runs (first[0..nt]) of n tasks after `calls` calls whose member i began
// lag[i] after the call and took rate[i] per task, its clock skew[i] ahead of its caller's
// (skew may be null: none).
void panel_split_trace(int n, int nt, const double* lag, const double* rate,
                       const double* skew, int calls, int* first);
// Test probe: sized calls whose caller ran more tasks than an equal share / fewer, counted
// from a test's first read of a gated count (these or row_sweeps) on.
void note_split(int caller_tasks, int n, int nt);
long splits_toward_caller();
long splits_away_from_caller();

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
// One round of a wait in a team: a pause for the first rounds, then a yield of the CPU (at
// once when teams outnumber the CPUs), as the pool's own waits do.
void pool_spin(int round);
// independent: fn's members never wait for each other (no barrier, no pool_next_task), so
// a worker that has not taken its job when the caller has finished its own share has that
// share run by the caller instead of waited for (asleep, preempted, or sharing the
// caller's CPU, a worker can be hundreds of microseconds late).
void pool_run(int nt, void (*fn)(void*), void* ctx, bool independent = false);

}  // namespace rnnfast
