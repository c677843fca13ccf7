// The engine's forward and backward on fixed pseudo-random inputs, every output written as
// float64: float32 cases to <out>.f32, float64 ones to <out>.f64. Built once for this
// machine and once for another (aarch64, run under qemu) from the same generic kernels, the
// two dumps must agree (tests/test_cross_arch.py). <out>.ftz: a ReLU RNN whose every product
// is a float32 denormal, then the same sum computed here without the kernels' flush.
// <out>.act: the float32 exp, sigmoid and tanh on a grid, each point as (x, f(x)).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "dispatch.h"
#include "engine.h"

using namespace rnnfast;

static uint64_t g_state = 88172645463325252ull;
static double unit() {  // xorshift64: in [-1, 1), the same numbers on every platform
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return (double)(g_state >> 11) / 9007199254740992.0 * 2 - 1;
}
template <typename T>
static std::vector<T> random(long n, double scale) {
  std::vector<T> v(n);
  for (auto& e : v) e = T(scale * unit());
  return v;
}
template <typename T>
static void put(FILE* f, const std::vector<T>& v) {
  for (T e : v) {
    const double d = e;
    fwrite(&d, sizeof d, 1, f);
  }
}

// A training forward (from given states, with or without lengths), then the backward.
template <typename T>
static void run(FILE* f, int cell, int I, int H, bool bidir, int S, int B, int nt, bool lens) {
  const int L = 2, D = bidir ? 2 : 1;
  const bool lstm = cell == LSTM;
  Engine<T> e(cell, I, H, L, bidir, true);
  for (long i = 0; i < e.num_params(); ++i) e.params()[i] = T(0.4 * unit());
  e.repack();
  auto x = random<T>((long)S * B * I, 1.0), h0 = random<T>((long)L * D * B * H, 0.5);
  auto c0 = random<T>(h0.size(), 0.5);
  std::vector<int32_t> len(B);
  for (int b = 0; b < B; ++b) len[b] = S - (b * 3) % S;
  std::vector<T> y((long)S * B * D * H), hn(h0.size()), cn(h0.size());
  e.forward(x.data(), S, B, h0.data(), lstm ? c0.data() : nullptr, lens ? len.data() : nullptr,
            nullptr, true, 0.0, 0, nt, y.data(), hn.data(), lstm ? cn.data() : nullptr);
  auto dy = random<T>(y.size(), 1.0), dhn = random<T>(hn.size(), 1.0);
  auto dcn = random<T>(cn.size(), 1.0);
  std::vector<T> dx(x.size()), dh0(h0.size()), dc0(c0.size());
  e.zero_grad();
  e.backward(dy.data(), dhn.data(), lstm ? dcn.data() : nullptr, nt, dx.data(), dh0.data(),
             lstm ? dc0.data() : nullptr);
  put(f, y), put(f, hn), put(f, dx), put(f, dh0);
  if (lstm) put(f, cn), put(f, dc0);
  put(f, std::vector<T>(e.grads(), e.grads() + e.num_params()));
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUT\n", argv[0]);
    return 2;
  }
  const std::string out = argv[1];
  FILE* f32 = fopen((out + ".f32").c_str(), "wb");
  FILE* f64 = fopen((out + ".f64").c_str(), "wb");
  FILE* ftz = fopen((out + ".ftz").c_str(), "wb");
  FILE* act = fopen((out + ".act").c_str(), "wb");
  if (!f32 || !f64 || !ftz || !act) return 1;
  // I, H, B, S: H from one unit to past two panels of every build, odd H bidirectional,
  // lengths where B > 2
  const int shapes[][4] = {{3, 5, 1, 1},    {7, 33, 3, 4}, {16, 64, 8, 6},
                           {20, 100, 13, 5}, {64, 128, 1, 3}, {32, 257, 5, 2}};
  int cases = 0;
  for (int cell : {RNN_TANH, RNN_RELU, LSTM, GRU})
    for (const auto& s : shapes)
      for (int nt = 1; nt <= 2; ++nt, cases += 2) {
        const bool bidir = s[1] % 2 == 1, lens = s[2] > 2;
        run<float>(f32, cell, s[0], s[1], bidir, s[3], s[2], nt, lens);
        run<double>(f64, cell, s[0], s[1], bidir, s[3], s[2], nt, lens);
      }
  // Denormals: weights and inputs 1e-20, so each product is 1e-40 and the sums below
  // float32's smallest normal (1.2e-38).
  {
    const int I = 64, H = 16;
    Engine<float> e(RNN_RELU, I, H, 1, false, false);
    for (long i = 0; i < e.num_params(); ++i) e.params()[i] = 1e-20f;
    e.repack();
    std::vector<float> x(I, 1e-20f), y(H), hn(H);
    e.forward(x.data(), 1, 1, nullptr, nullptr, nullptr, nullptr, false, 0.0, 0, 1, y.data(),
              hn.data(), nullptr);
    volatile float unflushed = 0;  // the first unit's sum, in this thread's default mode
    for (int k = 0; k < I; ++k) unflushed = unflushed + x[k] * e.params()[k];
    put(ftz, y);
    put(ftz, std::vector<float>{unflushed});
  }
  // Activations: [-20, 20] and [-80, 80] evenly (exp's range reduction loses most on large
  // |x|) and 1e-10 to 20 geometrically, both signs
  {
    std::vector<float> x;
    for (int i = 0; i <= 100000; ++i) x.push_back(float(-20.0 + 40.0 * i / 100000));
    for (int i = 0; i <= 16000; ++i) x.push_back(float(-80.0 + 160.0 * i / 16000));
    for (int i = 0; i <= 4000; ++i) {
      const float v = float(std::pow(10.0, -10.0 + 11.3 * i / 4000));
      x.push_back(v), x.push_back(-v);
    }
    std::vector<float> y(x), pairs(2 * x.size());
    for (int kind = 0; kind < 3; ++kind) {
      y = x;
      kernels<float>().activation(kind, y.data(), (long)y.size());
      for (size_t i = 0; i < x.size(); ++i) pairs[2 * i] = x[i], pairs[2 * i + 1] = y[i];
      put(act, pairs);
    }
  }
  fclose(f32), fclose(f64), fclose(ftz), fclose(act);
  printf("%d cases\n", cases);
  return 0;
}
