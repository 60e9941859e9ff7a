// The optimiser's elementwise passes (lib/engine/fused/optim.ts): Adam's moments and update, the
// sum of parameter and update, and the EMA blend of weights, for all parameters in one call,
// computed in the JS loops' order and precision (the same bits); and the sum of squares of a
// gradient (the global norm), in double over fixed chunks added in order (the same bits for any
// thread count).
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

// Multi-tensor entries: `count` tensors per call (a model's ~200 parameters in one kernel
// instead of one each), row k of `t` holding the word offsets of tensor k's arrays on `heap`
// (the wasm heap) and its length. One OpenMP region per call: each thread takes a contiguous
// share of every tensor, with no barrier between tensors. Elementwise, so any split gives the
// same bits; calls under MIN_THREADED elements in all stay on one thread.
enum { MIN_THREADED = 1 << 14 };

/** This thread's share [*lo, *hi) of n elements. */
static inline void share(int64_t n, int64_t* lo, int64_t* hi) {
#ifdef _OPENMP
  const int64_t id = omp_get_thread_num(), threads = omp_get_num_threads();
#else
  const int64_t id = 0, threads = 1;
#endif
  *lo = n * id / threads;
  *hi = n * (id + 1) / threads;
}

static int64_t total(const int64_t* t, int64_t count, int64_t width) {
  int64_t n = 0;
  for (int64_t k = 0; k < count; k++) n += t[k * width + width - 1];
  return n;
}

/** m' = β1·m + (1 − β1)·g, v' = β2·v + (1 − β2)·g², u = −step·m'/(√v' + ε̂), in double (sqrt
 * and division are correctly rounded, so the vector forms give the scalar bits). */
CLONES static void adam_range(const float* restrict g, const float* restrict m,
                              const float* restrict v, float* restrict m_out,
                              float* restrict v_out, float* restrict u, int64_t lo, int64_t hi,
                              double beta1, double beta2, double eps_hat, double step) {
  const double c1 = 1 - beta1, c2 = 1 - beta2;
  for (int64_t i = lo; i < hi; i++) {
    const double gi = g[i];
    const double mi = m[i] * beta1 + gi * c1;
    const double vi = v[i] * beta2 + gi * gi * c2;
    m_out[i] = (float)mi;
    v_out[i] = (float)vi;
    u[i] = (float)(-step * (mi / (sqrt(vi) + eps_hat)));
  }
}

/** Adam (../fused/optim.ts's adamArrays, the same bits) for `count` parameters. Rows of `t`:
 * g, m, v, p (−1: none), m', v', u, n; rows of `c`: step, decay (u −= decay·p where p is given
 * and decay ≠ 0). */
void dp_adam_multi(float* heap, const int64_t* t, const double* c, int64_t count, double beta1,
                   double beta2, double eps_hat) {
#pragma omp parallel if (total(t, count, 8) > MIN_THREADED)
  for (int64_t k = 0; k < count; k++) {
    const int64_t* r = t + k * 8;
    int64_t lo, hi;
    share(r[7], &lo, &hi);
    float* u = heap + r[6];
    adam_range(heap + r[0], heap + r[1], heap + r[2], heap + r[4], heap + r[5], u, lo, hi, beta1,
               beta2, eps_hat, c[k * 2]);
    const double decay = c[k * 2 + 1];
    if (decay != 0 && r[3] >= 0) {
      const float* p = heap + r[3];
      for (int64_t i = lo; i < hi; i++) u[i] = (float)(u[i] - p[i] * decay);
    }
  }
}

CLONES static void add_range(const float* restrict a, const float* restrict b,
                             float* restrict out, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; i++) out[i] = a[i] + b[i];
}

/** out = a + b in float (tf.add's bits) for `count` pairs. Rows of `t`: a, b, out, n. */
void dp_add_multi(float* heap, const int64_t* t, int64_t count) {
#pragma omp parallel if (total(t, count, 4) > MIN_THREADED)
  for (int64_t k = 0; k < count; k++) {
    const int64_t* r = t + k * 4;
    int64_t lo, hi;
    share(r[3], &lo, &hi);
    add_range(heap + r[0], heap + r[1], heap + r[2], lo, hi);
  }
}

CLONES static void ema_range(const float* restrict e, const float* restrict p,
                             float* restrict out, int64_t lo, int64_t hi, double rate) {
  const double c = 1 - rate;
  for (int64_t i = lo; i < hi; i++) out[i] = (float)(e[i] * rate + p[i] * c);
}

/** out = rate·e + (1 − rate)·p (the JS loop's bits) for `count` tensors. Rows of `t`: e, p,
 * out, n. */
void dp_ema_multi(float* heap, const int64_t* t, int64_t count, double rate) {
#pragma omp parallel if (total(t, count, 4) > MIN_THREADED)
  for (int64_t k = 0; k < count; k++) {
    const int64_t* r = t + k * 4;
    int64_t lo, hi;
    share(r[3], &lo, &hi);
    ema_range(heap + r[0], heap + r[1], heap + r[2], lo, hi, rate);
  }
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
