// The CPU's arithmetic ceiling, for the benches (bench/models.ts): how many GFLOP/s its widest fp32
// FMA and its bf16 dot product (vdpbf16ps, AVX512_BF16) reach when nothing but them runs. Achieved
// GFLOP/s mean little across CPUs without it, and the bf16 figure says what bf16 can gain at all:
// on the Xeon (model 207, AMX hidden) of these notes vdpbf16ps peaks at half the fp32 FMA rate
// (about 99 against 205 GFLOP/s a core), so no bf16 kernel built on it can beat fp32 there.
//
// Each thread runs 12 independent accumulator chains (more than a core's latency × throughput
// needs, and with the two constants within AVX2's 16 registers) in chunks until `seconds` have
// passed on its clock; the result is the threads' rates summed. a·m + c with m < 1 (not 1, which a
// compiler may fold away) stays near c / (1 − m), finite and normal; the bf16 chains add 2 a step
// and stall at 2^24.
#include <stdint.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

enum { CHUNK = 4096 };  // iterations between clock reads

#define EACH(F) F(0) F(1) F(2) F(3) F(4) F(5) F(6) F(7) F(8) F(9) F(10) F(11)
#define DECLARE(i) V a##i = START(i);
#define STEP(i) a##i = OP(a##i);
#define FOLD(i) sink += LANE0(a##i);

// One chain set of vector type V: A = OP(A) on each accumulator until `seconds` pass; returns
// flops per second, `flops` being what one OP counts. V, START(i), OP(a) and LANE0(a) are
// defined before each use.
#define CHAINS(name, attr, flops)                                      \
  attr static double name(double seconds) {                           \
    EACH(DECLARE)                                                      \
    const double t0 = now();                                           \
    double t = t0;                                                     \
    int64_t chunks = 0;                                                \
    do {                                                               \
      for (int k = 0; k < CHUNK; k++) { EACH(STEP) }                   \
      chunks++;                                                        \
      t = now();                                                       \
    } while (t - t0 < seconds);                                        \
    volatile float sink = 0; /* keeps the chains from being removed */ \
    EACH(FOLD)                                                         \
    (void)sink;                                                        \
    return (double)chunks * CHUNK * 12 * (flops) / (t - t0);           \
  }

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define V __m512
#define START(i) _mm512_set1_ps((float)(i))
#define LANE0(a) _mm512_cvtss_f32(a)
#define OP(a) _mm512_fmadd_ps(a, _mm512_set1_ps(0.999f), _mm512_set1_ps(1e-3f))
CHAINS(fma512, __attribute__((target("avx512f"))), 16 * 2)
#undef OP
// vdpbf16ps: each 32-bit lane adds two bf16 products (4 flops a lane); 0x3f80 is bf16's 1.
#define OP(a) _mm512_dpbf16_ps(a, ONE_BF16, ONE_BF16)
#define ONE_BF16 ((__m512bh)_mm512_set1_epi16(0x3f80))
CHAINS(dot_bf16, __attribute__((target("avx512f,avx512bf16"))), 16 * 4)
#undef V
#undef START
#undef LANE0
#undef OP

#define V __m256
#define START(i) _mm256_set1_ps((float)(i))
#define LANE0(a) _mm256_cvtss_f32(a)
#define OP(a) _mm256_fmadd_ps(a, _mm256_set1_ps(0.999f), _mm256_set1_ps(1e-3f))
CHAINS(fma256, __attribute__((target("avx2,fma"))), 8 * 2)
#undef V
#undef START
#undef LANE0
#undef OP
#endif

// Without x86 vector instructions: whatever the compiler makes of 4-float multiply-adds.
typedef float V4 __attribute__((vector_size(16)));
#define V V4
#define START(i) ((V4){(float)(i), (float)(i), (float)(i), (float)(i)})
#define LANE0(a) ((a)[0])
#define OP(a) ((a) * 0.999f + 1e-3f)
CHAINS(mad128, , 4 * 2)

typedef double (*Chains)(double);

/** The chain set for `kind` (0: fp32 at the widest width, 1: bf16 dot), or 0 if not here. */
static Chains chains_for(int32_t kind) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (kind == 0 && __builtin_cpu_supports("avx512f")) return fma512;
  if (kind == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return fma256;
  if (kind == 1 && __builtin_cpu_supports("avx512bf16")) return dot_bf16;
#endif
  return kind == 0 ? mad128 : 0;
}

/**
 * GFLOP/s of `kind` (0: fp32 multiply-add at the widest vector width, 1: AVX512_BF16 dot) on
 * `threads` threads (≤ 1: this one), each running for `seconds`; -1 when the CPU lacks `kind`,
 * -2 when asked for threads in a build without OpenMP.
 */
double dp_peak(int32_t kind, double seconds, int32_t threads) {
  const Chains run = chains_for(kind);
  if (!run) return -1;
#ifndef _OPENMP
  if (threads > 1) return -2;
#endif
  double total = 0;
#pragma omp parallel num_threads(threads > 1 ? threads : 1) reduction(+ : total)
  total += run(seconds);
  return total / 1e9;
}
