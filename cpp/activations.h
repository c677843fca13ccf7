// Vector exp / sigmoid / tanh. float: polynomial approximations with <= 1.6e-7
// relative error (tests/test_engine.py checks a 1e-6 bound); double: libm per
// lane, because float64 exists for gradient checks. NaN propagates.
#pragma once
#include <cmath>
#include "simd.h"
#if defined(__SSE__)
#include <immintrin.h>
#endif

namespace rnnfast {
namespace RF_NS {

// Every function works in place on N vectors, one stage for several vectors before the
// next: the chains are ~90 cycles long, and interleaving independent ones (the rows and
// gates of a panel) lets the core overlap them instead of waiting on each in turn.
#define RF_EACH _Pragma("GCC unroll 32") for (int j = 0; j < N; ++j)

// Whether a * b + c compiles to one fused multiply-add (GCC and Clang contract these
// expressions where the target has one).
#if defined(__FMA__) || defined(__aarch64__)
#define RF_FUSED_MADD 1
#else
#define RF_FUSED_MADD 0
#endif

// min(c, x) and max(c, x), a NaN x staying NaN: x86's min/max return their second operand
// when either is NaN, one instruction where the compare-and-select takes two.
#if RF_VBYTES == 64 && defined(__AVX512F__)
#define RF_MINMAX(op, c, x) (vf) _mm512_##op##_ps((__m512)(c), (__m512)(x))
#elif RF_VBYTES == 32 && defined(__AVX__)
#define RF_MINMAX(op, c, x) (vf) _mm256_##op##_ps((__m256)(c), (__m256)(x))
#elif RF_VBYTES == 16 && defined(__SSE__)
#define RF_MINMAX(op, c, x) (vf) _mm_##op##_ps((__m128)(c), (__m128)(x))
#endif
static inline vf vmin_c(vf c, vf x) {
#ifdef RF_MINMAX
  return RF_MINMAX(min, c, x);
#else
  return c < x ? c : x;
#endif
}
static inline vf vmax_c(vf c, vf x) {
#ifdef RF_MINMAX
  return RF_MINMAX(max, c, x);
#else
  return c > x ? c : x;
#endif
}
#undef RF_MINMAX

// e^x = 2^n e^r with x = n ln2 + r, |r| <= ln2/2: q = e^r - 1 = r + r^2 P(r), P of degree
// 4 fitted for relative error on e^r (float evaluation: 3e-8), 2^n assembled in the
// exponent bits. x must lie in [-87.3, 88.3]; on return x holds 2^n. With fused
// multiply-adds P reads r = x - n kLn2Hi (ln2 in float, one FMA) and the r and r^2 around
// it read rl = r - n kLn2Lo, a correction off the polynomial's chain. Without them n ln2
// would be rounded (exp off by 4e-6), so kLn2Hi is short and P reads rl too, as before.
// Exp within 8.5e-8 of float64, as with Cephes' degree-7 polynomial on a two-FMA r; 2 FMAs
// less on the chain, 1 less in all: `small` LSTM inference and training -0.5 to -1% (Zen 4,
// alternating processes).
template <int N>
static inline void vexp_parts(vf (&x)[N], vf (&q)[N]) {
#if RF_FUSED_MADD
  constexpr float kLn2Hi = 0.693147182f, kLn2Lo = -1.904654323e-9f;
#else  // n times a short ln2 is exact where the product is rounded before the difference
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
#endif
  vf n[N], r[N], rl[N], t[N];
  RF_EACH {
    t[j] = x[j] * 1.44269504088896341f + 12582912.0f;  // 1.5*2^23 + round(x log2 e)
    n[j] = t[j] - 12582912.0f;
    r[j] = x[j] - n[j] * kLn2Hi;
  }
  RF_EACH rl[j] = r[j] - n[j] * kLn2Lo;
  if constexpr (!RF_FUSED_MADD) {
    RF_EACH r[j] = rl[j];
  }
  RF_EACH q[j] = r[j] * 1.38179e-3f + 8.36871e-3f;
  RF_EACH q[j] = q[j] * r[j] + 4.166833e-2f;
  RF_EACH q[j] = q[j] * r[j] + 1.6666521e-1f;
  RF_EACH q[j] = q[j] * r[j] + 4.9999994e-1f;
  RF_EACH q[j] = q[j] * (rl[j] * rl[j]) + rl[j];
  // t's bits are those of 1.5*2^23 (0x4B400000) plus n
  RF_EACH x[j] = (vf)(((vi32)t[j] + (127 - 0x4B400000)) << 23);
}

template <int N>
static inline void vexp_n(vf (&x)[N]) {
  vf q[N];
  RF_EACH x[j] = vmax_c(vbcast<vf>(-87.3f), vmin_c(vbcast<vf>(88.3f), x[j]));
  vexp_parts(x, q);
  RF_EACH x[j] = x[j] * q[j] + x[j];
}

// f on x[0, N) in chunks of 4 vectors, each stage for a chunk before the next: enough
// independent chains to overlap, few enough temporaries to stay in registers (all N at
// once spilled them: an LSTM tile's activations, 6 rows, 160 -> 141 ns).
template <int N, class F>
static inline __attribute__((always_inline)) void in_chunks(vf (&x)[N], F&& f) {
  constexpr int M = N < 4 ? N : 4;
#pragma GCC unroll 16
  for (int j0 = 0; j0 + M <= N; j0 += M) {
    vf c[M];
    for (int j = 0; j < M; ++j) c[j] = x[j0 + j];
    f(c);
    for (int j = 0; j < M; ++j) x[j0 + j] = c[j];
  }
  if constexpr (N % M != 0) {
    vf c[N % M];
    for (int j = 0; j < N % M; ++j) c[j] = x[N - N % M + j];
    f(c);
    for (int j = 0; j < N % M; ++j) x[N - N % M + j] = c[j];
  }
}

template <int N>
static inline void vsigmoid_chunk(vf (&x)[N]) {
  RF_EACH x[j] = -x[j];
  vexp_n(x);
  RF_EACH x[j] = 1.0f / (1.0f + x[j]);
}
template <int N>
static inline void vsigmoid_n(vf (&x)[N]) {
  in_chunks(x, [](auto& c) { vsigmoid_chunk(c); });
}

// tanh |x| = m / (m + 2) with m = e^(2|x|) - 1 = 2^n q + (2^n - 1), which keeps its
// relative accuracy down to tiny x (no 1 - 2/(e + 1) cancellation, so no second
// branch); |x| is clamped at 10, where tanh is 1 in float. The sign comes from x.
template <int N>
static inline void vtanh_chunk(vf (&x)[N]) {
  vi32 sign[N];
  vf y[N], q[N];
  RF_EACH {
    sign[j] = (vi32)x[j] & (int32_t)0x80000000;
    vf a = (vf)((vi32)x[j] & 0x7fffffff);
    a = vmin_c(vbcast<vf>(10.0f), a);
    y[j] = a + a;
  }
  vexp_parts(y, q);
  RF_EACH {
    vf m = y[j] * q[j] + (y[j] - 1.0f);
    x[j] = (vf)((vi32)(m / (m + 2.0f)) | sign[j]);
  }
}
template <int N>
static inline void vtanh_n(vf (&x)[N]) {
  in_chunks(x, [](auto& c) { vtanh_chunk(c); });
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
#undef RF_FUSED_MADD

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
