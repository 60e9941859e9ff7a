// Attention's softmax, forward and backward, one pass over each row (lib/engine/fused/
// softmax.ts): p = softmax(scale·s) along rows of n, and ds = scale·p⊙(dp − Σ_row dp⊙p). tf ops
// take a Multiply, the Softmax and, backward, three Multiply, a Sum and a Sub over the
// [B·H, T, T] scores, the largest activation of a DiT step (a quarter of its time). Rows split
// over OpenMP's threads; sums and maxima in float over LANES fixed partial ones (deterministic,
// and gcc vectorises them); subnormals flushed (exp.h).
#include <stdint.h>

#include "exp.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

enum { LANES = 16 };

/** Largest of x[0..n), in LANES running maxima. */
static inline float row_max(const float* restrict x, int64_t n) {
  float mx[LANES];
  for (int k = 0; k < LANES; k++) mx[k] = x[0];
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES) {
    for (int k = 0; k < LANES; k++) mx[k] = x[j + k] > mx[k] ? x[j + k] : mx[k];
  }
  for (int k = 0; j < n; j++, k++) mx[k] = x[j] > mx[k] ? x[j] : mx[k];
  float m = mx[0];
  for (int k = 1; k < LANES; k++) m = mx[k] > m ? mx[k] : m;
  return m;
}

/** Σ x[0..n), in LANES partial sums. */
static inline float row_sum(const float* restrict x, int64_t n) {
  float acc[LANES] = {0};
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES) {
    for (int k = 0; k < LANES; k++) acc[k] += x[j + k];
  }
  for (int k = 0; j < n; j++, k++) acc[k] += x[j];
  float total = 0;
  for (int k = 0; k < LANES; k++) total += acc[k];
  return total;
}

// Each row in passes over p itself, which stays in L1 (a row is a few hundred floats).
EXP_FMA CLONES static void softmax_rows(const float* restrict s, float* restrict p, int64_t rows,
                                int64_t n, float scale, float lo, float hi) {
  const unsigned csr = ftz_begin();
  for (int64_t r = 0; r < rows; r++) {
    const float* restrict sr = s + r * n;
    float* restrict pr = p + r * n;
    for (int64_t j = 0; j < n; j++) pr[j] = scale * sr[j];
    const float m = row_max(pr, n);
    for (int64_t j = 0; j < n; j++) pr[j] = exp_f(pr[j] - m, lo, hi);
    const float inv = 1.0f / row_sum(pr, n);
    for (int64_t j = 0; j < n; j++) pr[j] *= inv;
  }
  ftz_end(csr);
}

CLONES static void softmax_grad_rows(const float* restrict p, const float* restrict dp,
                                     float* restrict ds, int64_t rows, int64_t n, float scale) {
  const unsigned csr = ftz_begin();
  for (int64_t r = 0; r < rows; r++) {
    const float* restrict pr = p + r * n;
    const float* restrict gr = dp + r * n;
    float* restrict o = ds + r * n;
    for (int64_t j = 0; j < n; j++) o[j] = pr[j] * gr[j];
    const float dot = row_sum(o, n);
    for (int64_t j = 0; j < n; j++) o[j] = scale * pr[j] * (gr[j] - dot);
  }
  ftz_end(csr);
}

// Blocks of rows per thread task: big enough that a thread streams through memory.
enum { BLOCK = 64 };

void dp_softmax(const float* s, float* p, int64_t rows, int64_t n, float scale) {
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r += BLOCK) {
    const int64_t m = rows - r < BLOCK ? rows - r : BLOCK;
    softmax_rows(s + r * n, p + r * n, m, n, scale, lo, hi);
  }
}

void dp_softmax_grad(const float* p, const float* dp, float* ds, int64_t rows, int64_t n,
                     float scale) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r += BLOCK) {
    const int64_t m = rows - r < BLOCK ? rows - r : BLOCK;
    softmax_grad_rows(p + r * n, dp + r * n, ds + r * n, m, n, scale);
  }
}
