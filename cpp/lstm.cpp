// LSTM cell (gates i, f, g, o): fused forward epilogue and BPTT step, side by side.
#include "activations.h"
#include "cell_common.h"
#include "simd.h"
#include "kernels.h"
#include "recurrence.h"

namespace rnnfast {
namespace RF_NS {

struct LstmCell : GatePanels {
  static constexpr int NV = 4;  // one vector per gate, W hidden units per panel
  static constexpr bool kSplitInput = false;
  // acc[r] holds row r's h_prev W_hh^T for gates i, f, g, o of units [u0, u0+W).
  template <typename T, int MR, bool Full>
  static void forward_epilogue(int, int p, int H, typename Simd<T>::V (&acc)[MR][NV],
                               const typename Simd<T>::V (*)[NV], const FwdRows<T> (&io)[MR]) {
    typedef typename Simd<T>::V V;
    const int u0 = p * Simd<T>::W, n = Full ? Simd<T>::W : H - u0;
    V ifo[3 * MR], g[MR], c[MR], tc[MR];
    for (int r = 0; r < MR; ++r) {
      const T* x = io[r].x + u0;
      ifo[3 * r] = acc[r][0] + load_units<T>(x, n);
      ifo[3 * r + 1] = acc[r][1] + load_units<T>(x + H, n);
      g[r] = acc[r][2] + load_units<T>(x + 2 * H, n);
      ifo[3 * r + 2] = acc[r][3] + load_units<T>(x + 3 * H, n);
    }
    vsigmoid_n(ifo);
    vtanh_n(g);
    for (int r = 0; r < MR; ++r)
      tc[r] = c[r] = ifo[3 * r + 1] * load_units<T>(io[r].c_prev + u0, n) + ifo[3 * r] * g[r];
    vtanh_n(tc);
    for (int r = 0; r < MR; ++r) {
      if (!io[r].h_new) continue;
      const V h = ifo[3 * r + 2] * tc[r];
      store_units<T>(io[r].c_new + u0, c[r], n);
      store_units<T>(io[r].h_new + u0, h, n);
      if (io[r].y) store_units<T>(io[r].y + u0, h, n);
      if (T* cache = io[r].cache) {
        store_cache<T>(io[r], cache + u0, ifo[3 * r], n);
        store_cache<T>(io[r], cache + H + u0, ifo[3 * r + 1], n);
        store_cache<T>(io[r], cache + 2 * H + u0, g[r], n);
        store_cache<T>(io[r], cache + 3 * H + u0, ifo[3 * r + 2], n);
        store_cache<T>(io[r], cache + 4 * H + u0, tc[r], n);
      }
    }
  }

  // The forward was c = f*c_prev + i*g, h = o*tanh(c); so with dh = dh_next + dy:
  // do = dh*tanh(c), dc += dh*o*(1 - tanh(c)^2), di = dc*g, dg = dc*i, df = dc*c_prev,
  // dc_prev = dc*f, and each pre-activation grad is the gate's derivative times that.
  template <typename T>
  static void backward_row(int, int H, const BwdRows<T>& io) {
    typedef typename Simd<T>::V V;
    constexpr int W = Simd<T>::W;
    const T *ci = io.cache, *cf = ci + H, *cg = cf + H, *co = cg + H, *ctc = co + H;
    const T* cp = io.c_prev;
    T *ai = io.da, *dcs = io.dc;  // gate gradients i, f, g, o at ai + v H
    const V one = vbcast<V>(T(1));
    for (int u = 0; u < H; u += W) {  // explicit vectors: GCC left the scalar loop alone
      const int n = H - u < W ? H - u : W;
      const V dh = upstream_dh(io, u, n);
      const V i = load_units<T>(ci + u, n), f = load_units<T>(cf + u, n);
      const V g = load_units<T>(cg + u, n), o = load_units<T>(co + u, n);
      const V tc = load_units<T>(ctc + u, n);
      const V dc = load_units<T>(dcs + u, n) + dh * o * (one - tc * tc);
      const V da[4] = {dc * g * i * (one - i), dc * load_units<T>(cp + u, n) * f * (one - f),
                       dc * i * (one - g * g), dh * tc * o * (one - o)};
      for (int v = 0; v < 4; ++v) store_units<T>(ai + v * H + u, da[v], n);
      store_units<T>(dcs + u, dc * f, n);
    }
  }
};

RF_DEFINE_CELL(lstm, LstmCell)

}  // namespace RF_NS
}  // namespace rnnfast
