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

// e^x: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial (Cephes' expf
// coefficients), 2^n assembled in the exponent bits.
template <int N>
static inline void vexp_n(vf (&x)[N]) {
  vf n[N], r[N], p[N];
  RF_EACH {
    vf v = x[j] > 88.3f ? vbcast<vf>(88.3f) : x[j];  // NaN fails both tests and stays NaN
    v = v < -87.3f ? vbcast<vf>(-87.3f) : v;
    n[j] = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round via 1.5*2^23
    r[j] = v - n[j] * 0.693359375f;
  }
  RF_EACH r[j] = r[j] - n[j] * -2.12194440e-4f;
  RF_EACH p[j] = r[j] * 1.9875691500e-4f + 1.3981999507e-3f;
  RF_EACH p[j] = p[j] * r[j] + 8.3334519073e-3f;
  RF_EACH p[j] = p[j] * r[j] + 4.1665795894e-2f;
  RF_EACH p[j] = p[j] * r[j] + 1.6666665459e-1f;
  RF_EACH p[j] = p[j] * r[j] + 5.0000001201e-1f;
  RF_EACH p[j] = p[j] * (r[j] * r[j]) + r[j] + 1.0f;
  RF_EACH x[j] = p[j] * (vf)((__builtin_convertvector(n[j], vi32) + 127) << 23);
}

template <int N>
static inline void vsigmoid_n(vf (&x)[N]) {
  RF_EACH x[j] = -x[j];
  vexp_n(x);
  RF_EACH x[j] = 1.0f / (1.0f + x[j]);
}

// tanh: odd Taylor series to x^15 for |x| < 0.55 (where 1 - 2/(e^2x + 1) would
// cancel), the exp form above it; the sign is restored from x.
template <int N>
static inline void vtanh_n(vf (&x)[N]) {
  vi32 sign[N];
  vf a[N], e[N], s[N];
  RF_EACH {
    sign[j] = (vi32)x[j] & (int32_t)0x80000000;
    a[j] = (vf)((vi32)x[j] & 0x7fffffff);
    e[j] = a[j] + a[j];
  }
  vexp_n(e);
  RF_EACH s[j] = (a[j] * a[j]) * -1.45583438e-3f + 3.59212803e-3f;  // -929569/638512875, 21844/6081075
  RF_EACH s[j] = s[j] * (a[j] * a[j]) - 8.86323552e-3f;               // -1382/155925
  RF_EACH s[j] = s[j] * (a[j] * a[j]) + 2.18694885e-2f;               // 62/2835
  RF_EACH s[j] = s[j] * (a[j] * a[j]) - 5.39682540e-2f;               // -17/315
  RF_EACH s[j] = s[j] * (a[j] * a[j]) + 1.33333333e-1f;               // 2/15
  RF_EACH s[j] = s[j] * (a[j] * a[j]) - 3.33333333e-1f;               // -1/3
  RF_EACH {
    vf small = a[j] + a[j] * (a[j] * a[j]) * s[j];
    vf big = 1.0f - 2.0f / (e[j] + 1.0f);
    vf r = a[j] < 0.55f ? small : big;
    x[j] = (vf)((vi32)r | sign[j]);
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

template <typename V>
static inline V vrelu(V x) {
  return x < 0 ? V{} : x;   // NaN stays NaN
}

}  // namespace RF_NS
}  // namespace rnnfast
