// Multi-head self-attention straight from a fused qkv projection, forward and backward, one call
// each (lib/engine/fused/attention.ts): out = softmax(scale·q·kᵀ)·v per example and head, read
// from qkv [n, t, 3·heads·ch] in either channel order and written head-major to [n, t, heads·ch].
// The composed route (transpose, split, two batched products, softmax, transpose back) spent
// 2.5 ms per attention block of a U-Net feature step (batch 64, 49 tokens), mostly in copies;
// this takes 1.2 ms, and backward it saves the split's concat and three transposes as well.
//
// One (example, head) pair per OpenMP task, in blocks of R query rows: scores against kᵀ (kept
// in thread scratch, ch × tp, columns padded to a whole vector), their softmax in place, then
// p·v. Backward recomputes p a block at a time (nothing of size t² is kept) and accumulates dk
// and dv in scratch. Subnormals are flushed (exp.h); results agree with the composed route to a
// few 1e-7 (another summation order), not bit for bit.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

// Helpers are inlined into each clone, so that they run on its ISA (a call would run the
// default clone's code on emulated wide vectors).
#define INLINE static inline __attribute__((always_inline))

enum { V = 16, R = 8 };  // floats per vector; query rows per block
typedef float vec __attribute__((vector_size(V * sizeof(float))));

INLINE vec load(const float* p) {
  vec v;
  memcpy(&v, p, sizeof v);
  return v;
}

INLINE void store(float* p, vec v) { memcpy(p, &v, sizeof v); }

/** n floats from src to dst (inlined: a memcpy call per row of 32 floats costs more). */
INLINE void copy(float* restrict dst, const float* restrict src, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = src[i];
}

INLINE int64_t round_up(int64_t x) { return (x + V - 1) / V * V; }

/** Where a head's q (part 0), k (1) or v (2) starts in a token's qkv row. */
INLINE int64_t part_offset(int legacy, int64_t heads, int64_t ch, int64_t h, int part) {
  return legacy ? (h * 3 + part) * ch : (part * heads + h) * ch;
}

/** The shape of one call (tp, chp: t and ch rounded up to whole vectors). */
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

typedef int32_t lanes __attribute__((vector_size(V * sizeof(int32_t))));

// Shuffle masks of a V×V transpose in log2(V) stages: stage h pairs rows i and i + h (i & h
// zero) and swaps their off-diagonal h-wide blocks, a ← a[k] or b[k − h], b ← a[k + h] or b[k].
#define PICK_A(h, k) (((k) & (h)) ? V + (k) - (h) : (k))
#define PICK_B(h, k) (((k) & (h)) ? V + (k) : (k) + (h))
#define MASK(P, h)                                                                           \
  (lanes) {                                                                                  \
    P(h, 0), P(h, 1), P(h, 2), P(h, 3), P(h, 4), P(h, 5), P(h, 6), P(h, 7), P(h, 8), P(h, 9), \
        P(h, 10), P(h, 11), P(h, 12), P(h, 13), P(h, 14), P(h, 15)                           \
  }

#define STAGE(h)                                               \
  for (int i = 0; i < V; i++) {                                \
    if (i & (h)) continue;                                     \
    const vec a = r[i], b = r[i + (h)];                        \
    r[i] = __builtin_shuffle(a, b, MASK(PICK_A, h));           \
    r[i + (h)] = __builtin_shuffle(a, b, MASK(PICK_B, h));     \
  }

/** Rows r[0..V) transposed in place: a V×V tile in registers, 64 shuffles (one instruction
 * each on AVX-512, the masks constant). */
INLINE void transpose_tile(vec* r) {
  STAGE(8)
  STAGE(4)
  STAGE(2)
  STAGE(1)
}

/** xᵀ [ch][tp] of rows x[j·stride + c], j < t (padding columns stay zero): V×V tiles through
 * registers, the ragged edges element by element (scalar, the loads strided, it cost 15–18 % of
 * the kernels). */
