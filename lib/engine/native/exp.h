// exp and the logistic function in float for the C kernels (group_norm.c, softmax.c, attention.c),
// inlined into their loops so those vectorise (libm's expf is a scalar call per element).
//
// e^x, relative error about 1e-7 on [lo, hi] = [-87, 88] (x clamped there): x = k·ln2 + r with
// |r| <= ln2/2 (Cody–Waite, ln2 in two parts), Cephes' degree-5 polynomial for e^r, and 2^k put
// into the exponent bits. Branch-free (k rounded by adding and subtracting 1.5·2^23). The bounds
// come in at run time from `dp_exp_bounds` (defined in group_norm.c): with literal bounds gcc
// folds the clamped cases into constants and multiplies every lane by σ(−88) ≈ 6e-39, a
// subnormal, which costs a microcode assist per element (10 ns instead of 1 here).
#ifndef DP_EXP_H
#define DP_EXP_H

#include <stdint.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

extern float dp_exp_bounds[2];

// Subnormal floats cost a microcode assist per operation on x86 (~100 cycles): a DiT's attention
// gradient, scaled by adaLN gates that start at zero, is full of them (its softmax backward ran
// 7× slower). Kernels whose results need not match another route bit for bit flush them to zero
// (FTZ and DAZ in MXCSR) for the duration of each call on the thread that runs it, restoring the
// thread's mode after.
static inline unsigned ftz_begin(void) {
#if defined(__SSE__)
  const unsigned old = _mm_getcsr();
  _mm_setcsr(old | 0x8040u);
  return old;
#else
  return 0;
#endif
}

static inline void ftz_end(unsigned old) {
#if defined(__SSE__)
  _mm_setcsr(old);
#else
  (void)old;
#endif
}

// The passes that call exp_f let gcc contract a·b + c into one fused multiply-add where the
// clone's ISA has it (the AVX-512 clone; the AVX2 and plain ones keep two roundings): 30–45 %
// faster here (a GroupNorm + SiLU pass of 1.6 M elements 0.65 → 0.43 ms, its backward 1.15 →
// 0.57 ms), results within a few 1e-7 of the separate roundings. The files build with
// -ffp-contract=off for the passes that match the JS loops bit for bit.
#if defined(__GNUC__) && !defined(__clang__)
#define EXP_FMA __attribute__((optimize("fp-contract=fast")))
#else
#define EXP_FMA
#endif

// exp_f's steps after the clamp, for floats and for GCC's vectors of floats alike (attention's
// kernels take them a vector at a time): k = round(x/ln2) and p = e^r for r = x − k·ln2; the
// caller puts k + 127 into the exponent bits of the result's scale.
#define EXP_STEPS(x, k, r, p)                                   \
  do {                                                          \
    k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; \
    r = x - k * 0.693359375f;                                   \
    r = r - k * -2.12194440e-4f;                                \
    p = 1.9875691500e-4f * r + 1.3981999507e-3f;                \
    p = p * r + 8.3334519073e-3f;                               \
    p = p * r + 4.1665795894e-2f;                               \
    p = p * r + 1.6666665459e-1f;                               \
    p = p * r + 5.0000001201e-1f;                               \
    p = p * r * r + r + 1.0f;                                   \
  } while (0)

static inline float exp_f(float x, float lo, float hi) {
  x = x < lo ? lo : (x > hi ? hi : x);
  float k, r, p;
  EXP_STEPS(x, k, r, p);
  const int32_t bits = ((int32_t)k + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/** σ(v) = 1/(1 + e^−v). */
static inline float sigmoid_f(float v, float lo, float hi) {
  return 1.0f / (1.0f + exp_f(-v, lo, hi));
}

#endif
