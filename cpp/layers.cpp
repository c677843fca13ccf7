// Kernels of the non-recurrent layers and the losses, for one instruction set:
// embedding gather / scatter-add, the dense layer's activation and its derivative, and
// the fused losses computed from logits (value, gradient and correct-prediction count
// in one pass).
#include <cmath>
#include <cstdint>
#include <vector>

#include "activations.h"
#include "kernels.h"
#include "simd.h"
#include "threading_kernel.h"

namespace rnnfast {
namespace RF_NS {

namespace {

template <class F>
void parallel_rows(long n, int nthreads, double work_per_row, F&& f) {
  rf_parallel_for(rf_threads_for(nthreads, work_per_row * n), n, f);
}

}  // namespace

// out[i, :] = W[idx[i], :]. Returns the first i with idx[i] outside [0, vocab), or -1.
template <typename T>
long embedding_forward(const int64_t* idx, long n, const T* W, long vocab, long dim, T* out,
                       int nthreads) {
  for (long i = 0; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= vocab) return i;
  parallel_rows(n, nthreads, 2.0 * dim, [&](long i) {
    const T* src = W + idx[i] * dim;
    T* dst = out + i * dim;
    for (long j = 0; j < dim; ++j) dst[j] = src[j];
  });
  return -1;
}

// dW[idx[i], :] += dout[i, :]. Threads own column blocks, so the sums run in the order
// of i whatever the thread count (same result for any count, no atomics).
template <typename T>
void embedding_backward(const int64_t* idx, long n, const T* dout, long dim, T* dW,
                        int nthreads) {
  constexpr long CB = 64;
  const long nblocks = (dim + CB - 1) / CB;
  parallel_rows(nblocks, nthreads, 2.0 * n * CB, [&](long blk) {
    const long j0 = blk * CB, j1 = j0 + CB < dim ? j0 + CB : dim;
    for (long i = 0; i < n; ++i) {
      T* dst = dW + idx[i] * dim;
      const T* src = dout + i * dim;
      for (long j = j0; j < j1; ++j) dst[j] += src[j];
    }
  });
}

// y = act(y) in place: 0 identity, 1 relu, 2 tanh, 3 sigmoid.
template <typename T>
void dense_activation(int act, T* y, long n, int nthreads) {
  if (act == 0) return;
  constexpr long R = 1024;  // elements per work item
  parallel_rows((n + R - 1) / R, nthreads, 20.0 * R, [&](long blk) {
    const long i0 = blk * R, len = n - i0 < R ? n - i0 : R;
    map_vectors(y + i0, len, [act](auto& v) {
      if (act == 1)
        v[0] = vrelu(v[0]);
      else if (act == 2)
        vtanh_n(v);
      else
        vsigmoid_n(v);
    });
  });
}

// dz = dy * act'(z) written from the activation's output y (dz may be dy).
template <typename T>
void dense_activation_backward(int act, const T* y, const T* dy, T* dz, long n, int nthreads) {
  constexpr long R = 4096;
  parallel_rows((n + R - 1) / R, nthreads, 3.0 * R, [&](long blk) {
    const long i1 = (blk + 1) * R < n ? (blk + 1) * R : n;
    for (long i = blk * R; i < i1; ++i) {
      const T d = dy[i], v = y[i];
      dz[i] = act == 0 ? d : act == 1 ? (v > T(0) ? d : T(0))
              : act == 2 ? d * (T(1) - v * v) : d * v * (T(1) - v);
    }
  });
}

// Losses over N rows of C logits. Row weight w_i (1 when weights is null; 0 skips the row,
// e.g. padding). Returns sum_i w_i * loss_i; when grad is not null, writes
// grad = scale * w_i * dloss_i/dlogits. *correct counts rows (w_i != 0) whose prediction is
// right: argmax == label (sparse), argmax == argmax target (categorical), or for binary
// cross-entropy and mse per element (logit > 0 == target > 0.5; mse: none).
//   kind 0: softmax cross-entropy with integer labels (labels[i] in [0, C))
//   kind 1: softmax cross-entropy with target distributions (targets N x C)
//   kind 2: binary cross-entropy with logits, element-wise (targets N x C)
//   kind 3: squared error, element-wise (targets N x C), loss_i = sum_j (z - t)^2
template <typename T>
double loss_forward_backward(int kind, const T* z, long N, long C, const int64_t* labels,
                             const T* targets, const T* weights, double scale, T* grad,
                             long* correct, int nthreads) {
  std::vector<double> row_loss(N);
  std::vector<char> row_ok(N);
  parallel_rows(N, nthreads, 30.0 * C, [&](long i) {
    const T* zi = z + i * C;
    const double w = weights ? (double)weights[i] : 1.0;
    T* gi = grad ? grad + i * C : nullptr;
    double loss = 0;
    char ok = 0;
    if (w == 0.0) {
      if (gi)
        for (long j = 0; j < C; ++j) gi[j] = T(0);
      row_loss[i] = 0;
      row_ok[i] = 0;
      return;
    }
    if (kind <= 1) {
      long arg = 0;
      double mx = zi[0];
      for (long j = 1; j < C; ++j)
        if (zi[j] > mx) mx = zi[j], arg = j;
      double se = 0;
      for (long j = 0; j < C; ++j) se += std::exp((double)zi[j] - mx);
      const double lse = mx + std::log(se);
      if (kind == 0) {
        const long y = labels[i];
        loss = lse - zi[y];
        ok = arg == y;
      } else {
        const T* ti = targets + i * C;
        long targ = 0;
        for (long j = 0; j < C; ++j) {
          loss += (double)ti[j] * (lse - zi[j]);
          if (ti[j] > ti[targ]) targ = j;
        }
        ok = arg == targ;
      }
      if (gi) {
        const double f = scale * w;
        for (long j = 0; j < C; ++j) {
          const double p = std::exp((double)zi[j] - lse);
          const double t = kind == 0 ? (j == labels[i] ? 1.0 : 0.0) : (double)targets[i * C + j];
          gi[j] = (T)(f * (p - t));
        }
      }
    } else {
      const T* ti = targets + i * C;
      long right = 0;
      for (long j = 0; j < C; ++j) {
        const double x = zi[j], t = ti[j];
        double g;
        if (kind == 2) {  // max(x, 0) - x t + log(1 + e^-|x|), stable for any x
          loss += (x > 0 ? x : 0) - x * t + std::log1p(std::exp(-std::fabs(x)));
          g = 1.0 / (1.0 + std::exp(-x)) - t;
          right += (x > 0) == (t > 0.5);
        } else {
          loss += (x - t) * (x - t);
          g = 2.0 * (x - t);
        }
        if (gi) gi[j] = (T)(scale * w * g);
      }
      ok = kind == 2 && right == C;
    }
    row_loss[i] = w * loss;
    row_ok[i] = ok;
  });
  double total = 0;
  long n_ok = 0;
  for (long i = 0; i < N; ++i) total += row_loss[i], n_ok += row_ok[i];  // fixed order
  if (correct) *correct = n_ok;
  return total;
}

#define RF_INSTANTIATE_LAYERS(T)                                                                 \
  template long embedding_forward<T>(const int64_t*, long, const T*, long, long, T*, int);      \
  template void embedding_backward<T>(const int64_t*, long, const T*, long, T*, int);           \
  template void dense_activation<T>(int, T*, long, int);                                         \
  template void dense_activation_backward<T>(int, const T*, const T*, T*, long, int);           \
  template double loss_forward_backward<T>(int, const T*, long, long, const int64_t*, const T*, \
                                           const T*, double, T*, long*, int);
RF_INSTANTIATE_LAYERS(float)
RF_INSTANTIATE_LAYERS(double)

}  // namespace RF_NS
}  // namespace rnnfast
