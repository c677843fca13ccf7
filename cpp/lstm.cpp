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
        store_units<T>(cache + u0, ifo[3 * r], n);
        store_units<T>(cache + H + u0, ifo[3 * r + 1], n);
        store_units<T>(cache + 2 * H + u0, g[r], n);
        store_units<T>(cache + 3 * H + u0, ifo[3 * r + 2], n);
        store_units<T>(cache + 4 * H + u0, tc[r], n);
      }
    }
  }

  // The forward was c = f*c_prev + i*g, h = o*tanh(c); so with dh = dh_next + dy:
  // do = dh*tanh(c), dc += dh*o*(1 - tanh(c)^2), di = dc*g, dg = dc*i, df = dc*c_prev,
  // dc_prev = dc*f, and each pre-activation grad is the gate's derivative times that.
  template <typename T>
  static void backward_row(int, int H, const BwdRows<T>& io) {
    const T *ci = io.cache, *cf = ci + H, *cg = cf + H, *co = cg + H, *ctc = co + H;
    T *ai = io.da_hh, *af = ai + H, *ag = af + H, *ao = ag + H;
    T* ih = io.da_ih;  // the same values for W_ih, in time order, when kept apart
    for (int u = 0; u < H; ++u) {
      const T dh = io.dh[u] + (io.dy ? io.dy[u] : T(0));
      const T i = ci[u], f = cf[u], g = cg[u], o = co[u], tc = ctc[u];
      const T dc = io.dc[u] + dh * o * (T(1) - tc * tc);
      ai[u] = dc * g * i * (T(1) - i);
      af[u] = dc * io.c_prev[u] * f * (T(1) - f);
      ag[u] = dc * i * (T(1) - g * g);
      ao[u] = dh * tc * o * (T(1) - o);
      if (ih) {
        ih[u] = ai[u];
        ih[H + u] = af[u];
        ih[2 * H + u] = ag[u];
        ih[3 * H + u] = ao[u];
      }
      io.dc[u] = dc * f;
      io.direct[u] = T(0);
    }
  }
};

RF_DEFINE_CELL(lstm, LstmCell)

}  // namespace RF_NS
}  // namespace rnnfast
