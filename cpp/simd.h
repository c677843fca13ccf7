// Portable SIMD through GCC/Clang vector extensions. Each kernel translation unit
// is compiled per instruction set; RF_ISA_* selects the vector width here.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#ifndef RF_ISA
#define RF_ISA generic
#define RF_ISA_generic 1
#endif

#if defined(RF_ISA_avx512)
#define RF_VBYTES 64
#elif defined(RF_ISA_avx2)
#define RF_VBYTES 32
#else
#define RF_VBYTES 16
#endif

#define RF_NS RF_ISA
#define RF_STR2(x) #x
#define RF_STR(x) RF_STR2(x)

namespace rnnfast {
namespace RF_NS {

typedef float vf __attribute__((vector_size(RF_VBYTES)));
typedef double vd __attribute__((vector_size(RF_VBYTES)));
typedef int32_t vi32 __attribute__((vector_size(RF_VBYTES)));
typedef int64_t vi64 __attribute__((vector_size(RF_VBYTES)));

template <typename T> struct Simd;
template <> struct Simd<float> {
  typedef vf V;
  typedef vi32 VI;
  static constexpr int W = RF_VBYTES / 4;
};
template <> struct Simd<double> {
  typedef vd V;
  typedef vi64 VI;
  static constexpr int W = RF_VBYTES / 8;
};

template <typename V, typename T>
static inline __attribute__((always_inline)) V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
static inline __attribute__((always_inline)) void vstore(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V, typename T>
static inline __attribute__((always_inline)) V vbcast(T s) {
  return s - V{};  // x - 0 == x for every x (x + 0 would turn -0 into +0 and cost an add)
}
// Loads n < W elements, the rest zero (none for n <= 0); stores n < W. Masked loads and
// stores on x86, which neither fault nor touch the lanes past n: the element-by-element
// copy through memory they replace stalled on store forwarding (the epilogue of a partial
// last panel, LSTM H 100, cost about a full panel's product).
template <typename T>  // lanes 0, 1, ..., W - 1
static inline typename Simd<T>::VI lane_index() {
  typename Simd<T>::VI lane = {};
  for (int i = 0; i < Simd<T>::W; ++i) lane[i] = i;
  return lane;
}
#if defined(RF_ISA_avx512)
static inline unsigned part_mask(int n) { return n <= 0 ? 0u : (1u << n) - 1; }
#elif defined(RF_ISA_avx2)
template <typename T>  // -1 in the lanes below n
static inline __m256i part_mask(int n) {
  return (__m256i)(lane_index<T>() < n);
}
#endif
template <typename V, typename T>
static inline V vload_part(const T* p, int n) {
#if defined(RF_ISA_avx512)
  if constexpr (sizeof(T) == 4)
    return (V)_mm512_maskz_loadu_ps((__mmask16)part_mask(n), p);
  else
    return (V)_mm512_maskz_loadu_pd((__mmask8)part_mask(n), p);
#elif defined(RF_ISA_avx2)
  if constexpr (sizeof(T) == 4)
    return (V)_mm256_maskload_ps(p, part_mask<T>(n));
  else
    return (V)_mm256_maskload_pd(p, part_mask<T>(n));
#else
  V v = V{};
  T tmp[sizeof(V) / sizeof(T)];
  std::memcpy(tmp, &v, sizeof(V));
  for (int i = 0; i < n; ++i) tmp[i] = p[i];
  std::memcpy(&v, tmp, sizeof(V));
  return v;
#endif
}
template <typename V, typename T>
static inline void vstore_part(T* p, V v, int n) {
#if defined(RF_ISA_avx512)
  if constexpr (sizeof(T) == 4)
    _mm512_mask_storeu_ps(p, (__mmask16)part_mask(n), (__m512)v);
  else
    _mm512_mask_storeu_pd(p, (__mmask8)part_mask(n), (__m512d)v);
#elif defined(RF_ISA_avx2)
  if constexpr (sizeof(T) == 4)
    _mm256_maskstore_ps(p, part_mask<T>(n), (__m256)v);
  else
    _mm256_maskstore_pd(p, part_mask<T>(n), (__m256d)v);
#else
  T tmp[sizeof(V) / sizeof(T)];
  std::memcpy(tmp, &v, sizeof(V));
  for (int i = 0; i < n; ++i) p[i] = tmp[i];
#endif
}

// Lane l of the result is lane (l + shift) mod W of x: one permute on AVX-512 (no
// __builtin_shuffle, which Clang lacks), lane by lane elsewhere.
template <typename T>
static inline typename Simd<T>::V rotate_lanes(typename Simd<T>::V x, int shift) {
  constexpr int W = Simd<T>::W;
#if defined(RF_ISA_avx512)
  const typename Simd<T>::VI idx = (lane_index<T>() + shift) & (W - 1);
  if constexpr (W == 16)
    return (typename Simd<T>::V)_mm512_permutexvar_ps((__m512i)idx, (__m512)x);
  else
    return (typename Simd<T>::V)_mm512_permutexvar_pd((__m512i)idx, (__m512d)x);
#else
  typename Simd<T>::V y = {};
  for (int l = 0; l < W; ++l) y[l] = x[(l + shift) & (W - 1)];
  return y;
#endif
}

// A store that bypasses the caches (whole aligned vectors; a plain store otherwise), for
// data read back long after: it neither evicts what the kernel reads nor reads the line
// first. stream_fence() orders such stores before what follows (a join, another thread).
template <typename V, typename T>
static inline __attribute__((always_inline)) void vstore_stream(T* p, V v) {
#if defined(__x86_64__) || defined(__i386__)
  if (((uintptr_t)p & (sizeof(V) - 1)) == 0) {  // the bits as they are: float or double
#if RF_VBYTES == 64
    _mm512_stream_si512((__m512i*)p, (__m512i)v);
#elif RF_VBYTES == 32
    _mm256_stream_si256((__m256i*)p, (__m256i)v);
#else
    _mm_stream_si128((__m128i*)p, (__m128i)v);
#endif
    return;
  }
#endif
  vstore(p, v);
}
static inline void stream_fence() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

}  // namespace RF_NS
}  // namespace rnnfast
