// The feed-forward layers and losses, composed from the kernel table: what the Python
// layers call. Row-major arrays throughout; nthreads 0 = the process-wide setting.
#pragma once
#include <cstdint>

namespace rnnfast {

enum DenseActivation : int { ACT_NONE = 0, ACT_RELU = 1, ACT_TANH = 2, ACT_SIGMOID = 3 };
enum LossKind : int { LOSS_SPARSE_XENT = 0, LOSS_XENT = 1, LOSS_BCE = 2, LOSS_MSE = 3 };

// y (N, out) = act(x (N, in) W^T + b); W (out, in), b (out) or null.
template <typename T>
void dense_forward(const T* x, long N, long in, const T* W, long out, const T* b, int act, T* y,
                   int nthreads);
// From the forward's x and y: dW += dz^T x, db += sum of dz rows (db may be null), and
// dx = dz W when dx is not null, where dz = dy * act'(y) (scratch dz (N, out), may be dy).
template <typename T>
void dense_backward(const T* x, long N, long in, const T* W, long out, int act, const T* y,
                    const T* dy, T* dz, T* dW, T* db, T* dx, int nthreads);

// Returns the first out-of-range index position, or -1 (nothing written then).
template <typename T>
long embedding_forward(const int64_t* idx, long n, const T* W, long vocab, long dim, T* out,
                       int nthreads);
template <typename T>
void embedding_backward(const int64_t* idx, long n, const T* dout, long dim, T* dW, int nthreads);

// y = x * mask with mask = 0 (probability p) or 1/(1-p), drawn by the engine's inter-layer
// dropout hash of (seed, e); mask (n) is written; y may be x.
template <typename T>
void dropout(const T* x, T* y, T* mask, long n, double p, uint64_t seed, int nthreads);

// See layers.cpp: sum of weighted row losses; grad = scale * d(loss)/dz when not null.
template <typename T>
double loss(int kind, const T* z, long N, long C, const int64_t* labels, const T* targets,
            const T* weights, double scale, T* grad, long* correct, int nthreads);

}  // namespace rnnfast
