// Multi-head self-attention straight from a fused qkv projection, forward and backward, one call
// each (lib/engine/fused/attention.ts): out = softmax(scale·q·kᵀ)·v per example and head, read
// from qkv [n, t, 3·heads·ch] in either channel order and written head-major to [n, t, heads·ch].
// The composed route (transpose, split, two batched products, softmax, transpose back) spent
// 2.5 ms per attention block of a U-Net feature step (batch 64, 49 tokens), mostly in copies;
// this took 1.2 ms, and backward it saves the split's concat and three transposes as well. With
// the softmax kept in registers and the row copies inline, the kernel alone takes 0.7 ms forward
// and 1.3 backward at that shape on 2 threads (1.0 and 1.8–2.0 before; a C harness, Xeon 207).
//
// One (example, head) pair per OpenMP task, in blocks of query rows: scores against kᵀ (kept in
// thread scratch, ch × tp, columns padded to 16), their softmax in place, then p·v. Backward
// recomputes p a block at a time (nothing of size t² is kept) and accumulates dk and dv in
// scratch. The kernels themselves are in ./attention_impl.h, built for AVX-512, AVX2 and plain
// SSE and picked at run time. Subnormals are flushed (exp.h); results agree with the composed
// route to a few 1e-7 (another summation order), not bit for bit.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp.h"

// The kernels' gcc options, in one attribute (a second `optimize` replaces the first): exp.h's
// EXP_FMA contraction, and no turning of the row copies' loops into memmove calls of a row each.
#if defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((optimize("fp-contract=fast", "no-tree-loop-distribute-patterns")))
#else
#define KERNEL
#endif

// Padding of rows and columns (every width's vector divides it), and query rows per block at
// most (the scratch is sized for it).
enum { PAD = 16, R = 8 };

static int64_t round_up(int64_t x) { return (x + PAD - 1) / PAD * PAD; }

/** Where a head's q (part 0), k (1) or v (2) starts in a token's qkv row. */
static inline int64_t part_offset(int legacy, int64_t heads, int64_t ch, int64_t h, int part) {
  return legacy ? (h * 3 + part) * ch : (part * heads + h) * ch;
}

/** The shape of one call (tp, chp: t and ch rounded up to PAD). */
typedef struct {
  int64_t t, heads, ch, tp, chp, width;  // width: floats per token in qkv (3·heads·ch)
  int legacy;
  float scale;
} Dims;

/** One thread's scratch. */
typedef struct {
  float* at;     // [ch][tp]: kᵀ, for the scores
  float* bt;     // [ch][tp]: vᵀ, for dp = dout·vᵀ (backward)
  float* kl;     // [t][chp]: k, for dq = ds·k (backward)
  float* vl;     // [t][chp]: v, for p·v (forward)
  float* dk;     // [t][chp]
  float* dv;     // [t][chp]
  float* p;      // [R][tp]: a block's scores, then probabilities
  float* dp;     // [R][tp]
  float* rows;   // [R][chp]: a block's q rows, padded
  float* grads;  // [R][chp]: a block's dout rows, padded
  float* acc;    // [R][chp]
  float* all;    // the one allocation the above point into
} Scratch;

/** One thread's scratch, zeroed (the padding must be); 0 when it cannot be allocated. */
static int scratch_alloc(Scratch* s, const Dims* d) {
  const int64_t kt = d->ch * d->tp, rows = d->t * d->chp, blk = R * d->tp, vr = R * d->chp;
  s->all = calloc((size_t)(2 * kt + 4 * rows + 2 * blk + 3 * vr), sizeof(float));
  if (!s->all) return 0;
  float* at = s->all;
  s->at = at, at += kt;
  s->bt = at, at += kt;
  s->kl = at, at += rows;
  s->vl = at, at += rows;
  s->dk = at, at += rows;
  s->dv = at, at += rows;
  s->p = at, at += blk;
  s->dp = at, at += blk;
  s->rows = at, at += vr;
  s->grads = at, at += vr;
  s->acc = at;
  return 1;
}

