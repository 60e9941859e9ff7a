// The optimiser's elementwise passes (lib/engine/fused/optim.ts): Adam's moments and update, and
// the EMA blend of weights, computed in double in the JS loops' order (the same bits), elements
// split over OpenMP's threads for large parameters; and the sum of squares of a gradient (the
// global norm), in double over fixed chunks added in order (the same bits for any thread count).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum { MIN_THREADED = 1 << 14 };

/** m' = β1·m + (1 − β1)·g, v' = β2·v + (1 − β2)·g², u = −step·m'/(√v' + ε̂) − decay·p. */
void dp_adam(const float* g, const float* m, const float* v, const float* p, float* m_out,
             float* v_out, float* u, int64_t n, double beta1, double beta2, double eps_hat,
             double step, double decay) {
  const double c1 = 1 - beta1, c2 = 1 - beta2;
#pragma omp parallel for schedule(static) if (n > MIN_THREADED)
  for (int64_t i = 0; i < n; i++) {
    const double gi = g[i];
    const double mi = m[i] * beta1 + gi * c1;
    const double vi = v[i] * beta2 + gi * gi * c2;
    m_out[i] = (float)mi;
    v_out[i] = (float)vi;
    u[i] = (float)(-step * (mi / (sqrt(vi) + eps_hat)));
    if (decay != 0 && p) u[i] = (float)(u[i] - p[i] * decay);
  }
}

/** out = rate·e + (1 − rate)·p. */
void dp_ema(const float* e, const float* p, float* out, int64_t n, double rate) {
  const double c = 1 - rate;
#pragma omp parallel for schedule(static) if (n > MIN_THREADED)
  for (int64_t i = 0; i < n; i++) out[i] = (float)(e[i] * rate + p[i] * c);
}

enum { SQ_CHUNK = 1 << 14, SQ_LANES = 8 };

/** Σ x[i]² of one chunk, in SQ_LANES running sums (so it vectorises) added in lane order. */
static double squares(const float* x, int64_t n) {
  double lane[SQ_LANES] = {0};
  int64_t i = 0;
  for (; i + SQ_LANES <= n; i += SQ_LANES) {
    for (int j = 0; j < SQ_LANES; j++) lane[j] += (double)x[i + j] * x[i + j];
  }
  for (; i < n; i++) lane[0] += (double)x[i] * x[i];
  double s = 0;
  for (int j = 0; j < SQ_LANES; j++) s += lane[j];
  return s;
}

/** Σ x[i]² in double; NaN when out of memory. */
double dp_sum_squares(const float* x, int64_t n) {
  const int64_t chunks = (n + SQ_CHUNK - 1) / SQ_CHUNK;
  if (chunks <= 1) return squares(x, n);
  double* part = malloc((size_t)chunks * sizeof(double));
  if (!part) return NAN;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; k++) {
    const int64_t lo = k * SQ_CHUNK;
    part[k] = squares(x + lo, n - lo < SQ_CHUNK ? n - lo : SQ_CHUNK);
  }
  double s = 0;
  for (int64_t k = 0; k < chunks; k++) s += part[k];
  free(part);
  return s;
}
