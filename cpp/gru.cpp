// GRU cell (gates r, z, n; b_hn inside the reset product): forward epilogue and BPTT step.
#include "activations.h"
#include "cell_common.h"
#include "simd.h"
#include "kernels.h"
#include "recurrence.h"

namespace rnnfast {
namespace RF_NS {

struct GruCell : GatePanels {
  static constexpr int NV = 3;
  static constexpr bool kSplitInput = true;  // r multiplies the h part of n alone
  // x holds x W_ih^T + b_ih, plus b_hh for r and z (not n: b_hn is added inside r*(.)).
  // A fused step passes x W_ih^T in xacc, and x holds the biases alone.
  template <typename T, int MR, bool Full>
  static void forward_epilogue(int, int p, int H, typename Simd<T>::V (&acc)[MR][NV],
                               const typename Simd<T>::V (*xacc)[NV], const FwdRows<T> (&io)[MR]) {
    typedef typename Simd<T>::V V;
    const int u0 = p * Simd<T>::W, n = Full ? Simd<T>::W : H - u0;
    const V bhn = io[0].b_hn ? load_units<T>(io[0].b_hn + u0, n) : V{};
    V rz[2 * MR], hn[MR], nn[MR];
    V xn[MR];
    for (int r = 0; r < MR; ++r) {
      rz[2 * r] = acc[r][0] + load_units<T>(io[r].x + u0, n);
      rz[2 * r + 1] = acc[r][1] + load_units<T>(io[r].x + H + u0, n);
      xn[r] = load_units<T>(io[r].x + 2 * H + u0, n);
      if (xacc) {
        rz[2 * r] += xacc[r][0];
        rz[2 * r + 1] += xacc[r][1];
        xn[r] += xacc[r][2];
      }
      hn[r] = acc[r][2] + bhn;
    }
    vsigmoid_n(rz);
    for (int r = 0; r < MR; ++r) nn[r] = xn[r] + rz[2 * r] * hn[r];
    vtanh_n(nn);
    for (int r = 0; r < MR; ++r) {
      if (!io[r].h_new) continue;
      const V z = rz[2 * r + 1];
      const V h = nn[r] + z * (load_units<T>(io[r].h_prev + u0, n) - nn[r]);
      store_units<T>(io[r].h_new + u0, h, n);
      if (io[r].y) store_units<T>(io[r].y + u0, h, n);
      if (T* cache = io[r].cache) {
        store_cache<T>(io[r], cache + u0, rz[2 * r], n);
        store_cache<T>(io[r], cache + H + u0, z, n);
        store_cache<T>(io[r], cache + 2 * H + u0, nn[r], n);
        store_cache<T>(io[r], cache + 3 * H + u0, hn[r], n);
      }
    }
  }

  // The forward was h = (1-z)*n + z*h_prev, n = tanh(xn + r*hn), hn = W_hn h_prev + b_hn;
  // so dn = dh*(1-z), dz = dh*(h_prev - n), dh_prev gets dh*z directly, and
  // d(pre_n) = dn*(1-n^2) goes to W_in as is and to W_hn times r; dr = d(pre_n)*hn.
  template <typename T>
  static void backward_row(int, int H, const BwdRows<T>& io) {
    typedef typename Simd<T>::V V;
    constexpr int W = Simd<T>::W;
    const T *cr = io.cache, *cz = cr + H, *cn = cz + H, *chn = cn + H;
    const T* hp = io.h_prev;
    // dA row [dr | dz | dn*r | dn]: W_hh's gradients read its first 3H, W_ih's and dx skip
    // dn*r (GemmGaps); one row of 4H stores rather than two of 3H.
    T *ar = io.da, *az = ar + H, *anr = az + H, *an = anr + H, *direct = io.direct;
    const V one = vbcast<V>(T(1));
    for (int u = 0; u < H; u += W) {  // explicit vectors: GCC left the scalar loop alone
      const int n = H - u < W ? H - u : W;
      const V dh = upstream_dh(io, u, n);
      const V r = load_units<T>(cr + u, n), z = load_units<T>(cz + u, n);
      const V nn = load_units<T>(cn + u, n);
      const V dpre_n = dh * (one - z) * (one - nn * nn);
      const V dpre_r = dpre_n * load_units<T>(chn + u, n) * r * (one - r);
      const V dpre_z = dh * (load_units<T>(hp + u, n) - nn) * z * (one - z);
      store_units<T>(ar + u, dpre_r, n);
      store_units<T>(az + u, dpre_z, n);
      store_units<T>(anr + u, dpre_n * r, n);
      store_units<T>(an + u, dpre_n, n);
      store_units<T>(direct + u, dh * z, n);
    }
  }
};

RF_DEFINE_CELL(gru, GruCell)

}  // namespace RF_NS
}  // namespace rnnfast
