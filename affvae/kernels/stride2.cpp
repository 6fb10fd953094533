// Direct CPU kernels for a 3D stride-2 layer between a "small" box (B, Cs, n, n, n) and
// a "big" one (B, Cb, 2n, 2n, 2n), with a (Cs, Cb, 4, 4, 4) weight and n % 16 == 0.
// Along every axis big index o and small index i meet through tap k = o + 1 - 2 i
// (kernel 4, stride 2, padding 1).  `up` is the transposed convolution small -> big;
// `down` its adjoint, the strided convolution big -> small (a kernel-3 convolution is
// the kernel-4 one with tap 3 zero), and, in the same pass over `big`, the weight
// gradient of either.  Vectors are the compiler's portable vector types, 16 floats
// wide; float32 only.  Used from affvae/deconv.py, which keeps a pure-torch path that
// computes the same numbers.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <vector>
#include <algorithm>

#if defined(__clang__) || !defined(__GNUC__)
#error "these kernels use GCC's vector extensions (__builtin_shuffle); the caller falls back to torch"
#endif

namespace {

constexpr int V = 16;
typedef float vf __attribute__((vector_size(V * sizeof(float))));
typedef int vi __attribute__((vector_size(V * sizeof(int))));

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float s) { return vf{} + s; }

const vi LO = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
const vi HI = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
const vi EVEN = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
const vi ODD = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};

// the (at most two) small indices i and taps k that reach big index o along one axis
inline int taps_of(int64_t o, int64_t n, int64_t* idx, int* tap) {
  const int64_t m = o >> 1;
  int c = 0;
  if ((o & 1) == 0) {
    if (m >= 1) { idx[c] = m - 1; tap[c++] = 3; }
    idx[c] = m; tap[c++] = 1;
  } else {
    idx[c] = m; tap[c++] = 2;
    if (m + 1 < n) { idx[c] = m + 1; tap[c++] = 0; }
  }
  return c;
}

void check(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 5 && t.is_contiguous() && t.scalar_type() == at::kFloat && t.device().is_cpu(),
              what, ": a contiguous float32 CPU tensor of 5 dimensions expected");
}

void check1(const torch::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n && t.is_contiguous() && t.scalar_type() == at::kFloat,
              what, ": a float32 vector of ", n, " expected, got ", t.sizes());
}

}  // namespace

// The stride-2 transposed convolution (kernel 4, padding 1):
// big[b, cb] = sum_cs small[b, cs] (*) w[cs, cb] + bias[cb]
torch::Tensor up(torch::Tensor small, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  check(small, "up: input"); check(w, "up: weight");
  if (bias.has_value()) check1(*bias, w.size(1), "up: bias");
  const int64_t B = small.size(0), Cs = small.size(1), n = small.size(2), Cb = w.size(1), N = 2 * n;
  TORCH_CHECK(n % V == 0 && small.size(3) == n && small.size(4) == n,
              "up: input sides must be equal and a multiple of 16, got ", small.sizes());
  TORCH_CHECK(w.size(0) == Cs && w.size(2) == 4 && w.size(3) == 4 && w.size(4) == 4,
              "up: weight (", Cs, ", Cout, 4, 4, 4) expected, got ", w.sizes());
  // rows padded by one zero at each end, so that every tap reads inside its row
  auto xp = torch::constant_pad_nd(small, {1, 1});
  auto big = torch::empty({B, Cb, N, N, N}, small.options());
  const float* X = xp.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const float* bb = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = big.data_ptr<float>();
  const int64_t row = n + 2;
  at::parallel_for(0, B * Cb * N, 1, [&](int64_t lo, int64_t hi) {
    std::vector<const float*> src(Cs * 4);
    std::vector<float> wt(Cs * 4 * 4);
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t oz = t % N, cb = (t / N) % Cb, b = t / (N * Cb);
      int64_t zi[2], yi[2]; int zk[2], yk[2];
      const int zc = taps_of(oz, n, zi, zk);
      for (int64_t oy = 0; oy < N; ++oy) {
        const int yc = taps_of(oy, n, yi, yk);
        int rows = 0;
        for (int64_t cs = 0; cs < Cs; ++cs)
          for (int a = 0; a < zc; ++a)
            for (int c = 0; c < yc; ++c, ++rows) {
              src[rows] = X + (((b * Cs + cs) * n + zi[a]) * n + yi[c]) * row;
              std::memcpy(&wt[rows * 4], W + (((cs * Cb + cb) * 4 + zk[a]) * 4 + yk[c]) * 4, 4 * sizeof(float));
            }
        float* dst = Y + (((b * Cb + cb) * N + oz) * N + oy) * N;
        const float b0 = bb ? bb[cb] : 0.f;
        for (int64_t m0 = 0; m0 < n; m0 += V) {
          vf e = splat(b0), o = splat(b0);
          for (int r = 0; r < rows; ++r) {
            const float* p = src[r] + m0;  // p[m + 1] is small index m
            const float* k = &wt[r * 4];
            const vf v0 = load(p), v1 = load(p + 1), v2 = load(p + 2);
            e += v1 * k[1] + v0 * k[3];
            o += v1 * k[2] + v2 * k[0];
          }
          store(dst + 2 * m0, __builtin_shuffle(e, o, LO));
          store(dst + 2 * m0 + V, __builtin_shuffle(e, o, HI));
        }
      }
    }
  });
  return big;
}

