// Pieces shared by the cell files: per-row pointers handed to epilogues, loads and stores
// of a panel's units.
#pragma once
#include "simd.h"

namespace rnnfast {
namespace RF_NS {

template <typename T>
struct FwdRows {
  const T* x;       // (G*H) input projection + biases of this row
  const T* h_prev;  // (H)
  T* h_new;         // null: the row is computed alongside but not stored
  const T* c_prev;  // LSTM only
  T* c_new;
  T* y;             // output row (may be null)
  T* cache;         // (W*H) kept for backward (may be null)
  bool cache_stream;  // store the cache past the caches (vstore_stream)
  const T* b_hn;    // GRU only
};

template <typename T>
struct BwdRows {
  const T* dy;      // upstream gradient of this row's output (may be null)
  T* dh;            // in: dL/dh after this step (recurrent part)
  T* dc;            // LSTM: in dL/dc after this step, out: before it
  const T* h_prev;
  const T* h_new;
  const T* c_prev;
  const T* cache;
  T* da;            // (cell_da_width * H) pre-activation grads
  T* direct;        // (H) part of dL/dh_prev not going through W_hh (cell_has_direct)
};

// Panel layout of cells with one vector per gate: panel p holds gate v of units
// [p*W, p*W + W) in vector v.
struct GatePanels {
  template <typename T> static constexpr int units() { return Simd<T>::W; }
  template <typename T> static long column(long p, int v, int u, int H) {
    long unit = p * Simd<T>::W + u;
    return unit < H ? v * (long)H + unit : -1;
  }
};

// Loads/stores W units starting at u0 of a row, n = min(W, H - u0) of them valid.
template <typename T>
static inline typename Simd<T>::V load_units(const T* p, int n) {
  typedef typename Simd<T>::V V;
  return n >= Simd<T>::W ? vload<V>(p) : vload_part<V>(p, n);
}
template <typename T>
static inline void store_units(T* p, typename Simd<T>::V v, int n) {
  if (n >= Simd<T>::W)
    vstore(p, v);
  else
    vstore_part(p, v, n);
}

// A forward row's cached values (read back by backward only).
template <typename T>
static inline void store_cache(const FwdRows<T>& io, T* p, typename Simd<T>::V v, int n) {
  if (io.cache_stream && n >= Simd<T>::W)
    vstore_stream(p, v);
  else
    store_units<T>(p, v, n);
}

// dL/dh of units [u, u + n) of a backward row: from the step after plus from the output.
template <typename T>
static inline typename Simd<T>::V upstream_dh(const BwdRows<T>& io, int u, int n) {
  typename Simd<T>::V dh = load_units<T>(io.dh + u, n);
  if (io.dy) dh += load_units<T>(io.dy + u, n);
  return dh;
}

}  // namespace RF_NS
}  // namespace rnnfast
