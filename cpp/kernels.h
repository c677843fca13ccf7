// The table of kernels one instruction-set build provides; dispatch.cpp picks a
// table at run time. Declarations of the per-ISA entry points live here too.
#pragma once
#include "common.h"
#include "optim.h"

namespace rnnfast {

template <typename T>
struct KernelTable {
  const char* name;
  // C = op(A) op(B) (+ C when accumulate) (+ the row bias when not null); see gemm.h.
  void (*gemm)(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb, long csb,
               T* C, long ldc, bool accumulate, const T* bias, int nthreads);
  // Two blocks of columns: [C | C2] = A [B | B2] (or +=); see GemmCols2 in common.h.
  void (*gemm_cols2)(int M, int N, int K, const T* A, long rsa, long csa, const T* B, long rsb,
                     long csb, T* C, long ldc, const GemmCols2<T>& cols, bool accumulate,
                     int nthreads);
  // C = A B (or +=) with A read through gaps; see GemmGaps in common.h.
  void (*gemm_gapped)(int M, int N, int K, const T* A, long rsa, long csa, const GemmGaps& gaps,
                      const T* B, long rsb, long csb, T* C, long ldc, bool accumulate,
                      int nthreads);
  long (*prepacked_size)(int K, int N);
  void (*prepack)(T* dst, int K, int N, const T* B, long rsb, long csb);
  // C (M x N) = A (M x K, row-major lda) times B pre-packed by prepack() (+ the row bias).
  void (*gemm_prepacked)(int M, int N, int K, const T* A, long lda, const T* Bp, T* C, long ldc,
                         const T* bias, int nthreads);
  // Indexed by Cell.
  // [W_ih | W_hh] packed for the fused step kernels (recurrence.h).
  long (*packed_size[4])(int in_size, int H);
  void (*pack[4])(T* dst, const T* w_ih, int in_size, const T* w_hh, int H);
  void (*forward[4])(const LayerFwd<T>& a, int nthreads);
  void (*backward[4])(const LayerBwd<T>& a, int nthreads);
  // out (n) += column sums of a (rows, n).
  void (*col_sums)(T* out, const T* a, long rows, int n, int nthreads);
  // Inter-layer dropout: mask[e] = 0 or 1/(1-p) by the counter-based hash of
  // (seed, layer, e) documented in python/rnnfast/_reference_math.py; y = x * mask
  // (y may be x).
  void (*dropout)(const T* x, T* y, T* mask, long n, double p, uint64_t seed, int layer,
                  int nthreads);
  // Sums a (n) `reps` times with vector loads over up to nthreads threads: the bench's
  // read-bandwidth probe for the streaming floor.
  double (*read_sum)(const T* a, long n, int reps, int nthreads);
  // x = f(x) in place with the kernels' vector functions (0 exp, 1 sigmoid, 2 tanh); for tests.
  void (*activation)(int kind, T* x, long n);
  // One optimizer update of a flat buffer (optim.h).
  void (*optim_step)(const OptimStep<T>& a, int nthreads);
  // sum x^2 in double (the same for any thread count); x = clamp(x * scale, -clip, clip),
  // no clamp when clip < 0.
  double (*sum_squares)(const T* x, long n, int nthreads);
  void (*scale_clip)(T* x, long n, double scale, double clip, int nthreads);
  // Layers and losses (layers.cpp).
  long (*embedding_forward)(const int64_t* idx, long n, const T* W, long vocab, long dim, T* out,
                            int nthreads);
  void (*embedding_backward)(const int64_t* idx, long n, const T* dout, long dim, T* dW,
                             int nthreads);
  void (*dense_activation)(int act, T* y, long n, int nthreads);
  void (*dense_activation_backward)(int act, const T* y, const T* dy, T* dz, long n, int nthreads);
  double (*loss)(int kind, const T* z, long N, long C, const int64_t* labels, const T* targets,
                 const T* weights, double scale, T* grad, long* correct, int nthreads);
};

#define RF_DECLARE_TABLE(isa)                                  \
  namespace isa {                                              \
  const KernelTable<float>& table_f32();                       \
  const KernelTable<double>& table_f64();                      \
  }
RF_DECLARE_TABLE(avx512)
RF_DECLARE_TABLE(avx2)
RF_DECLARE_TABLE(generic)
#undef RF_DECLARE_TABLE

#ifdef RF_NS
namespace RF_NS {
#define RF_DECLARE_CELL(name)                                               \
  template <typename T> long name##_packed_size(int in_size, int H);        \
  template <typename T>                                                     \
  void name##_pack(T* dst, const T* w_ih, int in_size, const T* w_hh, int H); \
  template <typename T> void name##_forward(const LayerFwd<T>& a, int nt);  \
  template <typename T> void name##_backward(const LayerBwd<T>& a, int nt);
RF_DECLARE_CELL(rnn)
RF_DECLARE_CELL(lstm)
RF_DECLARE_CELL(gru)
#undef RF_DECLARE_CELL
template <typename T> void optim_step(const OptimStep<T>& a, int nthreads);
template <typename T> double sum_squares(const T* x, long n, int nthreads);
template <typename T> void scale_clip(T* x, long n, double scale, double clip, int nthreads);
template <typename T>
long embedding_forward(const int64_t* idx, long n, const T* W, long vocab, long dim, T* out,
                       int nthreads);
template <typename T>
void embedding_backward(const int64_t* idx, long n, const T* dout, long dim, T* dW, int nthreads);
template <typename T> void dense_activation(int act, T* y, long n, int nthreads);
template <typename T>
void dense_activation_backward(int act, const T* y, const T* dy, T* dz, long n, int nthreads);
template <typename T>
double loss_forward_backward(int kind, const T* z, long N, long C, const int64_t* labels,
                             const T* targets, const T* weights, double scale, T* grad,
                             long* correct, int nthreads);
}  // namespace RF_NS
#define RF_INSTANTIATE_CELL(name, T)                                     \
  template long name##_packed_size<T>(int, int);                         \
  template void name##_pack<T>(T*, const T*, int, const T*, int);        \
  template void name##_forward<T>(const LayerFwd<T>&, int);              \
  template void name##_backward<T>(const LayerBwd<T>&, int);
#endif

}  // namespace rnnfast
