// GroupNorm's memory-bound passes (lib/engine/fused/group_norm.ts), compiled on first use by
// lib/engine/native_kernels.ts. x is viewed as `rows` rows of `c` channels (one example).
// target_clones builds an AVX-512, an AVX2 and a plain version and picks one at load time, so
// the cached library is right for whichever x86 CPU runs it. The plain passes compute every
// value in double in the JS loops' order (per channel, rows in sequence; no FMA contraction:
// compile with -ffp-contract=off), so results are bit-for-bit those of the JS kernels, only
// vectorised across channels. The two SiLU passes (affine + SiLU, SiLU's backward + sums) have
// no JS twin to match: they compute in float with exp.h's exp and flush subnormals, and agree
// with the JS route (wasm / oneDNN SiLU) to about 1e-6. Each entry takes a batch of `n`
// examples (x as [n, rows, c], per-example coefficients and sums as [n, c]) and splits the
// examples over OpenMP's threads (the count oneDNN set, when built with -fopenmp): each example
// is computed alone, so any thread count gives the same bits.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "exp.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

enum { CHUNK = 512 };

/** The ABI of the whole library (every C file of lib/engine/native); the loader checks it. */
int32_t dp_gn_abi(void) { return 22; }

// The clamp bounds of exp_f (./exp.h), read at run time.
float dp_exp_bounds[2] = {-87.0f, 88.0f};

/** S1[ch] = Σ_rows d, S2[ch] = Σ_rows d·x. */
CLONES static void sums1(const float* d, const float* x, double* S1, double* S2, int64_t rows,
                       int64_t c) {
  for (int64_t c0 = 0; c0 < c; c0 += CHUNK) {
    const int64_t w = c - c0 < CHUNK ? c - c0 : CHUNK;
    double a[CHUNK] = {0}, b[CHUNK] = {0};
    for (int64_t r = 0; r < rows; r++) {
      const float* dr = d + r * c + c0;
      const float* xr = x + r * c + c0;
      for (int64_t j = 0; j < w; j++) {
        const double dv = dr[j];
        a[j] += dv;
        b[j] += dv * (double)xr[j];
      }
    }
    for (int64_t j = 0; j < w; j++) {
      S1[c0 + j] = a[j];
      S2[c0 + j] = b[j];
    }
  }
}

/** y = x·A[ch] + B[ch]. */
CLONES static void affine1(const float* x, const float* A, const float* B, float* y, int64_t rows,
                         int64_t c) {
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    for (int64_t j = 0; j < c; j++) yr[j] = (float)((double)xr[j] * A[j] + B[j]);
  }
}

/** y = silu(y1) with y1 = x·A[ch] + B[ch], in float. */
EXP_FMA CLONES static void affine_silu1(const float* x, const float* A, const float* B, float* y,
                              int64_t rows, int64_t c, float lo, float hi) {
  const unsigned csr = ftz_begin(); // not bit-matched to the JS route: subnormals flushed
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    for (int64_t j = 0; j < c; j++) {
      const float v = xr[j] * A[j] + B[j];
      yr[j] = v * sigmoid_f(v, lo, hi);
    }
  }
  ftz_end(csr);
}

/** The SiLU backward and GroupNorm's gradient sums: with y1 = x·A + B recomputed and
 * s = σ(y1), dd = dy·s·(1 + y1·(1 − s)) = ∂L/∂y1, in float (double conversions made this pass
 * compute-bound: 2 ns per element instead of 0.6), then S1 = Σ_rows dd and S2 = Σ_rows dd·x
 * summed in double. In blocks of ROWS rows, dd first and then the sums over the block still in
 * cache: the two loops vectorise at their own widths (one loop mixing float and double ran
 * 10–25 % slower), and the sums keep their row order. */
enum { ROWS = 16 };
EXP_FMA CLONES static void silu_grad_sums1(const float* restrict dy, const float* restrict x,
                                   const float* A, const float* B, float* restrict dd,
                                   double* S1, double* S2, int64_t rows, int64_t c, float lo,
                                   float hi) {
  const unsigned csr = ftz_begin(); // not bit-matched to the JS route: subnormals flushed
  for (int64_t c0 = 0; c0 < c; c0 += CHUNK) {
    const int64_t w = c - c0 < CHUNK ? c - c0 : CHUNK;
    double a[CHUNK] = {0}, b[CHUNK] = {0};
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
      const int64_t r1 = rows - r0 < ROWS ? rows : r0 + ROWS;
      for (int64_t r = r0; r < r1; r++) {
        const int64_t o = r * c + c0;
        for (int64_t j = 0; j < w; j++) {
          const float v = x[o + j] * A[c0 + j] + B[c0 + j];
          const float sv = sigmoid_f(v, lo, hi);
          dd[o + j] = dy[o + j] * sv * (1.0f + v * (1.0f - sv));
        }
      }
      for (int64_t r = r0; r < r1; r++) {
        const int64_t o = r * c + c0;
        for (int64_t j = 0; j < w; j++) {
          a[j] += dd[o + j];
          b[j] += (double)dd[o + j] * x[o + j];
        }
      }
    }
    for (int64_t j = 0; j < w; j++) {
      S1[c0 + j] = a[j];
      S2[c0 + j] = b[j];
    }
  }
  ftz_end(csr);
}