INLINE void transpose_in(const float* x, int64_t stride, const Dims* d, float* xt) {
  const int64_t tj = d->t / V * V, tc = d->ch / V * V;
  for (int64_t j0 = 0; j0 < tj; j0 += V) {
    for (int64_t c0 = 0; c0 < tc; c0 += V) {
      vec r[V];
      for (int i = 0; i < V; i++) r[i] = load(x + (j0 + i) * stride + c0);
      transpose_tile(r);
      for (int i = 0; i < V; i++) store(xt + (c0 + i) * d->tp + j0, r[i]);
    }
  }
  for (int64_t c = 0; c < d->ch; c++) {
    for (int64_t j = c < tc ? tj : 0; j < d->t; j++) xt[c * d->tp + j] = x[j * stride + c];
  }
}

/** Rows x[j·stride + c] into [t][chp] (padding stays zero). */
INLINE void rows_in(const float* x, int64_t stride, const Dims* d, float* xl) {
  for (int64_t j = 0; j < d->t; j++) copy(xl + j * d->chp, x + j * stride, d->ch);
}

// The two products keep R rows × two vectors of accumulators in registers (16 of AVX-512's 32;
// GCC's vector extensions give each target_clones ISA its own width): enough independent
// multiply-adds to cover their latency, and each vector loaded feeds R of them.

/** s[r][j] = Σ_c a[r][c]·bt[c][j] for R rows of a (padded [R][chp]), all tp columns. */
INLINE void times_t(const float* a, const float* bt, const Dims* d, float* s) {
  int64_t j = 0;
  for (; j + 2 * V <= d->tp; j += 2 * V) {
    vec acc0[R] = {0}, acc1[R] = {0};
    for (int64_t c = 0; c < d->ch; c++) {
      const vec b0 = load(bt + c * d->tp + j), b1 = load(bt + c * d->tp + j + V);
      for (int r = 0; r < R; r++) {
        acc0[r] += a[r * d->chp + c] * b0;
        acc1[r] += a[r * d->chp + c] * b1;
      }
    }
    for (int r = 0; r < R; r++) {
      store(s + r * d->tp + j, acc0[r]);
      store(s + r * d->tp + j + V, acc1[r]);
    }
  }
  if (j < d->tp) {
    vec acc[R] = {0};
    for (int64_t c = 0; c < d->ch; c++) {
      const vec b = load(bt + c * d->tp + j);
      for (int r = 0; r < R; r++) acc[r] += a[r * d->chp + c] * b;
    }
    for (int r = 0; r < R; r++) store(s + r * d->tp + j, acc[r]);
  }
}

/** o[r][:] = Σ_j w[r][j]·bl[j][:] for R rows of w ([R][tp]), j < t. */
INLINE void times(const float* w, const float* bl, const Dims* d, float* o) {
  int64_t c = 0;
  for (; c + 2 * V <= d->chp; c += 2 * V) {
    vec acc0[R] = {0}, acc1[R] = {0};
    for (int64_t j = 0; j < d->t; j++) {
      const vec b0 = load(bl + j * d->chp + c), b1 = load(bl + j * d->chp + c + V);
      for (int r = 0; r < R; r++) {
        acc0[r] += w[r * d->tp + j] * b0;
        acc1[r] += w[r * d->tp + j] * b1;
      }
    }
    for (int r = 0; r < R; r++) {
      store(o + r * d->chp + c, acc0[r]);
      store(o + r * d->chp + c + V, acc1[r]);
    }
  }
  if (c < d->chp) {
    vec acc[R] = {0};
    for (int64_t j = 0; j < d->t; j++) {
      const vec b = load(bl + j * d->chp + c);
      for (int r = 0; r < R; r++) acc[r] += w[r * d->tp + j] * b;
    }
    for (int r = 0; r < R; r++) store(o + r * d->chp + c, acc[r]);
  }
}

/** acc[j][:] += Σ_r w[r][j]·x[r][:] for j < t: a transposed product, accumulated. */
INLINE void accumulate_t(const float* w, const float* x, const Dims* d, float* acc) {
  for (int64_t c = 0; c < d->chp; c += V) {
    vec xr[R];
    for (int r = 0; r < R; r++) xr[r] = load(x + r * d->chp + c);
    for (int64_t j = 0; j < d->t; j++) {
      vec a = load(acc + j * d->chp + c);
      for (int r = 0; r < R; r++) a += w[r * d->tp + j] * xr[r];
      store(acc + j * d->chp + c, a);
    }
  }
}

