// Optimizer updates and gradient clipping pieces for one instruction set: plain loops
// the compiler vectorizes (they are bound by memory traffic), split over threads.
#include "optim.h"

#include <cmath>
#include <vector>

#include "kernels.h"
#include "simd.h"
#include "threading_kernel.h"

namespace rnnfast {
namespace RF_NS {

namespace {

constexpr long kChunk = 8192;  // elements per work-shared chunk

template <class F>
void for_chunks(long n, int nthreads, double bytes_per_elem, F&& f) {
  const long nchunks = (n + kChunk - 1) / kChunk;
  // Memory-bound: a thread is worth it from ~256 KiB of traffic on.
  rf_parallel_for(rf_threads_for(nthreads, bytes_per_elem * n / 256e3 * 0.1e6), nchunks,
                  [&](long c) {
                    const long i0 = c * kChunk, i1 = i0 + kChunk < n ? i0 + kChunk : n;
                    f(i0, i1);
                  });
}

template <typename T>
void sgd(const OptimStep<T>& a, long i0, long i1) {
  const T lr = (T)a.lr, wd = (T)a.weight_decay, mom = (T)a.momentum;
  const T damp = (T)(1.0 - a.dampening), sign = a.maximize ? T(-1) : T(1);
  T* __restrict p = a.p;
  const T* __restrict g = a.g;
  T* __restrict buf = a.s1;
  for (long i = i0; i < i1; ++i) {
    T d = sign * g[i] + wd * p[i];
    if (buf) {
      buf[i] = a.step == 1 ? d : mom * buf[i] + damp * d;
      d = a.nesterov ? d + mom * buf[i] : buf[i];
    }
    p[i] -= lr * d;
  }
}

template <typename T>
void adam(const OptimStep<T>& a, long i0, long i1) {
  const double bc1 = 1.0 - std::pow(a.beta1, (double)a.step);
  const double bc2 = 1.0 - std::pow(a.beta2, (double)a.step);
  const T step_size = (T)(a.lr / bc1), inv_sqrt_bc2 = (T)(1.0 / std::sqrt(bc2));
  const T b1 = (T)a.beta1, b2 = (T)a.beta2, eps = (T)a.eps, sign = a.maximize ? T(-1) : T(1);
  const T l2 = a.decoupled ? T(0) : (T)a.weight_decay;
  const T shrink = a.decoupled ? (T)(1.0 - a.lr * a.weight_decay) : T(1);
  T* __restrict p = a.p;
  const T* __restrict g = a.g;
  T* __restrict m = a.s1;
  T* __restrict v = a.s2;
  T* __restrict vmax = a.s3;
  for (long i = i0; i < i1; ++i) {
    const T pi = p[i] * shrink;
    const T d = sign * g[i] + l2 * pi;
    m[i] = b1 * m[i] + (T(1) - b1) * d;
    v[i] = b2 * v[i] + (T(1) - b2) * d * d;
    T vv = v[i];
    if (vmax) vv = vmax[i] = vmax[i] > vv ? vmax[i] : vv;
    p[i] = pi - step_size * m[i] / (std::sqrt(vv) * inv_sqrt_bc2 + eps);
  }
}

template <typename T>
void rmsprop(const OptimStep<T>& a, long i0, long i1) {
  const T lr = (T)a.lr, wd = (T)a.weight_decay, alpha = (T)a.alpha, eps = (T)a.eps;
  const T mom = (T)a.momentum, sign = a.maximize ? T(-1) : T(1);
  T* __restrict p = a.p;
  const T* __restrict g = a.g;
  T* __restrict sq = a.s1;
  T* __restrict gavg = a.s2;
  T* __restrict buf = a.s3;
  for (long i = i0; i < i1; ++i) {
    const T d = sign * g[i] + wd * p[i];
    sq[i] = alpha * sq[i] + (T(1) - alpha) * d * d;
    T avg;
    if (gavg) {
      gavg[i] = alpha * gavg[i] + (T(1) - alpha) * d;
      avg = std::sqrt(sq[i] - gavg[i] * gavg[i]) + eps;
    } else {
      avg = std::sqrt(sq[i]) + eps;
    }
    if (buf) {
      buf[i] = mom * buf[i] + d / avg;
      p[i] -= lr * buf[i];
    } else {
      p[i] -= lr * d / avg;
    }
  }
}

template <typename T>
void adagrad(const OptimStep<T>& a, long i0, long i1) {
  const T clr = (T)(a.lr / (1.0 + (double)(a.step - 1) * a.lr_decay));
  const T wd = (T)a.weight_decay, eps = (T)a.eps, sign = a.maximize ? T(-1) : T(1);
  T* __restrict p = a.p;
  const T* __restrict g = a.g;
  T* __restrict sum = a.s1;
  for (long i = i0; i < i1; ++i) {
    const T d = sign * g[i] + wd * p[i];
    sum[i] += d * d;
    p[i] -= clr * d / (std::sqrt(sum[i]) + eps);
  }
}

}  // namespace

template <typename T>
void optim_step(const OptimStep<T>& a, int nthreads) {
  const double traffic = sizeof(T) * 5.0;
  void (*update)(const OptimStep<T>&, long, long) = a.algo == OPT_SGD       ? sgd<T>
                                                    : a.algo == OPT_ADAM    ? adam<T>
                                                    : a.algo == OPT_RMSPROP ? rmsprop<T>
                                                                            : adagrad<T>;
  for_chunks(a.n, nthreads, traffic, [&](long i0, long i1) { update(a, i0, i1); });
}

template <typename T>
double sum_squares(const T* x, long n, int nthreads) {
  const long nchunks = (n + kChunk - 1) / kChunk;
  double total = 0;
  // Per-chunk partial sums in double, added in chunk order: the same result for any
  // thread count.
  std::vector<double> part(nchunks);
  for_chunks(n, nthreads, sizeof(T), [&](long i0, long i1) {
    double s = 0;
    for (long i = i0; i < i1; ++i) s += (double)x[i] * (double)x[i];
    part[i0 / kChunk] = s;
  });
  for (double s : part) total += s;
  return total;
}

template <typename T>
void scale_clip(T* x, long n, double scale, double clip, int nthreads) {
  const T s = (T)scale, c = (T)clip;
  for_chunks(n, nthreads, 2.0 * sizeof(T), [&](long i0, long i1) {
    for (long i = i0; i < i1; ++i) {
      T v = x[i] * s;
      if (clip >= 0) v = v > c ? c : (v < -c ? -c : v);  // NaN stays NaN
      x[i] = v;
    }
  });
}

template void optim_step<float>(const OptimStep<float>&, int);
template void optim_step<double>(const OptimStep<double>&, int);
template double sum_squares<float>(const float*, long, int);
template double sum_squares<double>(const double*, long, int);
template void scale_clip<float>(float*, long, double, double, int);
template void scale_clip<double>(double*, long, double, double, int);

}  // namespace RF_NS
}  // namespace rnnfast
