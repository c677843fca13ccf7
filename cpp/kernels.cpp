// This instruction set's kernel table, plus the small elementwise kernels.
#include "activations.h"
#include "gemm.h"
#include "kernels.h"
#include "threading_kernel.h"

namespace rnnfast {
namespace RF_NS {

namespace {

template <typename T>
void col_sums(T* out, const T* a, long rows, int n, int nthreads) {
  // Split columns in blocks so each thread owns its outputs (no atomics).
  constexpr int CB = 64;
  const int nblocks = (n + CB - 1) / CB;
  rf_parallel_for(rf_threads_for(nthreads, 4.0 * rows * n), nblocks, [&](long blk) {
    const int j0 = blk * CB, j1 = j0 + CB < n ? j0 + CB : n;
    T acc[CB];
    for (int j = j0; j < j1; ++j) acc[j - j0] = T(0);
    for (long r = 0; r < rows; ++r)
      for (int j = j0; j < j1; ++j) acc[j - j0] += a[r * n + j];
    for (int j = j0; j < j1; ++j) out[j] += acc[j - j0];
  });
}

inline uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename T>
void dropout(const T* x, T* y, T* mask, long n, double p, uint64_t seed, int layer,
             int nthreads) {
  const uint64_t base = mix64(seed ^ ((uint64_t)(layer + 1) * 0xD1B54A32D192ED03ull));
  const T scale = T(1) / (T(1) - T(p));
  rf_parallel_for(rf_threads_for(nthreads, 20.0 * n), n, [&](long e) {
    const double u = (double)(mix64(base + (uint64_t)e) >> 40) * (1.0 / 16777216.0);
    const T m = u < p ? T(0) : scale;
    mask[e] = m;
    y[e] = x[e] * m;
  });
}

template <typename T>
void activation(int kind, T* x, long n) {
  map_vectors(x, n, [kind](auto& v) {
    if (kind == 0)
      vexp_n(v);
    else if (kind == 1)
      vsigmoid_n(v);
    else
      vtanh_n(v);
  });
}

template <typename T>
double read_sum(const T* a, long n, int reps, int nthreads) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  const long nv = n / W;
  int nt = nthreads < 1 ? 1 : nthreads;
  if (nt > nv / 64) nt = nv / 64 > 1 ? (int)(nv / 64) : 1;
  constexpr int kMaxParts = 256;
  if (nt > kMaxParts) nt = kMaxParts;
  double parts[kMaxParts] = {};
  rf_parallel(nt, [&] {
    const int t = rf_thread_num(), team = rf_team_size();
    const long v0 = nv * t / team, v1 = nv * (t + 1) / team;
    V s0 = V{}, s1 = V{}, s2 = V{}, s3 = V{};
    for (int r = 0; r < reps; ++r) {
      long v = v0;
      for (; v + 4 <= v1; v += 4) {
        s0 += vload<V>(a + v * W);
        s1 += vload<V>(a + (v + 1) * W);
        s2 += vload<V>(a + (v + 2) * W);
        s3 += vload<V>(a + (v + 3) * W);
      }
      for (; v < v1; ++v) s0 += vload<V>(a + v * W);
    }
    V s = (s0 + s1) + (s2 + s3);
    for (int i = 0; i < W; ++i) parts[t] += s[i];
  });
  double total = 0;
  for (int t = 0; t < nt; ++t) total += parts[t];
  for (long i = nv * W; i < n; ++i) total += a[i] * reps;
  return total;
}

template <typename T>
KernelTable<T> make_table() {
  KernelTable<T> t;
  t.name = RF_STR(RF_ISA);
  t.gemm = gemm<T>;
  t.gemm_cols2 = gemm_cols2<T>;
  t.gemm_gapped = gemm_gapped<T>;
  t.prepacked_size = prepacked_size<T>;
  t.prepack = prepack<T>;
  t.gemm_prepacked = gemm_prepacked_par<T>;
  t.packed_size[RNN_TANH] = t.packed_size[RNN_RELU] = rnn_packed_size<T>;
  t.packed_size[LSTM] = lstm_packed_size<T>;
  t.packed_size[GRU] = gru_packed_size<T>;
  t.pack[RNN_TANH] = t.pack[RNN_RELU] = rnn_pack<T>;
  t.pack[LSTM] = lstm_pack<T>;
  t.pack[GRU] = gru_pack<T>;
  t.forward[RNN_TANH] = t.forward[RNN_RELU] = rnn_forward<T>;
  t.forward[LSTM] = lstm_forward<T>;
  t.forward[GRU] = gru_forward<T>;
  t.backward[RNN_TANH] = t.backward[RNN_RELU] = rnn_backward<T>;
  t.backward[LSTM] = lstm_backward<T>;
  t.backward[GRU] = gru_backward<T>;
  t.col_sums = col_sums<T>;
  t.dropout = dropout<T>;
  t.activation = activation<T>;
  t.read_sum = read_sum<T>;
  t.optim_step = optim_step<T>;
  t.sum_squares = sum_squares<T>;
  t.scale_clip = scale_clip<T>;
  t.embedding_forward = embedding_forward<T>;
  t.embedding_backward = embedding_backward<T>;
  t.dense_activation = dense_activation<T>;
  t.dense_activation_backward = dense_activation_backward<T>;
  t.loss = loss_forward_backward<T>;
  return t;
}

}  // namespace

const KernelTable<float>& table_f32() {
  static const KernelTable<float> t = make_table<float>();
  return t;
}
const KernelTable<double>& table_f64() {
  static const KernelTable<double> t = make_table<double>();
  return t;
}

}  // namespace RF_NS
}  // namespace rnnfast
