// DiT's adaLN, modulate(LayerNorm(x), shift, scale) = x̂·(1 + scale) + shift with x̂ the
// LayerNorm of each token over its d channels (no affine terms), forward and backward in one
// pass each (lib/engine/fused/layer_norm.ts); tf ops take a dozen kernels for it. x is
// [n, t, d], scale and shift [n, d]. Float arithmetic, as PyTorch's LayerNorm does, in vectors:
// the row sums in LANES partial sums added up in double, the per-channel sums of the backward
// (over every token of an example) in double. With the arithmetic in double gcc left the
// backward's main loop scalar: forward and backward ran 1.8× and 2× slower.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

// Row sums in LANES partial sums, combined at the end: a fixed order (deterministic) that the
// compiler can vectorise, where one running sum is a dependency chain it may not reorder.
enum { LANES = 16 };

static inline double lane_total(const float* a) {
  double s = 0;
  for (int k = 0; k < LANES; k++) s += a[k];
  return s;
}

/** Mean and 1/√(variance + eps) of a row, the variance about the mean (two passes). */
static inline void row_stats(const float* x, int64_t d, double eps, float* mean, float* rstd) {
  float s[LANES] = {0}, v[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= d; j += LANES) {
    for (int k = 0; k < LANES; k++) s[k] += x[j + k];
  }
  for (int k = 0; j < d; j++, k++) s[k] += x[j];
  const float m = (float)(lane_total(s) / d);
  for (j = 0; j + LANES <= d; j += LANES) {
    for (int k = 0; k < LANES; k++) v[k] += (x[j + k] - m) * (x[j + k] - m);
  }
  for (int k = 0; j < d; j++, k++) v[k] += (x[j] - m) * (x[j] - m);
  *mean = m;
  *rstd = (float)(1.0 / sqrt(lane_total(v) / d + eps));
}

/** y = x̂·(1 + scale[example]) + shift[example]. Examples split over OpenMP's threads. */
CLONES void dp_ln_mod(const float* x, const float* scale, const float* shift, float* y, int64_t n,
                      int64_t t, int64_t d, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < n; e++) {
    const float* sc = scale + e * d;
    const float* sh = shift + e * d;
    for (int64_t r = e * t; r < (e + 1) * t; r++) {
      const float* restrict xr = x + r * d;
      float* restrict yr = y + r * d;
      float m, rs;
      row_stats(xr, d, eps, &m, &rs);
      for (int64_t j = 0; j < d; j++) yr[j] = (xr[j] - m) * rs * (1.0f + sc[j]) + sh[j];
    }
  }
}

/** dx = r·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·(1 + scale); dscale = Σ_t dy·x̂, dshift =
 * Σ_t dy per example. Examples split over OpenMP's threads, each computed alone (the same bits
 * for any thread count). Returns 0, or 1 when out of memory (nothing written then). */
CLONES int32_t dp_ln_mod_grad(const float* dy, const float* x, const float* scale, float* dx,
                              float* dscale, float* dshift, int64_t n, int64_t t, int64_t d,
                              double eps) {
  double* acc = malloc(sizeof(double) * 2 * d * (size_t)n);
  if (!acc) return 1;
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < n; e++) {
    double* restrict ds = acc + 2 * d * e;
    double* restrict dh = ds + d;
    const float* sc = scale + e * d;
    for (int64_t j = 0; j < d; j++) ds[j] = dh[j] = 0;
    for (int64_t r = e * t; r < (e + 1) * t; r++) {
      const float* restrict xr = x + r * d;
      const float* restrict gr = dy + r * d;
      float m, rs;
      row_stats(xr, d, eps, &m, &rs);
      float a[LANES] = {0}, b[LANES] = {0};
      int64_t j = 0;
      for (; j + LANES <= d; j += LANES) {
        for (int k = 0; k < LANES; k++) {
          const float xh = (xr[j + k] - m) * rs, g = gr[j + k] * (1.0f + sc[j + k]);
          a[k] += g;
          b[k] += g * xh;
        }
      }
      for (int k = 0; j < d; j++, k++) {
        const float xh = (xr[j] - m) * rs, g = gr[j] * (1.0f + sc[j]);
        a[k] += g;
        b[k] += g * xh;
      }
      const float sg = (float)(lane_total(a) / d), sgx = (float)(lane_total(b) / d);
      float* restrict o = dx + r * d;
      for (j = 0; j < d; j++) {
        const float xh = (xr[j] - m) * rs, g = gr[j] * (1.0f + sc[j]);
        o[j] = rs * (g - sg - xh * sgx);
        ds[j] += gr[j] * xh;
        dh[j] += gr[j];
      }
    }
    for (int64_t j = 0; j < d; j++) {
      dscale[e * d + j] = (float)ds[j];
      dshift[e * d + j] = (float)dh[j];
    }
  }
  free(acc);
  return 0;
}
