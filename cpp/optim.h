// Optimizer updates over flat parameter buffers, PyTorch's formulas (torch.optim docs):
// one call updates a whole buffer (a model's parameters live in a few of them).
#pragma once

namespace rnnfast {

enum OptimAlgo : int { OPT_SGD = 0, OPT_ADAM = 1, OPT_RMSPROP = 2, OPT_ADAGRAD = 3 };

// State buffers by algorithm (n elements each, null where the option is off):
//   SGD      s1 momentum buffer
//   Adam(W)  s1 exp_avg, s2 exp_avg_sq, s3 max_exp_avg_sq (amsgrad)
//   RMSprop  s1 square_avg, s2 grad_avg (centered), s3 momentum buffer
//   Adagrad  s1 sum
template <typename T>
struct OptimStep {
  int algo;
  T* p;
  const T* g;
  T* s1;
  T* s2;
  T* s3;
  long n;
  long step;          // 1 on the first update
  double lr, weight_decay, momentum, dampening, beta1, beta2, eps, alpha, lr_decay;
  bool nesterov, decoupled, maximize;  // decoupled: AdamW's decay p *= 1 - lr*wd
};

}  // namespace rnnfast
