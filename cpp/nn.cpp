#include "nn.h"

#include "dispatch.h"
#include "threading.h"

namespace rnnfast {

template <typename T>
void dense_forward(const T* x, long N, long in, const T* W, long out, const T* b, int act, T* y,
                   int nthreads) {
  const KernelTable<T>& kt = kernels<T>();
  const ThreadBudget budget(nthreads);
  kt.gemm((int)N, (int)out, (int)in, x, in, 1, W, 1, in, y, out, false, b, budget.threads());
  kt.dense_activation(act, y, N * out, budget.threads());
}

template <typename T>
void dense_backward(const T* x, long N, long in, const T* W, long out, int act, const T* y,
                    const T* dy, T* dz, T* dW, T* db, T* dx, int nthreads) {
  const KernelTable<T>& kt = kernels<T>();
  const ThreadBudget budget(nthreads);
  const int nt = budget.threads();
  kt.dense_activation_backward(act, y, dy, dz, N * out, nt);
  kt.gemm((int)out, (int)in, (int)N, dz, 1, out, x, in, 1, dW, in, true, nullptr, nt);
  if (db) kt.col_sums(db, dz, N, (int)out, nt);
  if (dx) kt.gemm((int)N, (int)in, (int)out, dz, out, 1, W, in, 1, dx, in, false, nullptr, nt);
}

template <typename T>
long embedding_forward(const int64_t* idx, long n, const T* W, long vocab, long dim, T* out,
                       int nthreads) {
  const ThreadBudget budget(nthreads);
  return kernels<T>().embedding_forward(idx, n, W, vocab, dim, out, budget.threads());
}

template <typename T>
void embedding_backward(const int64_t* idx, long n, const T* dout, long dim, T* dW, int nthreads) {
  const ThreadBudget budget(nthreads);
  kernels<T>().embedding_backward(idx, n, dout, dim, dW, budget.threads());
}

template <typename T>
void dropout(const T* x, T* y, T* mask, long n, double p, uint64_t seed, int nthreads) {
  const ThreadBudget budget(nthreads);
  kernels<T>().dropout(x, y, mask, n, p, seed, 0, budget.threads());
}

template <typename T>
double loss(int kind, const T* z, long N, long C, const int64_t* labels, const T* targets,
            const T* weights, double scale, T* grad, long* correct, int nthreads) {
  const ThreadBudget budget(nthreads);
  return kernels<T>().loss(kind, z, N, C, labels, targets, weights, scale, grad, correct,
                           budget.threads());
}

#define RF_INSTANTIATE_NN(T)                                                                    \
  template void dense_forward<T>(const T*, long, long, const T*, long, const T*, int, T*, int); \
  template void dense_backward<T>(const T*, long, long, const T*, long, int, const T*, const T*, \
                                  T*, T*, T*, T*, int);                                         \
  template long embedding_forward<T>(const int64_t*, long, const T*, long, long, T*, int);     \
  template void embedding_backward<T>(const int64_t*, long, const T*, long, T*, int);          \
  template void dropout<T>(const T*, T*, T*, long, double, uint64_t, int);                      \
  template double loss<T>(int, const T*, long, long, const int64_t*, const T*, const T*, double, \
                          T*, long*, int);
RF_INSTANTIATE_NN(float)
RF_INSTANTIATE_NN(double)

}  // namespace rnnfast
