// A k×k stride-k unpadded average pool (U-Net downsampling; lib/engine/wasm_kernels/pool.ts)
// and its gradient, rows of windows split over OpenMP's threads. Forward sums each window in
// float, in window order, then scales by 1/k² (as tfjs's wasm kernel; agreement ~1e-7); the
// gradient spreads each dy value times 1/k² over its window, in double as the JS loop there (the
// same bits).
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

/** y [n, oh, ow, c] ← the mean of each k×k window of x [n, h, w, c]. */
void dp_avg_pool(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                 int64_t ow, int64_t k) {
  const float scale = 1.0f / (float)(k * k);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n * oh; row++) {
    const int64_t b = row / oh, yy = row % oh;
    float* dst = y + row * ow * c;
    for (int64_t x0 = 0; x0 < ow; x0++, dst += c) {
      for (int64_t ch = 0; ch < c; ch++) dst[ch] = 0.0f;
      for (int64_t i = 0; i < k; i++) {
        const float* src = x + ((b * h + yy * k + i) * w + x0 * k) * c;
        for (int64_t j = 0; j < k; j++, src += c) {
          for (int64_t ch = 0; ch < c; ch++) dst[ch] += src[ch];
        }
      }
      for (int64_t ch = 0; ch < c; ch++) dst[ch] *= scale;
    }
  }
}
