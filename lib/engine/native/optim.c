// The optimiser's elementwise passes (lib/engine/fused/optim.ts): Adam's moments and update, and
// the EMA blend of weights, computed in double in the JS loops' order (the same bits), elements
// split over OpenMP's threads for large parameters.
#include <math.h>
#include <stdint.h>

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