/** out = P[ch]·d + Q[ch]·x + R[ch]. */
CLONES static void affine2_1(const float* d, const float* P, const float* x, const float* Q,
                          const float* R, float* out, int64_t rows, int64_t c) {
  for (int64_t r = 0; r < rows; r++) {
    const float* dr = d + r * c;
    const float* xr = x + r * c;
    float* o = out + r * c;
    for (int64_t j = 0; j < c; j++) {
      o[j] = (float)((double)P[j] * dr[j] + (double)Q[j] * xr[j] + R[j]);
    }
  }
}

// The per-(example, group) bookkeeping between the passes, over [n, c] sums: in the JS loops'
// order in double (the same bits as lib/engine/fused/group_norm.ts), where V8 took 30–150 µs
// a call (13 ms of a U-Net train step). Groups of c/g channels; count = rows·c/g values each.

/** One example's mean, rstd [g] from its channel sums Σx, Σx² [c]. */
static void stats1(const double* sums, const double* sqs, double* mean, double* rstd, int64_t c,
                   int64_t g, double count, double eps) {
  const int64_t cpg = c / g;
  for (int64_t gi = 0; gi < g; gi++) {
    double a = 0, b = 0;
    for (int64_t ch = gi * cpg, end = ch + cpg; ch < end; ch++) {
      a += sums[ch];
      b += sqs[ch];
    }
    const double m = a / count, var = b / count - m * m;
    mean[gi] = m;
    rstd[gi] = 1 / sqrt((var < 0 ? 0 : var) + eps); // Math.max(0, var): NaN stays NaN
  }
}

/** mean, rstd [n, g] from the channel sums Σx, Σx² [n, c]. */
void dp_gn_stats(const double* sums, const double* sqs, double* mean, double* rstd, int64_t n,
                 int64_t c, int64_t g, double count, double eps) {
  for (int64_t i = 0; i < n; i++) {
    stats1(sums + i * c, sqs + i * c, mean + i * g, rstd + i * g, c, g, count, eps);
  }
}

/** One example's A, B [c] from its mean, rstd [g]; scale, shift its [c] (or NULL). */
static void coefficients1(const double* mean, const double* rstd, const float* gamma,
                          const float* beta, const float* scale, const float* shift, float* A,
                          float* B, int64_t c, int64_t g) {
  const int64_t cpg = c / g;
  for (int64_t ch = 0; ch < c; ch++) {
    const int64_t k = ch / cpg;
    const double mod = scale ? 1 + (double)scale[ch] : 1;
    const double a = rstd[k] * gamma[ch];
    A[ch] = (float)(a * mod);
    B[ch] = (float)((beta[ch] - mean[k] * a) * mod + (shift ? (double)shift[ch] : 0));
  }
}

/** A, B [n, c] with y1 = x·A + B: A = rstd·γ·mod, B = (β − mean·rstd·γ)·mod + shift, mod =
 * 1 + scale (scale and shift [n, c], or NULL). */
void dp_gn_coefficients(const double* mean, const double* rstd, const float* gamma,
                        const float* beta, const float* scale, const float* shift, float* A,
                        float* B, int64_t n, int64_t c, int64_t g) {
  for (int64_t i = 0; i < n; i++) {
    coefficients1(mean + i * g, rstd + i * g, gamma, beta, scale ? scale + i * c : NULL,
                  shift ? shift + i * c : NULL, A + i * c, B + i * c, c, g);
  }
}

/** One example's share of the gradients from its sums S1 = Σ dd, S2 = Σ dd·x [c] (dd = ∂L/∂y1),
 * with its mean, rstd [g] and scale [c] (or NULL): T = rstd·(S2 − mean·S1) [c] (kept for
 * `accumulate1`), dscale, dshift [c] (or NULL), and the coefficients of dx = P·dd + Q·x + R [c].
 * K [c] is scratch (mod·γ). */
