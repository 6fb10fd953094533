// Counter-based standard normals for affvae.transforms.poses.item_normals, the same
// numbers as its torch path (to a few float ulps: log, cos and sin are the C library's
// vector functions here, torch's there).  Row i is a pure function of seeds[i]: hash
// k of item i is SplitMix64 (s_i + k + golden) with s_i = seeds[i] * 0xD1B54A32D192ED03;
// each tile of 512 hashes is read as 1,024 32-bit words (low word first), whose low 23
// bits make floats f in [1, 2); word j < 512 gives u1 = 2 - f, word 512 + j gives
// u2 = f - 1, and pair j of tile t is r cos(2 pi u2) at column 512 t + j and r sin at
// column pairs + 512 t + j, r = sqrt(-2 log u1).  Built with -ffast-math (so that GCC
// calls glibc's vector logf, cosf, sinf), which is why it is a module of its own.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int64_t TILE = 512;

inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

torch::Tensor item_normals(torch::Tensor seeds, int64_t n) {
  TORCH_CHECK(seeds.dim() == 1 && seeds.scalar_type() == at::kLong && seeds.is_contiguous(),
              "item_normals: seeds must be a contiguous int64 vector, got ", seeds.sizes());
  TORCH_CHECK(n >= 0, "item_normals: n must be >= 0, got ", n);
  const int64_t N = seeds.size(0);
  const int64_t pairs = ((n + 1) / 2 + TILE - 1) / TILE * TILE, tiles = pairs / TILE;
  auto out = torch::empty({N, 2 * pairs}, seeds.options().dtype(at::kFloat));
  const int64_t* S = seeds.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, N * tiles, 1, [&](int64_t lo, int64_t hi) {
    alignas(64) uint32_t words[2 * TILE];
    alignas(64) float r[TILE], th[TILE];
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t i = t / tiles, tile = t % tiles;
      const uint64_t base = (uint64_t)S[i] * 0xD1B54A32D192ED03ULL + (uint64_t)(tile * TILE) + 0x9E3779B97F4A7C15ULL;
#pragma omp simd
      for (int64_t k = 0; k < TILE; ++k) {
        const uint64_t z = mix(base + (uint64_t)k);
        words[2 * k] = (uint32_t)z;
        words[2 * k + 1] = (uint32_t)(z >> 32);
      }
#pragma omp simd
      for (int64_t j = 0; j < TILE; ++j) {
        const uint32_t a = (words[j] & 0x007FFFFFu) | 0x3F800000u, b = (words[TILE + j] & 0x007FFFFFu) | 0x3F800000u;
        float fa, fb;
        std::memcpy(&fa, &a, 4);
        std::memcpy(&fb, &b, 4);
        r[j] = std::sqrt(std::log(2.0f - fa) * -2.0f);
        th[j] = (fb - 1.0f) * 6.2831854820251465f;  // 2 pi in float32, as torch multiplies
      }
      float* oc = O + i * 2 * pairs + tile * TILE;
      float* os = oc + pairs;
      // separate loops: GCC vectorises cosf and sinf each, not a sincosf pair
#pragma omp simd
      for (int64_t j = 0; j < TILE; ++j) oc[j] = r[j] * cosf(th[j]);
#pragma omp simd
      for (int64_t j = 0; j < TILE; ++j) os[j] = r[j] * sinf(th[j]);
    }
  });
  return out.narrow(1, 0, n);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("item_normals", &item_normals);
}