/** Rows i0.. of x (row stride `stride`, up to R of them) into [R][chp]; missing rows zero. */
INLINE void block_in(const float* x, int64_t stride, int64_t i0, const Dims* d, float* out) {
  for (int r = 0; r < R; r++) {
    if (i0 + r < d->t) copy(out + r * d->chp, x + (i0 + r) * stride, d->ch);
    else for (int64_t c = 0; c < d->ch; c++) out[r * d->chp + c] = 0;
  }
}

// Horizontal folds of a vector in halves by shuffles (lane 0 ends with the result).
#define HALF(P, h) __builtin_shuffle(P, MASK(FOLD, h))
#define FOLD(h, k) (((k) + (h)) % V)

/** The largest of x's lanes; a > b picks per lane through its all-ones mask. */
INLINE vec vmax(vec a, vec b) {
  const lanes m = a > b;
  return (vec)(((lanes)a & m) | ((lanes)b & ~m));
}

INLINE float hmax(vec x) {
  x = vmax(x, HALF(x, 8));
  x = vmax(x, HALF(x, 4));
  x = vmax(x, HALF(x, 2));
  return vmax(x, HALF(x, 1))[0];
}

INLINE float hsum(vec x) {
  x += HALF(x, 8);
  x += HALF(x, 4);
  x += HALF(x, 2);
  return (x + HALF(x, 1))[0];
}

/** Scores of R rows into probabilities in place: softmax(scale·s) over j < t, zero beyond.
 * Maxima and sums a vector at a time, folded by shuffles at the end (rows are only a few
 * vectors long, so what each row costs once matters). */
INLINE void softmax_block(float* s, const Dims* d, float lo, float hi) {
  for (int r = 0; r < R; r++) {
    float* row = s + r * d->tp;
    for (int64_t j = d->t; j < d->tp; j++) row[j] = row[0];  // neutral for the maximum
    vec mx = load(row);
    for (int64_t j = V; j < d->tp; j += V) mx = vmax(mx, load(row + j));
    const float m = hmax(mx);
    for (int64_t j = 0; j < d->tp; j++) row[j] = exp_f(d->scale * (row[j] - m), lo, hi);
    for (int64_t j = d->t; j < d->tp; j++) row[j] = 0;
    vec sums = load(row);
    for (int64_t j = V; j < d->tp; j += V) sums += load(row + j);
    const float inv = 1.0f / hsum(sums);
    for (int64_t j = 0; j < d->tp; j++) row[j] *= inv;
  }
}

/** Rows i0.. of a [R][chp] block out to x (row stride `stride`). */
INLINE void block_out(const float* in, int64_t i0, const Dims* d, float* x, int64_t stride) {
  for (int r = 0; r < R && i0 + r < d->t; r++)
    copy(x + (i0 + r) * stride, in + r * d->chp, d->ch);
}

EXP_FMA CLONES static void forward_one(const float* qkv, float* out, int64_t h, const Dims* d,
                                       Scratch* s, float lo, float hi) {
  const int64_t w = d->width, cout = d->heads * d->ch;
  const float* q = qkv + part_offset(d->legacy, d->heads, d->ch, h, 0);
  transpose_in(qkv + part_offset(d->legacy, d->heads, d->ch, h, 1), w, d, s->at);
  rows_in(qkv + part_offset(d->legacy, d->heads, d->ch, h, 2), w, d, s->vl);
  for (int64_t i0 = 0; i0 < d->t; i0 += R) {
    block_in(q, w, i0, d, s->rows);
    times_t(s->rows, s->at, d, s->p);
    softmax_block(s->p, d, lo, hi);
    times(s->p, s->vl, d, s->acc);
    block_out(s->acc, i0, d, out + h * d->ch, cout);
  }
}

