// GroupNorm's memory-bound passes (lib/engine/fused/group_norm.ts), compiled on first use by
// lib/engine/native_kernels.ts. x is viewed as `rows` rows of `c` channels (one example).
// target_clones builds an AVX-512, an AVX2 and a plain version and picks one at load time, so
// the cached library is right for whichever x86 CPU runs it. Sums accumulate in float over
// blocks of BLOCK rows, then in double: float speed, close to double's accuracy.
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

enum { BLOCK = 64, CHUNK = 256 };

/** The ABI this file implements; the loader checks it. */
int32_t dp_gn_abi(void) { return 1; }

/** S1[ch] = Σ_rows d, S2[ch] = Σ_rows d·x. */
CLONES void dp_gn_sums(const float* d, const float* x, double* S1, double* S2, int64_t rows,
                       int64_t c) {
  for (int64_t c0 = 0; c0 < c; c0 += CHUNK) {
    const int64_t w = c - c0 < CHUNK ? c - c0 : CHUNK;
    double s1[CHUNK] = {0}, s2[CHUNK] = {0};
    for (int64_t r0 = 0; r0 < rows; r0 += BLOCK) {
      const int64_t r1 = r0 + BLOCK < rows ? r0 + BLOCK : rows;
      float a[CHUNK] = {0}, b[CHUNK] = {0};
      for (int64_t r = r0; r < r1; r++) {
        const float* dr = d + r * c + c0;
        const float* xr = x + r * c + c0;
        for (int64_t j = 0; j < w; j++) {
          a[j] += dr[j];
          b[j] += dr[j] * xr[j];
        }
      }
      for (int64_t j = 0; j < w; j++) {
        s1[j] += a[j];
        s2[j] += b[j];
      }
    }
    for (int64_t j = 0; j < w; j++) {
      S1[c0 + j] = s1[j];
      S2[c0 + j] = s2[j];
    }
  }
}

/** Through SiLU: s holds σ(y1) on entry and ∂L/∂y1 = dy·σ·(1 + y1·(1 − σ)) on exit; then the
 * sums of dp_gn_sums over that and x. */
CLONES void dp_gn_silu_sums(const float* dy, const float* y1, float* s, const float* x,
                            double* S1, double* S2, int64_t rows, int64_t c) {
  const int64_t n = rows * c;
  for (int64_t i = 0; i < n; i++) s[i] = dy[i] * s[i] * (1.0f + y1[i] * (1.0f - s[i]));
  dp_gn_sums(s, x, S1, S2, rows, c);
}

/** y = x·A[ch] + B[ch]. */
CLONES void dp_gn_affine(const float* x, const float* A, const float* B, float* y, int64_t rows,
                         int64_t c) {
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    for (int64_t j = 0; j < c; j++) yr[j] = xr[j] * A[j] + B[j];
  }
}

/** out = P[ch]·d + Q[ch]·x + R[ch]. */
CLONES void dp_gn_affine2(const float* d, const float* P, const float* x, const float* Q,
                          const float* R, float* out, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; r++) {
    const float* dr = d + r * c;
    const float* xr = x + r * c;
    float* o = out + r * c;
    for (int64_t j = 0; j < c; j++) o[j] = P[j] * dr[j] + Q[j] * xr[j] + R[j];
  }
}