#if defined(__x86_64__) && defined(__GNUC__)  // GCC and clang
#define V 16
#define RW 8
#define SUFFIX avx512
#define TARGET __attribute__((target("avx512f,fma")))
#include "attention_impl.h"
#undef V
#undef RW
#undef SUFFIX
#undef TARGET

#define V 8
#define RW 4
#define SUFFIX avx2
#define TARGET __attribute__((target("avx2,fma")))
#include "attention_impl.h"
#undef V
#undef RW
#undef SUFFIX
#undef TARGET
#endif

#define V 4
#define RW 4
#define SUFFIX plain
#define TARGET
#include "attention_impl.h"
#undef V
#undef RW
#undef SUFFIX
#undef TARGET

typedef void Forward(const float*, float*, int64_t, const Dims*, Scratch*, float, float);
typedef void Backward(const float*, const float*, float*, int64_t, const Dims*, Scratch*, float,
                      float);

/** The widest kernels this CPU runs, or narrower ones where DP_ATTENTION_ISA says "avx2" or
 * "plain" (for the tests, which check every width on a CPU that runs them all). */
static void pick(Forward** f, Backward** b) {
#if defined(__x86_64__) && defined(__GNUC__)
  const char* cap = getenv("DP_ATTENTION_ISA");
  const int plain = cap && !strcmp(cap, "plain");
  const int upto_avx2 = plain || (cap && !strcmp(cap, "avx2"));
  __builtin_cpu_init();
  if (!upto_avx2 && __builtin_cpu_supports("avx512f")) {
    *f = forward_one_avx512, *b = backward_one_avx512;
    return;
  }
  if (!plain && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    *f = forward_one_avx2, *b = backward_one_avx2;
    return;
  }
#endif
  *f = forward_one_plain, *b = backward_one_plain;
}

static Dims dims_of(int64_t t, int64_t heads, int64_t ch, int32_t legacy, float scale) {
  const Dims d = {t, heads, ch, round_up(t), round_up(ch), 3 * heads * ch, legacy != 0, scale};
  return d;
}

/** Every (example, head) task of one call: forward when dout is NULL (`to` is out [n, t,
 * heads·ch]), else backward (`to` is dqkv [n, t, 3·heads·ch]); 0 when a thread's scratch could
 * not be allocated. */
static int32_t run(const float* qkv, const float* dout, float* to, int64_t n, int64_t t,
                   int64_t heads, int64_t ch, int32_t legacy, float scale) {
  const Dims d = dims_of(t, heads, ch, legacy, scale);
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
  Forward* forward_one;
  Backward* backward_one;
  pick(&forward_one, &backward_one);
  int failed = 0;
#pragma omp parallel reduction(| : failed)
  {
    Scratch s;
    const int ok = scratch_alloc(&s, &d);
    failed = !ok;
    const unsigned csr = ftz_begin();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n * heads; task++) {
      if (!ok) continue;
      const int64_t e = task / heads, h = task % heads;
      const float* x = qkv + e * t * d.width;
      const int64_t o = e * t * heads * ch;  // example e's rows of out and dout
      if (dout) backward_one(x, dout + o, to + e * t * d.width, h, &d, &s, lo, hi);
      else forward_one(x, to + o, h, &d, &s, lo, hi);
    }
    ftz_end(csr);
    free(s.all);
  }
  return !failed;
}

/** out [n, t, heads·ch] from qkv [n, t, 3·heads·ch]; 0 when scratch could not be allocated. */
int32_t dp_attention(const float* qkv, float* out, int64_t n, int64_t t, int64_t heads,
                     int64_t ch, int32_t legacy, float scale) {
  return run(qkv, NULL, out, n, t, heads, ch, legacy, scale);
}

/** dqkv [n, t, 3·heads·ch] from qkv and dout [n, t, heads·ch]; 0 when scratch failed. */
int32_t dp_attention_grad(const float* qkv, const float* dout, float* dqkv, int64_t n, int64_t t,
                          int64_t heads, int64_t ch, int32_t legacy, float scale) {
  return run(qkv, dout, dqkv, n, t, heads, ch, legacy, scale);
}
