// Every volume of a batch (N, S, S, S) turned by its own cube symmetry: a permutation of
// its axes and a flip of some of them, exact.  out[a0, a1, a2] = in[b0, b1, b2] with
// b[perm[i]] = a[i], or S - 1 - a[i] where flips[i]: the result of torch's
// permute(perm) then flip(flips), in one pass instead of a gather, a copy per
// permutation and flip, and a scatter back (affvae.transforms.augment.random_octahedral).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>

torch::Tensor octahedral(torch::Tensor x, torch::Tensor perms, torch::Tensor flips) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.device().is_cpu() && x.size(1) == x.size(2) &&
              x.size(2) == x.size(3), "octahedral: cubes (N, S, S, S), contiguous on the CPU expected, got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, "octahedral: float32 volumes expected");
  const int64_t N = x.size(0), S = x.size(1);
  TORCH_CHECK(perms.dim() == 2 && perms.size(0) == N && perms.size(1) == 3 && perms.scalar_type() == at::kLong &&
              flips.dim() == 2 && flips.size(0) == N && flips.size(1) == 3 && flips.scalar_type() == at::kBool,
              "octahedral: perms (N, 3) int64 and flips (N, 3) bool expected");
  auto pc = perms.contiguous();
  auto fc = flips.contiguous();
  const int64_t* P = pc.data_ptr<int64_t>();
  const bool* F = fc.data_ptr<bool>();
  const int64_t stride[3] = {S * S, S, 1};
  for (int64_t n = 0; n < N; ++n) {
    bool seen[3] = {false, false, false};
    for (int i = 0; i < 3; ++i) {
      TORCH_CHECK(P[3 * n + i] >= 0 && P[3 * n + i] < 3 && !seen[P[3 * n + i]],
                  "octahedral: perms row ", n, " is not a permutation of (0, 1, 2)");
      seen[P[3 * n + i]] = true;
    }
  }
  auto out = torch::empty_like(x);
  const float* X = x.data_ptr<float>();
  float* Y = out.data_ptr<float>();
  at::parallel_for(0, N * S, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t n = t / S, a0 = t % S;
      int64_t s[3], base = n * S * S * S;
      for (int i = 0; i < 3; ++i) {
        const int64_t st = stride[P[3 * n + i]];
        s[i] = F[3 * n + i] ? -st : st;
        if (F[3 * n + i]) base += st * (S - 1);
      }
      float* y = Y + t * S * S;
      for (int64_t a1 = 0; a1 < S; ++a1) {
        const float* src = X + base + a0 * s[0] + a1 * s[1];
        float* dst = y + a1 * S;
        const int64_t s2 = s[2];
        if (s2 == 1) {
          for (int64_t a2 = 0; a2 < S; ++a2) dst[a2] = src[a2];
        } else if (s2 == -1) {
          for (int64_t a2 = 0; a2 < S; ++a2) dst[a2] = src[-a2];
        } else {
          for (int64_t a2 = 0; a2 < S; ++a2) dst[a2] = src[a2 * s2];
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("octahedral", &octahedral);
}
