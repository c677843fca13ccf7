// Vector exp / sigmoid / tanh. float: polynomial approximations with ~2e-7
// relative error (tests/test_engine.py checks a 1e-6 bound); double: libm per
// lane, because float64 exists for gradient checks. NaN propagates.
#pragma once
#include <cmath>
#include "simd.h"

namespace rnnfast {
namespace RF_NS {

// Every function works in place on N vectors, one stage for all N before the next:
// the chains are ~90 cycles long, and interleaving independent ones (the rows and
// gates of a panel) lets the core overlap them instead of waiting on each in turn.
#define RF_EACH _Pragma("GCC unroll 32") for (int j = 0; j < N; ++j)

// e^x = 2^n e^r with x = n ln2 + r, |r| <= ln2/2: q = e^r - 1 by a degree-7 polynomial
// (Cephes' expf coefficients), 2^n assembled in the exponent bits. x must lie in
// [-87.3, 88.3]; on return x holds 2^n.
template <int N>
static inline void vexp_parts(vf (&x)[N], vf (&q)[N]) {
  vf n[N], r[N];
  RF_EACH {
    n[j] = (x[j] * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round via 1.5*2^23
    r[j] = x[j] - n[j] * 0.693359375f;
  }
  RF_EACH r[j] = r[j] - n[j] * -2.12194440e-4f;
  RF_EACH q[j] = r[j] * 1.9875691500e-4f + 1.3981999507e-3f;
  RF_EACH q[j] = q[j] * r[j] + 8.3334519073e-3f;
  RF_EACH q[j] = q[j] * r[j] + 4.1665795894e-2f;
  RF_EACH q[j] = q[j] * r[j] + 1.6666665459e-1f;
  RF_EACH q[j] = q[j] * r[j] + 5.0000001201e-1f;
  RF_EACH q[j] = q[j] * (r[j] * r[j]) + r[j];
  RF_EACH x[j] = (vf)((__builtin_convertvector(n[j], vi32) + 127) << 23);
}

template <int N>
static inline void vexp_n(vf (&x)[N]) {
  vf q[N];
  RF_EACH {
    x[j] = x[j] > 88.3f ? vbcast<vf>(88.3f) : x[j];  // NaN fails both tests and stays NaN
    x[j] = x[j] < -87.3f ? vbcast<vf>(-87.3f) : x[j];
  }
  vexp_parts(x, q);
  RF_EACH x[j] = x[j] * q[j] + x[j];
}

template <int N>
static inline void vsigmoid_n(vf (&x)[N]) {
  RF_EACH x[j] = -x[j];
  vexp_n(x);
  RF_EACH x[j] = 1.0f / (1.0f + x[j]);
}

// tanh |x| = m / (m + 2) with m = e^(2|x|) - 1 = 2^n q + (2^n - 1), which keeps its
// relative accuracy down to tiny x (no 1 - 2/(e + 1) cancellation, so no second
// branch); |x| is clamped at 10, where tanh is 1 in float. The sign comes from x.
template <int N>
static inline void vtanh_n(vf (&x)[N]) {
  vi32 sign[N];
  vf y[N], q[N];
  RF_EACH {
    sign[j] = (vi32)x[j] & (int32_t)0x80000000;
    vf a = (vf)((vi32)x[j] & 0x7fffffff);
    a = a > 10.0f ? vbcast<vf>(10.0f) : a;  // NaN stays NaN
    y[j] = a + a;
  }
  vexp_parts(y, q);
  RF_EACH {
    vf m = y[j] * q[j] + (y[j] - 1.0f);
    x[j] = (vf)((vi32)(m / (m + 2.0f)) | sign[j]);
  }
}

template <int N>
static inline void vexp_n(vd (&x)[N]) {
  RF_EACH for (int i = 0; i < Simd<double>::W; ++i) x[j][i] = std::exp(x[j][i]);
}
template <int N>
static inline void vsigmoid_n(vd (&x)[N]) {
  RF_EACH for (int i = 0; i < Simd<double>::W; ++i) x[j][i] = 1.0 / (1.0 + std::exp(-x[j][i]));
}
template <int N>
static inline void vtanh_n(vd (&x)[N]) {
  RF_EACH for (int i = 0; i < Simd<double>::W; ++i) x[j][i] = std::tanh(x[j][i]);
}
#undef RF_EACH

// x[i] = f(x[i]) for i < n, a vector at a time (f takes and returns V (&)[1] in place).
template <typename T, class F>
static inline void map_vectors(T* x, long n, F&& f) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  for (long i = 0; i < n; i += W) {
    const int m = n - i < W ? (int)(n - i) : W;
    V v[1] = {vload_part<V>(x + i, m)};
    f(v);
    vstore_part(x + i, v[0], m);
  }
}

template <typename V>
static inline V vrelu(V x) {
  return x < 0 ? V{} : x;   // NaN stays NaN
}

}  // namespace RF_NS
}  // namespace rnnfast
