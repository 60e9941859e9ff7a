// A k×k stride-k unpadded average pool (U-Net downsampling; lib/engine/wasm_kernels/pool.ts)
// and its gradient, rows of windows split over OpenMP's threads. Forward adds each window (k ≤ 3)
// in float in the tree of tfjs's wasm kernel (XNNPACK's 9-tap average pool: the window column
// by column, padded with zeros to nine taps, summed pairwise), then scales by 1/k²: the same bits
// as the built-in kernel, so results do not move with the route. The gradient spreads each dy
// value times 1/k² over its window, in double as the JS loop there (the same bits).
#include <stdint.h>
#include <string.h>

void dp_avg_pool_grad(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c,
                      int64_t oh, int64_t ow, int64_t k) {
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

/** y [n, oh, ow, c] ← the mean of each k×k window of x [n, h, w, c], k ≤ 3. */
void dp_avg_pool(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                 int64_t ow, int64_t k) {
  const float scale = 1.0f / (float)(k * k);
  const int64_t taps = k * k;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n * oh; row++) {
    const int64_t b = row / oh, yy = row % oh;
    float* dst = y + row * ow * c;
    for (int64_t x0 = 0; x0 < ow; x0++, dst += c) {
      const float* tap[9] = {0}; // the window column by column, as XNNPACK's indirection
      for (int64_t j = 0, t = 0; j < k; j++) {
        for (int64_t i = 0; i < k; i++, t++) tap[t] = x + ((b * h + yy * k + i) * w + x0 * k + j) * c;
      }
      for (int64_t ch = 0; ch < c; ch++) {
        float v[9];
        for (int64_t t = 0; t < 9; t++) v[t] = t < taps ? tap[t][ch] : 0.0f;
        const float s01 = v[0] + v[1], s23 = v[2] + v[3], s45 = v[4] + v[5], s67 = v[6] + v[7];
        dst[ch] = ((s23 + s45) + ((s01 + v[8]) + s67)) * scale;
      }
    }
  }
}
