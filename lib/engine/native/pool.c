// A k×k stride-k unpadded average pool (U-Net downsampling; lib/engine/wasm_kernels/pool.ts)
// and its gradient, rows of windows split over OpenMP's threads. Forward adds each window (k ≤ 3)
// in float in the tree of tfjs's wasm kernel (XNNPACK's 9-tap average pool: the window column
// by column, padded with zeros to nine taps, summed pairwise), then scales by 1/k²: the same bits
// as the built-in kernel, so results do not move with the route. The gradient spreads each dy
// value times 1/k² over its window, in double as the JS loop there (the same bits). Both are
// built per ISA (target clones): for plain x86-64 the gradient's double products ran 1.3× slower.
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

CLONES void dp_avg_pool_grad(const float* dy, float* dx, int64_t n, int64_t h, int64_t w,
                             int64_t c, int64_t oh, int64_t ow, int64_t k) {
  const double scale = 1.0 / (double)(k * k);
  memset(dx, 0, sizeof(float) * (size_t)(n * h * w * c)); // rows and columns past k·OH, k·OW
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n * oh; row++) {
    const int64_t b = row / oh, y = row % oh;
    const float* src = dy + row * ow * c;
    for (int64_t i = 0; i < k; i++) {
      float* dst = dx + ((b * h + y * k + i) * w) * c;
      for (int64_t x = 0; x < ow; x++) {
        const float* s = src + x * c;
        for (int64_t j = 0; j < k; j++, dst += c) {
          for (int64_t ch = 0; ch < c; ch++) dst[ch] = (float)((double)s[ch] * scale);
        }
      }
    }
  }
}

enum { ZERO_RUN = 256 };
static const float ZEROS[ZERO_RUN]; // the taps past k² read zeros, as XNNPACK's do

/** y [n, oh, ow, c] ← the mean of each k×k window of x [n, h, w, c], k ≤ 3. */
CLONES void dp_avg_pool(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c,
                        int64_t oh, int64_t ow, int64_t k) {
  const float scale = 1.0f / (float)(k * k);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n * oh; row++) {
    const int64_t b = row / oh, yy = row % oh;
    for (int64_t x0 = 0; x0 < ow; x0++) {
      float* dst = y + (row * ow + x0) * c;
      const float* t[9]; // the window column by column, as XNNPACK's indirection
      for (int64_t j = 0, i = 0, q = 0; q < 9; q++) {
        t[q] = j < k ? x + ((b * h + yy * k + i) * w + x0 * k + j) * c : 0;
        if (++i == k) i = 0, j++;
      }
      for (int64_t c0 = 0; c0 < c; c0 += ZERO_RUN) {
        const int64_t wd = c - c0 < ZERO_RUN ? c - c0 : ZERO_RUN;
        const float* u[9];
        for (int q = 0; q < 9; q++) u[q] = t[q] ? t[q] + c0 : ZEROS;
        for (int64_t ch = 0; ch < wd; ch++) {
          const float s01 = u[0][ch] + u[1][ch], s23 = u[2][ch] + u[3][ch];
          const float s45 = u[4][ch] + u[5][ch], s67 = u[6][ch] + u[7][ch];
          dst[c0 + ch] = ((s23 + s45) + ((s01 + u[8][ch]) + s67)) * scale;
        }
      }
    }
  }
}
