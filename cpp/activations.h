// Vector exp / sigmoid / tanh. float: polynomial approximations with ~2e-7
// relative error (tests/test_activations.py checks the bound); double: libm per
// lane, because float64 exists for gradient checks. NaN propagates.
#pragma once
#include <cmath>
#include "simd.h"

namespace rnnfast {
namespace RF_NS {

// e^x: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial (Cephes' expf
// coefficients), 2^n assembled in the exponent bits.
static inline vf vexp(vf x) {
  x = x > 88.3f ? vbcast<vf>(88.3f) : x;      // NaN fails both tests and stays NaN
  x = x < -87.3f ? vbcast<vf>(-87.3f) : x;
  vf t = x * 1.44269504088896341f + 12582912.0f;  // round to nearest via 1.5*2^23
  vf n = t - 12582912.0f;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = vbcast<vf>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  vi32 e = (__builtin_convertvector(n, vi32) + 127) << 23;
  return p * (vf)e;
}

static inline vf vsigmoid(vf x) { return 1.0f / (1.0f + vexp(-x)); }

// tanh: odd Taylor series to x^15 for |x| < 0.55 (where 1 - 2/(e^2x + 1) would
// cancel), the exp form above it; the sign is restored from x.
static inline vf vtanh(vf x) {
  vi32 sign = (vi32)x & (int32_t)0x80000000;
  vf a = (vf)((vi32)x & 0x7fffffff);
  vf big = 1.0f - 2.0f / (vexp(a + a) + 1.0f);
  vf a2 = a * a;
  vf s = vbcast<vf>(-1.45583438e-3f);       // -929569/638512875
  s = s * a2 + 3.59212803e-3f;              // 21844/6081075
  s = s * a2 - 8.86323552e-3f;              // -1382/155925
  s = s * a2 + 2.18694885e-2f;              // 62/2835
  s = s * a2 - 5.39682540e-2f;              // -17/315
  s = s * a2 + 1.33333333e-1f;              // 2/15
  s = s * a2 - 3.33333333e-1f;              // -1/3
  vf small = a + a * a2 * s;
  vf r = a < 0.55f ? small : big;
  return (vf)((vi32)r | sign);
}

static inline vd vexp(vd x) {
  for (int i = 0; i < Simd<double>::W; ++i) x[i] = std::exp(x[i]);
  return x;
}
static inline vd vsigmoid(vd x) {
  for (int i = 0; i < Simd<double>::W; ++i) x[i] = 1.0 / (1.0 + std::exp(-x[i]));
  return x;
}
static inline vd vtanh(vd x) {
  for (int i = 0; i < Simd<double>::W; ++i) x[i] = std::tanh(x[i]);
  return x;
}

template <typename V>
static inline V vrelu(V x) {
  return x < 0 ? V{} : x;   // NaN stays NaN
}

}  // namespace RF_NS
}  // namespace rnnfast