EXP_FMA CLONES static void backward_one(const float* qkv, const float* dout, float* dqkv,
                                        int64_t h, const Dims* d, Scratch* s, float lo,
                                        float hi) {
  const int64_t w = d->width, cout = d->heads * d->ch;
  const int64_t oq = part_offset(d->legacy, d->heads, d->ch, h, 0);
  const int64_t ok = part_offset(d->legacy, d->heads, d->ch, h, 1);
  const int64_t ov = part_offset(d->legacy, d->heads, d->ch, h, 2);
  transpose_in(qkv + ok, w, d, s->at);  // kᵀ, for the scores
  transpose_in(qkv + ov, w, d, s->bt);  // vᵀ, for dp = dout·vᵀ
  rows_in(qkv + ok, w, d, s->kl);       // k, for dq = ds·k
  memset(s->dk, 0, d->t * d->chp * sizeof(float));
  memset(s->dv, 0, d->t * d->chp * sizeof(float));
  for (int64_t i0 = 0; i0 < d->t; i0 += R) {
    block_in(qkv + oq, w, i0, d, s->rows);
    block_in(dout + h * d->ch, cout, i0, d, s->grads);
    times_t(s->rows, s->at, d, s->p);
    softmax_block(s->p, d, lo, hi);
    times_t(s->grads, s->bt, d, s->dp);
    // ds = scale·p⊙(dp − Σ_j dp⊙p), in place of dp (zero in the padding, where p is).
    for (int r = 0; r < R; r++) {
      const float* pr = s->p + r * d->tp;
      float* g = s->dp + r * d->tp;
      vec dots = {0};
      for (int64_t j = 0; j < d->tp; j += V) dots += load(pr + j) * load(g + j);
      const float dot = hsum(dots);
      for (int64_t j = 0; j < d->tp; j++) g[j] = d->scale * pr[j] * (g[j] - dot);
    }
    accumulate_t(s->p, s->grads, d, s->dv);  // dv += pᵀ·dout
    accumulate_t(s->dp, s->rows, d, s->dk);  // dk += dsᵀ·q
    times(s->dp, s->kl, d, s->acc);          // dq = ds·k
    block_out(s->acc, i0, d, dqkv + oq, w);
  }
  for (int64_t j = 0; j < d->t; j++) {
    copy(dqkv + ok + j * w, s->dk + j * d->chp, d->ch);
    copy(dqkv + ov + j * w, s->dv + j * d->chp, d->ch);
  }
}

static Dims dims_of(int64_t t, int64_t heads, int64_t ch, int32_t legacy, float scale) {
  const Dims d = {t, heads, ch, round_up(t), round_up(ch), 3 * heads * ch, legacy != 0, scale};
  return d;
}

/** out [n, t, heads·ch] from qkv [n, t, 3·heads·ch]; 0 when scratch could not be allocated. */
int32_t dp_attention(const float* qkv, float* out, int64_t n, int64_t t, int64_t heads,
                     int64_t ch, int32_t legacy, float scale) {
  const Dims d = dims_of(t, heads, ch, legacy, scale);
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
  int failed = 0;
#pragma omp parallel reduction(| : failed)
  {
    Scratch s;
    const int ok = scratch_alloc(&s, &d);
    failed = !ok;
    const unsigned csr = ftz_begin();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n * heads; task++) {
      const int64_t e = task / heads, h = task % heads;
      if (ok) forward_one(qkv + e * t * d.width, out + e * t * heads * ch, h, &d, &s, lo, hi);
    }
    ftz_end(csr);
    free(s.all);
  }
  return !failed;
}

/** dqkv [n, t, 3·heads·ch] from qkv and dout [n, t, heads·ch]; 0 when scratch failed. */
int32_t dp_attention_grad(const float* qkv, const float* dout, float* dqkv, int64_t n, int64_t t,
                          int64_t heads, int64_t ch, int32_t legacy, float scale) {
  const Dims d = dims_of(t, heads, ch, legacy, scale);
  const float lo = dp_exp_bounds[0], hi = dp_exp_bounds[1];
  int failed = 0;
#pragma omp parallel reduction(| : failed)
  {
    Scratch s;
    const int ok = scratch_alloc(&s, &d);
    failed = !ok;
    const unsigned csr = ftz_begin();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < n * heads; task++) {
      const int64_t e = task / heads, h = task % heads;
      if (ok) {
        backward_one(qkv + e * t * d.width, dout + e * t * heads * ch, dqkv + e * t * d.width, h,
                     &d, &s, lo, hi);
      }
    }
    ftz_end(csr);
    free(s.all);
  }
  return !failed;
}