static void finish1(const double* S1, const double* S2, const double* mean, const double* rstd,
                    const float* gamma, const float* beta, const float* scale, float* dscale,
                    float* dshift, float* P, float* Q, float* R, double* T, double* K, int64_t c,
                    int64_t g, double count) {
  const int64_t cpg = c / g;
  for (int64_t ch = 0; ch < c; ch++) {
    const int64_t k = ch / cpg;
    const double mod = scale ? 1 + (double)scale[ch] : 1;
    const double s1 = S1[ch];
    T[ch] = rstd[k] * (S2[ch] - mean[k] * s1);
    K[ch] = mod * gamma[ch];
    if (dshift) dshift[ch] = (float)s1;
    if (dscale) dscale[ch] = (float)(gamma[ch] * T[ch] + beta[ch] * s1);
  }
  for (int64_t gi = 0; gi < g; gi++) {
    const int64_t c0 = gi * cpg, c1 = c0 + cpg;
    double ag = 0, bg = 0;
    for (int64_t ch = c0; ch < c1; ch++) {
      ag += K[ch] * S1[ch];
      bg += K[ch] * T[ch];
    }
    ag /= count;
    bg /= count;
    const double r = rstd[gi], m = mean[gi];
    for (int64_t ch = c0; ch < c1; ch++) {
      P[ch] = (float)(r * K[ch]);
      Q[ch] = (float)(-r * r * bg);
      R[ch] = (float)(r * r * bg * m - r * ag);
    }
  }
}

/** dβ += mod·S1, dγ += mod·T for one example (the caller goes through examples in order). */
static void accumulate1(const double* S1, const double* T, const float* scale, double* dgamma,
                        double* dbeta, int64_t c) {
  for (int64_t ch = 0; ch < c; ch++) {
    const double mod = scale ? 1 + (double)scale[ch] : 1;
    dbeta[ch] += mod * S1[ch];
    dgamma[ch] += mod * T[ch];
  }
}

/** GroupNorm's gradients from the sums S1 = Σ dd, S2 = Σ dd·x [n, c] (dd = ∂L/∂y1): dγ, dβ [c]
 * (double, accumulated over examples in order), dscale, dshift [n, c] (or NULL), and the
 * coefficients of dx = P·dd + Q·x + R [n, c]. T and K are scratch of c doubles. */
void dp_gn_finish(const double* S1, const double* S2, const double* mean, const double* rstd,
                  const float* gamma, const float* beta, const float* scale, double* dgamma,
                  double* dbeta, float* dscale, float* dshift, float* P, float* Q, float* R,
                  double* T, double* K, int64_t n, int64_t c, int64_t g, double count) {
  for (int64_t i = 0; i < n; i++) {
    const int64_t o = i * c;
    const float* sc = scale ? scale + o : NULL;
    finish1(S1 + o, S2 + o, mean + i * g, rstd + i * g, gamma, beta, sc,
            dscale ? dscale + o : NULL, dshift ? dshift + o : NULL, P + o, Q + o, R + o, T, K, c,
            g, count);
    accumulate1(S1 + o, T, sc, dgamma, dbeta, c);
  }
}

// Batched entries: example i reads and writes rows·c floats at i·rows·c and c coefficients or
// sums at i·c.

void dp_gn_sums(const float* d, const float* x, double* S1, double* S2, int64_t n, int64_t rows,
                int64_t c) {
  const int64_t e = rows * c;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) sums1(d + i * e, x + i * e, S1 + i * c, S2 + i * c, rows, c);
}

void dp_gn_affine(const float* x, const float* A, const float* B, float* y, int64_t n,
                  int64_t rows, int64_t c) {
  const int64_t e = rows * c;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) affine1(x + i * e, A + i * c, B + i * c, y + i * e, rows, c);
}

void dp_gn_silu_grad_sums(const float* dy, const float* x, const float* A, const float* B,
                          float* dd, double* S1, double* S2, int64_t n, int64_t rows, int64_t c) {
  const int64_t e = rows * c;
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    silu_grad_sums1(dy + i * e, x + i * e, A + i * c, B + i * c, dd + i * e, S1 + i * c,
                    S2 + i * c, rows, c, lo, hi);
  }
}

void dp_gn_affine2(const float* d, const float* P, const float* x, const float* Q, const float* R,
                   float* out, int64_t n, int64_t rows, int64_t c) {
  const int64_t e = rows * c;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    affine2_1(d + i * e, P + i * c, x + i * e, Q + i * c, R + i * c, out + i * e, rows, c);
  }
}

