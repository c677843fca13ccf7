// Process-wide thread settings. The default honours OMP_NUM_THREADS; a forked
// child runs single-threaded because GNU OpenMP's pool does not survive fork().
#pragma once

namespace rnnfast {

int max_threads();              // the process-wide setting (>= 1; 1 in a forked child)
void set_max_threads(int n);    // n <= 0 restores the default
// Threads for one call: `requested` (a model's own setting, 0 = process-wide),
// clamped to 1 in a child forked after OpenMP started.
int threads_for_call(int requested);
bool openmp_available();
bool in_forked_child();

}  // namespace rnnfast