// The adjoint pair of `up`, in one pass over `big`:
//   small[b, cs] = sum_cb big[b, cb] (*) w[cs, cb] sampled at stride 2, + bias[cs]   (need_down)
//   gw[cs, cb, k] = sum_{b, i} corr[b, cs, i] big[b, cb, 2 i - 1 + k]                (corr given)
// `small` is the strided convolution's output and the transposed convolution's input
// gradient; `gw` either layer's weight gradient.
std::vector<torch::Tensor> down(torch::Tensor big, torch::Tensor w, c10::optional<torch::Tensor> bias,
                                bool need_down, c10::optional<torch::Tensor> corr) {
  check(big, "down: input"); check(w, "down: weight");
  if (bias.has_value()) check1(*bias, w.size(0), "down: bias");
  const int64_t B = big.size(0), Cb = big.size(1), N = big.size(2), n = N / 2, Cs = w.size(0);
  TORCH_CHECK(N % (2 * V) == 0 && big.size(3) == N && big.size(4) == N,
              "down: input sides must be equal and a multiple of 32, got ", big.sizes());
  TORCH_CHECK(w.size(1) == Cb && w.size(2) == 4 && w.size(3) == 4 && w.size(4) == 4,
              "down: weight (Cout, ", Cb, ", 4, 4, 4) expected, got ", w.sizes());
  const float* Xc = nullptr;
  if (corr.has_value()) {
    check(*corr, "down: corr");
    TORCH_CHECK(corr->size(0) == B && corr->size(1) == Cs && corr->size(2) == n && corr->size(3) == n
                && corr->size(4) == n, "down: corr (", B, ", ", Cs, ", ", n, ", ", n, ", ", n,
                ") expected, got ", corr->sizes());
    Xc = corr->data_ptr<float>();
  }
  const float* G = big.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  const float* bb = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  torch::Tensor small;
  float* S = nullptr;
  if (need_down) { small = torch::empty({B, Cs, n, n, n}, big.options()); S = small.data_ptr<float>(); }
  const int64_t tasks = B * n, K = Cs * Cb * 64;
  const int T = (int)std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  std::vector<double> part(Xc ? (size_t)T * K : 0, 0.0);
  at::parallel_for(0, T, 1, [&](int64_t tlo, int64_t thi) {
    std::vector<float> padded(N + 2 * V, 0.f);  // big row at offset V: index -1 and N read zeros
    std::vector<vf> acc(Cs * (n / V));
    std::vector<vf> wacc(Xc ? K : 0);
    for (int64_t th = tlo; th < thi; ++th) {
      double* P = Xc ? part.data() + (size_t)th * K : nullptr;
      for (int64_t t = tasks * th / T; t < tasks * (th + 1) / T; ++t) {
        const int64_t iz = t % n, b = t / n;
        std::fill(wacc.begin(), wacc.end(), vf{});
        for (int64_t iy = 0; iy < n; ++iy) {
          if (S) for (int64_t cs = 0; cs < Cs; ++cs)
            for (int64_t j = 0; j < n / V; ++j) acc[cs * (n / V) + j] = splat(bb ? bb[cs] : 0.f);
          for (int64_t cb = 0; cb < Cb; ++cb)
            for (int kz = 0; kz < 4; ++kz) {
              const int64_t gz = 2 * iz - 1 + kz;
              if (gz < 0 || gz >= N) continue;
              for (int ky = 0; ky < 4; ++ky) {
                const int64_t gy = 2 * iy - 1 + ky;
                if (gy < 0 || gy >= N) continue;
                std::memcpy(padded.data() + V, G + (((b * Cb + cb) * N + gz) * N + gy) * N, N * sizeof(float));
                for (int64_t j = 0; j < n / V; ++j) {
                  const float* p = padded.data() + V + 2 * j * V;
                  // taps 0..3 of small index m read big indices 2m-1, 2m, 2m+1, 2m+2
                  const vf a = load(p - 1), c = load(p - 1 + V), d = load(p + 1), f = load(p + 1 + V);
                  const vf t0 = __builtin_shuffle(a, c, EVEN), t1 = __builtin_shuffle(a, c, ODD);
                  const vf t2 = __builtin_shuffle(d, f, EVEN), t3 = __builtin_shuffle(d, f, ODD);
                  for (int64_t cs = 0; cs < Cs; ++cs) {
                    const float* k = W + (((cs * Cb + cb) * 4 + kz) * 4 + ky) * 4;
                    if (S) acc[cs * (n / V) + j] += t0 * k[0] + t1 * k[1] + t2 * k[2] + t3 * k[3];
                    if (Xc) {
                      const vf s = load(Xc + (((b * Cs + cs) * n + iz) * n + iy) * n + j * V);
                      vf* q = &wacc[(((cs * Cb + cb) * 4 + kz) * 4 + ky) * 4];
                      q[0] += s * t0; q[1] += s * t1; q[2] += s * t2; q[3] += s * t3;
                    }
                  }
                }
              }
            }
          if (S) for (int64_t cs = 0; cs < Cs; ++cs)
            for (int64_t j = 0; j < n / V; ++j)
              store(S + (((b * Cs + cs) * n + iz) * n + iy) * n + j * V, acc[cs * (n / V) + j]);
        }
        if (P) for (int64_t q = 0; q < K; ++q) {
          double s = 0.0;
          for (int l = 0; l < V; ++l) s += wacc[q][l];
          P[q] += s;
        }
      }
    }
  });
  torch::Tensor gw;
  if (Xc) {
    gw = torch::zeros({Cs, Cb, 4, 4, 4}, big.options().dtype(at::kDouble));
    double* g = gw.data_ptr<double>();
    for (int th = 0; th < T; ++th)
      for (int64_t q = 0; q < K; ++q) g[q] += part[(size_t)th * K + q];
    gw = gw.to(at::kFloat);
  }
  return {small, gw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("up", &up);
  m.def("down", &down);
}