/** The whole forward pass, an example at a time: sums, statistics, coefficients (the bits of
 * dp_gn_sums, dp_gn_stats and dp_gn_coefficients) and y = x·A + B, or silu of it, while the
 * example's rows are still in cache (the separate passes read x twice from memory). S1, S2
 * [n, c], mean, rstd [n, g] and A, B [n, c] are scratch the caller may read after. */
void dp_gn_forward(const float* x, const float* gamma, const float* beta, const float* scale,
                   const float* shift, float* y, double* S1, double* S2, double* mean,
                   double* rstd, float* A, float* B, int64_t n, int64_t rows, int64_t c,
                   int64_t g, double eps, int32_t silu) {
  const int64_t e = rows * c;
  const double count = (double)rows * (double)(c / g);
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const int64_t o = i * c;
    sums1(x + i * e, x + i * e, S1 + o, S2 + o, rows, c);
    stats1(S1 + o, S2 + o, mean + i * g, rstd + i * g, c, g, count, eps);
    coefficients1(mean + i * g, rstd + i * g, gamma, beta, scale ? scale + o : NULL,
                  shift ? shift + o : NULL, A + o, B + o, c, g);
    if (silu) affine_silu1(x + i * e, A + o, B + o, y + i * e, rows, c, lo, hi);
    else affine1(x + i * e, A + o, B + o, y + i * e, rows, c);
  }
}

/** The whole backward pass an example at a time, the bits of the separate passes (statistics
 * of x, SiLU's backward with the sums or the plain sums, dp_gn_finish, dp_gn_affine2): each
 * example's x and ∂L/∂y1 are read from memory once and then from cache, where the separate
 * passes read x three times and ∂L/∂y1 twice from memory. dy is ∂L/∂y (after the SiLU when
 * `silu`, which then holds ∂L/∂y1 in dx before the last step overwrites it in place); dγ, dβ
 * [c] accumulate in double over examples in order, from the caller's zeros. Returns 0 when
 * its scratch cannot be allocated (nothing written). */
int32_t dp_gn_backward(const float* dy, const float* x, const float* gamma, const float* beta,
                       const float* scale, const float* shift, float* dx, double* dgamma,
                       double* dbeta, float* dscale, float* dshift, int64_t n, int64_t rows,
                       int64_t c, int64_t g, double eps, int32_t silu) {
  const int64_t e = rows * c, nc = n * c, ng = n * g;
  const double count = (double)rows * (double)(c / g);
  // S1, S2, T, K [n, c] and mean, rstd [n, g] in double; A, B, P, Q, R [n, c] in float.
  double* dbl = malloc((size_t)(4 * nc + 2 * ng) * sizeof(double));
  float* flt = malloc((size_t)(5 * nc) * sizeof(float));
  if (!dbl || !flt) {
    free(dbl);
    free(flt);
    return 0;
  }
  double *S1 = dbl, *S2 = S1 + nc, *T = S2 + nc, *K = T + nc, *mean = K + nc, *rstd = mean + ng;
  float *A = flt, *B = A + nc, *P = B + nc, *Q = P + nc, *R = Q + nc;
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const int64_t o = i * c;
    const float* xi = x + i * e;
    const float* sc = scale ? scale + o : NULL;
    sums1(xi, xi, S1 + o, S2 + o, rows, c);  // Σx, Σx², then the gradient's sums in their place
    stats1(S1 + o, S2 + o, mean + i * g, rstd + i * g, c, g, count, eps);
    if (silu) {
      coefficients1(mean + i * g, rstd + i * g, gamma, beta, sc, shift ? shift + o : NULL, A + o,
                    B + o, c, g);
      silu_grad_sums1(dy + i * e, xi, A + o, B + o, dx + i * e, S1 + o, S2 + o, rows, c, lo, hi);
    } else {
      sums1(dy + i * e, xi, S1 + o, S2 + o, rows, c);
    }
    finish1(S1 + o, S2 + o, mean + i * g, rstd + i * g, gamma, beta, sc,
            dscale ? dscale + o : NULL, dshift ? dshift + o : NULL, P + o, Q + o, R + o, T + o,
            K + o, c, g, count);
    affine2_1(silu ? dx + i * e : dy + i * e, P + o, xi, Q + o, R + o, dx + i * e, rows, c);
  }
  for (int64_t i = 0; i < n; i++) {
    accumulate1(S1 + i * c, T + i * c, scale ? scale + i * c : NULL, dgamma, dbeta, c);
  }
  free(dbl);
  free(flt);
  return 1;
}
