// Vanilla RNN cell, h = act(x W_ih^T + b_ih + h_prev W_hh^T + b_hh), act = tanh or relu.
#include "activations.h"
#include "cell_common.h"
#include "simd.h"
#include "kernels.h"
#include "recurrence.h"

namespace rnnfast {
namespace RF_NS {

struct RnnCell {
  static constexpr bool kSplitInput = false;
  static constexpr int NV = 4;  // four vectors of consecutive hidden units per panel
  template <typename T> static constexpr int units() { return NV * Simd<T>::W; }
  template <typename T> static long column(long p, int v, int u, int H) {
    long unit = (p * NV + v) * Simd<T>::W + u;
    return unit < H ? unit : -1;
  }
  template <typename T, int MR, bool Full>
  static void forward_epilogue(int cell, int p, int H, typename Simd<T>::V (&acc)[MR][NV],
                               const typename Simd<T>::V (*)[NV], const FwdRows<T> (&io)[MR]) {
    typedef typename Simd<T>::V V;
    constexpr int W = Simd<T>::W;
    V pre[MR * NV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) {
        const int u0 = (p * NV + v) * W;
        pre[r * NV + v] = acc[r][v] + load_units<T>(io[r].x + u0, Full ? W : H - u0);
      }
    if (cell == RNN_RELU)
      for (int j = 0; j < MR * NV; ++j) pre[j] = vrelu(pre[j]);
    else
      vtanh_n(pre);
    for (int r = 0; r < MR; ++r) {
      if (!io[r].h_new) continue;
      for (int v = 0; v < NV; ++v) {
        const int u0 = (p * NV + v) * W, n = Full ? W : H - u0;
        if (n <= 0) break;
        store_units<T>(io[r].h_new + u0, pre[r * NV + v], n);
        if (io[r].y) store_units<T>(io[r].y + u0, pre[r * NV + v], n);
      }
    }
  }

  // The forward was h = act(pre): d(pre) = dh*(1 - h^2) for tanh, dh*[h > 0] for relu.
  template <typename T>
  static void backward_row(int cell, int H, const BwdRows<T>& io) {
    typedef typename Simd<T>::V V;
    typedef typename Simd<T>::VI VI;
    constexpr int W = Simd<T>::W;
    const T* hs = io.h_new;
    T* ah = io.da;
    const V one = vbcast<V>(T(1));
    for (int u = 0; u < H; u += W) {  // explicit vectors: GCC left the scalar loop alone
      const int n = H - u < W ? H - u : W;
      const V dh = upstream_dh(io, u, n);
      const V h = load_units<T>(hs + u, n);
      const V da = cell == RNN_RELU ? (V)((VI)dh & (VI)(h > V{})) : dh * (one - h * h);
      store_units<T>(ah + u, da, n);
    }
  }
};

RF_DEFINE_CELL(rnn, RnnCell)

}  // namespace RF_NS
}  // namespace rnnfast
