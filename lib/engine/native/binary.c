// Float32 Add, Sub and Multiply for the wasm backend (lib/engine/wasm_kernels/binary.ts): the
// built-in kernels run on one thread, and residual adds, adaLN gates and their gradients are
// whole activations (a U-Net step adds ~90 of them). Elements split over OpenMP's threads; each
// is one IEEE operation, as in the built-in kernels, so results are the same bits. Also DiT's
// gated residual x + g·h in one pass, and its gate's gradient (lib/engine/fused/gated.ts).
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

enum { MIN_THREADED = 1 << 16 };

// out [P, Q, R] = x op y, where x and y are each either whole ([P, Q, R]: *_full = 1) or
// repeated along Q ([P, 1, R]). Rows of R elements split over the threads.
#define BINARY(name, OP)                                                                         \
  CLONES static void name(const float* x, int32_t x_full, const float* y, int32_t y_full,        \
                          float* out, int64_t P, int64_t Q, int64_t R) {                          \
    _Pragma("omp parallel for schedule(static) if (P * Q * R > MIN_THREADED)")                  \
    for (int64_t row = 0; row < P * Q; row++) {                                                  \
      const float* xr = x + (x_full ? row : row / Q) * R;                                        \
      const float* yr = y + (y_full ? row : row / Q) * R;                                        \
      float* o = out + row * R;                                                                  \
      for (int64_t r = 0; r < R; r++) o[r] = xr[r] OP yr[r];                                     \
    }                                                                                            \
  }

BINARY(add_rows, +)
BINARY(sub_rows, -)
BINARY(mul_rows, *)

/** op 0: add, 1: subtract, 2: multiply; see BINARY for the shapes. */
void dp_binary(int32_t op, const float* x, int32_t x_full, const float* y, int32_t y_full,
               float* out, int64_t P, int64_t Q, int64_t R) {
  if (op == 0) add_rows(x, x_full, y, y_full, out, P, Q, R);
  else if (op == 1) sub_rows(x, x_full, y, y_full, out, P, Q, R);
  else mul_rows(x, x_full, y, y_full, out, P, Q, R);
}

/** out [P, Q, R] = x + g·h with g [P, 1, R] repeated along Q: DiT's gated residual, the Multiply
 * and the Add in one pass (the same two roundings, so the same bits as the two kernels). */
CLONES void dp_gated_residual(const float* x, const float* g, const float* h, float* out,
                              int64_t P, int64_t Q, int64_t R) {
#pragma omp parallel for schedule(static) if (P * Q * R > MIN_THREADED)
  for (int64_t row = 0; row < P * Q; row++) {
    const float* restrict xr = x + row * R;
    const float* restrict hr = h + row * R;
    const float* restrict gr = g + row / Q * R;
    float* restrict o = out + row * R;
    for (int64_t r = 0; r < R; r++) o[r] = xr[r] + gr[r] * hr[r];
  }
}

enum { GATE_CHUNK = 256 };

/** dg [P, R] = Σ_q dy[p, q, :]·h[p, q, :], the gate's gradient: each product rounded to float as
 * Multiply rounds it, summed in double over q in order (one Multiply and a Sum over an
 * activation-sized product before). Examples split over the threads. */
CLONES void dp_gate_grad(const float* dy, const float* h, float* dg, int64_t P, int64_t Q,
                         int64_t R) {
#pragma omp parallel for schedule(static) if (P * Q * R > MIN_THREADED)
  for (int64_t p = 0; p < P; p++) {
    for (int64_t r0 = 0; r0 < R; r0 += GATE_CHUNK) {
      const int64_t w = R - r0 < GATE_CHUNK ? R - r0 : GATE_CHUNK;
      double acc[GATE_CHUNK] = {0};
      for (int64_t q = 0; q < Q; q++) {
        const float* restrict dr = dy + (p * Q + q) * R + r0;
        const float* restrict hr = h + (p * Q + q) * R + r0;
        for (int64_t r = 0; r < w; r++) acc[r] += (double)(dr[r] * hr[r]);
      }
      for (int64_t r = 0; r < w; r++) dg[p * R + r0 + r] = (float)acc[r];
    }
  }
}
