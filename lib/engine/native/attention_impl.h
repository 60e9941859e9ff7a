// The attention kernels of ./attention.c at one vector width, included once per ISA with V
// (floats per vector), RW (query rows per block, at most R), SUFFIX and TARGET defined: GCC's
// vector extensions take their width from the type, not from the target, so a 16-float vector
// compiled for AVX2 runs 20× slower (two registers per value, spilled); each ISA gets vectors
// of its own width instead.

#define FN_(name, suffix) name##_##suffix
#define FN__(name, suffix) FN_(name, suffix)
#define FN(name) FN__(name, SUFFIX)
#define INLINE static inline __attribute__((always_inline)) TARGET

typedef float FN(vec) __attribute__((vector_size(V * sizeof(float))));
typedef int32_t FN(lanes) __attribute__((vector_size(V * sizeof(int32_t))));

// Shuffles with constant lane lists: lane k of the result is lane P(h, k) of a's and b's lanes
// one after the other (GCC's __builtin_shuffle takes the list as a vector, clang's
// __builtin_shufflevector as arguments).
#if V == 16
#define LIST(P, h)                                                                         \
  P(h, 0), P(h, 1), P(h, 2), P(h, 3), P(h, 4), P(h, 5), P(h, 6), P(h, 7), P(h, 8), P(h, 9), \
      P(h, 10), P(h, 11), P(h, 12), P(h, 13), P(h, 14), P(h, 15)
#elif V == 8
#define LIST(P, h) P(h, 0), P(h, 1), P(h, 2), P(h, 3), P(h, 4), P(h, 5), P(h, 6), P(h, 7)
#else
#define LIST(P, h) P(h, 0), P(h, 1), P(h, 2), P(h, 3)
#endif
#if defined(__clang__)
#define SHUFFLE(a, b, P, h) __builtin_shufflevector(a, b, LIST(P, h))
#else
#define SHUFFLE(a, b, P, h) __builtin_shuffle(a, b, (FN(lanes)){LIST(P, h)})
#endif

// A V×V transpose in log2(V) stages: stage h pairs rows i and i + h (i & h zero) and swaps
// their off-diagonal h-wide blocks, a ← a[k] or b[k − h], b ← a[k + h] or b[k].
#define PICK_A(h, k) (((k) & (h)) ? V + (k) - (h) : (k))
#define PICK_B(h, k) (((k) & (h)) ? V + (k) : (k) + (h))
#define STAGE(h)                                     \
  for (int i = 0; i < V; i++) {                      \
    if (i & (h)) continue;                           \
    const FN(vec) a = r[i], b = r[i + (h)];          \
    r[i] = SHUFFLE(a, b, PICK_A, h);                 \
    r[i + (h)] = SHUFFLE(a, b, PICK_B, h);           \
  }

// Lane k's own index, for masks.
#define IOTA(h, k) (k)

// Lanes h.. moved down to 0.., for folds in halves.
#define FOLD(h, k) (((k) + (h)) % V)
#define HALF(x, h) SHUFFLE(x, x, FOLD, h)

INLINE FN(vec) FN(load)(const float* p) {
  FN(vec) v;
  memcpy(&v, p, sizeof v);
  return v;
}

INLINE void FN(store)(float* p, FN(vec) v) { memcpy(p, &v, sizeof v); }

/** n floats from src to dst, a vector at a time (a memcpy call per row of 32 floats cost 11 %
 * of the kernels; gcc turned the plain loop into one, see KERNEL). */
INLINE void FN(copy)(float* restrict dst, const float* restrict src, int64_t n) {
  int64_t i = 0;
  for (; i + V <= n; i += V) FN(store)(dst + i, FN(load)(src + i));
  for (; i < n; i++) dst[i] = src[i];
}

/** Rows r[0..V) transposed in place: a V×V tile in registers, (V/2)·log2(V) shuffle pairs
 * (one instruction each, the masks constant). */
INLINE void FN(transpose_tile)(FN(vec)* r) {
#if V == 16
  STAGE(8)
#endif
#if V >= 8
  STAGE(4)
#endif
  STAGE(2)
  STAGE(1)
}

/** xᵀ [ch][tp] of rows x[j·stride + c], j < t (padding columns stay zero): V×V tiles through
 * registers (element by element, it cost 15–18 % of the kernels), the ragged edges element by
 * element. */
INLINE void FN(transpose_in)(const float* x, int64_t stride, const Dims* d, float* xt) {
  const int64_t tj = d->t / V * V, tc = d->ch / V * V;
  for (int64_t j0 = 0; j0 < tj; j0 += V) {
    for (int64_t c0 = 0; c0 < tc; c0 += V) {
      FN(vec) r[V];
      for (int i = 0; i < V; i++) r[i] = FN(load)(x + (j0 + i) * stride + c0);
      FN(transpose_tile)(r);
      for (int i = 0; i < V; i++) FN(store)(xt + (c0 + i) * d->tp + j0, r[i]);
    }
  }
  for (int64_t c = 0; c < d->ch; c++) {
    for (int64_t j = c < tc ? tj : 0; j < d->t; j++) xt[c * d->tp + j] = x[j * stride + c];
  }
}

/** Rows x[j·stride + c] into [t][chp] (padding stays zero). */
INLINE void FN(rows_in)(const float* x, int64_t stride, const Dims* d, float* xl) {
  for (int64_t j = 0; j < d->t; j++) FN(copy)(xl + j * d->chp, x + j * stride, d->ch);
}

/** o[r][:] = Σ_i a[r][i]·b[i][:] over i < k for RW rows of a (`as` apart), b and o rows of
 * `cols` floats (a multiple of V). RW rows × two vectors of accumulators stay in registers (16
 * of AVX-512's 32): enough independent multiply-adds to cover their latency, and each vector
 * loaded feeds RW of them. */
INLINE void FN(product)(const float* a, int64_t as, const float* b, int64_t k, int64_t cols,
                        float* o) {
  int64_t j = 0;
  for (; j + 2 * V <= cols; j += 2 * V) {
    FN(vec) acc0[RW] = {0}, acc1[RW] = {0};
    for (int64_t i = 0; i < k; i++) {
      const FN(vec) b0 = FN(load)(b + i * cols + j), b1 = FN(load)(b + i * cols + j + V);
      for (int r = 0; r < RW; r++) {
        acc0[r] += a[r * as + i] * b0;
        acc1[r] += a[r * as + i] * b1;
      }
    }
    for (int r = 0; r < RW; r++) {
      FN(store)(o + r * cols + j, acc0[r]);
      FN(store)(o + r * cols + j + V, acc1[r]);
    }
  }
  if (j < cols) {
    FN(vec) acc[RW] = {0};
    for (int64_t i = 0; i < k; i++) {
      const FN(vec) bv = FN(load)(b + i * cols + j);
      for (int r = 0; r < RW; r++) acc[r] += a[r * as + i] * bv;
    }
    for (int r = 0; r < RW; r++) FN(store)(o + r * cols + j, acc[r]);
  }
}

/** s[r][j] = Σ_c a[r][c]·bt[c][j] for RW rows of a (`as` apart), all tp columns. */
INLINE void FN(times_t)(const float* a, int64_t as, const float* bt, const Dims* d, float* s) {
  FN(product)(a, as, bt, d->ch, d->tp, s);
}

/** o[r][:] = Σ_j w[r][j]·bl[j][:] for RW rows of w ([RW][tp]), j < t. */
INLINE void FN(times)(const float* w, const float* bl, const Dims* d, float* o) {
  FN(product)(w, d->tp, bl, d->t, d->chp, o);
}

/** acc[j][:] += Σ_r w[r][j]·x[r][:] for j < t, x's rows `xs` apart: a transposed product,
 * accumulated. Two vectors of columns at a time, so that each w[r][j] loaded feeds both; even
 * and odd rows in separate chains (one chain of RW multiply-adds a row was latency-bound). */
INLINE void FN(accumulate_t)(const float* w, const float* x, int64_t xs, const Dims* d,
                             float* acc) {
  const int64_t t = d->t, tp = d->tp, chp = d->chp;
  int64_t c = 0;
  for (; c + 2 * V <= chp; c += 2 * V) {
    FN(vec) x0[RW], x1[RW];
    for (int r = 0; r < RW; r++) {
      x0[r] = FN(load)(x + r * xs + c);
      x1[r] = FN(load)(x + r * xs + c + V);
    }
    for (int64_t j = 0; j < t; j++) {
      float* a = acc + j * chp + c;
      FN(vec) even0 = FN(load)(a), even1 = FN(load)(a + V), odd0 = {0}, odd1 = {0};
      for (int r = 0; r < RW; r += 2) {
        const float we = w[r * tp + j], wo = w[(r + 1) * tp + j];
        even0 += we * x0[r], even1 += we * x1[r];
        odd0 += wo * x0[r + 1], odd1 += wo * x1[r + 1];
      }
      FN(store)(a, even0 + odd0);
      FN(store)(a + V, even1 + odd1);
    }
  }
  if (c < chp) {  // one vector of columns left
    FN(vec) xr[RW];
    for (int r = 0; r < RW; r++) xr[r] = FN(load)(x + r * xs + c);
    for (int64_t j = 0; j < t; j++) {
      FN(vec) even = FN(load)(acc + j * chp + c), odd = {0};
      for (int r = 0; r < RW; r += 2) {
        even += w[r * tp + j] * xr[r];
        odd += w[(r + 1) * tp + j] * xr[r + 1];
      }
      FN(store)(acc + j * chp + c, even + odd);
    }
  }
}

/** Rows i0.. of x (row stride `stride`, up to RW of them) into [RW][chp]; missing rows zero. */
INLINE void FN(block_in)(const float* x, int64_t stride, int64_t i0, const Dims* d, float* out) {
  for (int r = 0; r < RW; r++) {
    if (i0 + r < d->t) FN(copy)(out + r * d->chp, x + (i0 + r) * stride, d->ch);
    else for (int64_t c = 0; c < d->ch; c++) out[r * d->chp + c] = 0;
  }
}

/** Rows i0.. of x (row stride `stride`) as RW rows of chp floats, *as apart: read in place where
 * all RW rows exist and ch fills whole vectors, else copied into buf by block_in. */
INLINE const float* FN(block_view)(const float* x, int64_t stride, int64_t i0, const Dims* d,
                                   float* buf, int64_t* as) {
  if (i0 + RW <= d->t && d->ch == d->chp) {
    *as = stride;
    return x + i0 * stride;
  }
  FN(block_in)(x, stride, i0, d, buf);
  *as = d->chp;
  return buf;
}

/** a where mask m is set (all ones), else b; comparisons of vectors give such masks. */
INLINE FN(vec) FN(select)(FN(lanes) m, FN(vec) a, FN(vec) b) {
  return (FN(vec))(((FN(lanes))a & m) | ((FN(lanes))b & ~m));
}

/** The larger of a and b in each lane. */
INLINE FN(vec) FN(vmax)(FN(vec) a, FN(vec) b) { return FN(select)(a > b, a, b); }

/** exp.h's exp_f on every lane, step for step. */
INLINE FN(vec) FN(vexp)(FN(vec) x, float lo, float hi) {
  const FN(vec) zero = {0};
  x = FN(select)(x < lo, zero + lo, FN(select)(x > hi, zero + hi, x));
  FN(vec) k, r, p;
  EXP_STEPS(x, k, r, p);
  const FN(lanes) bits = (__builtin_convertvector(k, FN(lanes)) + 127) << 23;
  return p * (FN(vec))bits;
}

/** Lanes j.. of a row that lie before column t (the rest are padding). */
INLINE FN(lanes) FN(valid)(int64_t j, const Dims* d) {
  const FN(lanes) iota = {LIST(IOTA, 0)};
  return iota + (int32_t)j < (int32_t)d->t;
}

/** The largest lane of x, folded in halves by shuffles. */
INLINE float FN(hmax)(FN(vec) x) {
#if V == 16
  x = FN(vmax)(x, HALF(x, 8));
#endif
#if V >= 8
  x = FN(vmax)(x, HALF(x, 4));
#endif
  x = FN(vmax)(x, HALF(x, 2));
  return FN(vmax)(x, HALF(x, 1))[0];
}

/** The sum of x's lanes, folded in halves by shuffles. */
INLINE float FN(hsum)(FN(vec) x) {
#if V == 16
  x += HALF(x, 8);
#endif
#if V >= 8
  x += HALF(x, 4);
#endif
  x += HALF(x, 2);
  return (x + HALF(x, 1))[0];
}

/** Scores of RW rows into probabilities in place: softmax(scale·s) over j < t, zero beyond.
 * Whole vectors only, the padding masked in registers: scalar stores into the padding followed
 * by vector loads of the same row stalled on store forwarding (a sixth of the forward). Out of
 * line: inlined, exp's constants held registers through the products and one of their
 * accumulators spilled to the stack. */
KERNEL static __attribute__((noinline)) TARGET void FN(softmax_block)(float* s, const Dims* d,
                                                                      float lo, float hi) {
  const FN(vec) zero = {0};
  for (int r = 0; r < RW; r++) {
    float* row = s + r * d->tp;
    const FN(vec) first = zero + row[0];  // neutral for the maximum
    FN(vec) mx = first;
    for (int64_t j = 0; j < d->tp; j += V) {
      mx = FN(vmax)(mx, FN(select)(FN(valid)(j, d), FN(load)(row + j), first));
    }
    const float m = FN(hmax)(mx);
    FN(vec) sums = zero;
    for (int64_t j = 0; j < d->tp; j += V) {
      const FN(vec) e = FN(vexp)(d->scale * (FN(load)(row + j) - m), lo, hi);
      const FN(vec) p = FN(select)(FN(valid)(j, d), e, zero);
      FN(store)(row + j, p);
      sums += p;
    }
    const float inv = 1.0f / FN(hsum)(sums);
    for (int64_t j = 0; j < d->tp; j += V) FN(store)(row + j, FN(load)(row + j) * inv);
  }
}

/** Rows i0.. of a [RW][chp] block out to x (row stride `stride`). */
INLINE void FN(block_out)(const float* in, int64_t i0, const Dims* d, float* x, int64_t stride) {
  for (int r = 0; r < RW && i0 + r < d->t; r++)
    FN(copy)(x + (i0 + r) * stride, in + r * d->chp, d->ch);
}

KERNEL TARGET static void FN(forward_one)(const float* qkv, float* out, int64_t h, const Dims* d,
                                         Scratch* s, float lo, float hi) {
  const int64_t w = d->width, cout = d->heads * d->ch;
  const float* q = qkv + part_offset(d->legacy, d->heads, d->ch, h, 0);
  FN(transpose_in)(qkv + part_offset(d->legacy, d->heads, d->ch, h, 1), w, d, s->at);
  FN(rows_in)(qkv + part_offset(d->legacy, d->heads, d->ch, h, 2), w, d, s->vl);
  for (int64_t i0 = 0; i0 < d->t; i0 += RW) {
    int64_t qs;
    const float* qb = FN(block_view)(q, w, i0, d, s->rows, &qs);
    FN(times_t)(qb, qs, s->at, d, s->p);
    FN(softmax_block)(s->p, d, lo, hi);
    FN(times)(s->p, s->vl, d, s->acc);
    FN(block_out)(s->acc, i0, d, out + h * d->ch, cout);
  }
}

KERNEL TARGET static void FN(backward_one)(const float* qkv, const float* dout, float* dqkv,
                                          int64_t h, const Dims* d, Scratch* s, float lo,
                                          float hi) {
  const int64_t w = d->width, cout = d->heads * d->ch;
  const int64_t oq = part_offset(d->legacy, d->heads, d->ch, h, 0);
  const int64_t ok = part_offset(d->legacy, d->heads, d->ch, h, 1);
  const int64_t ov = part_offset(d->legacy, d->heads, d->ch, h, 2);
  FN(transpose_in)(qkv + ok, w, d, s->at);  // kᵀ, for the scores
  FN(transpose_in)(qkv + ov, w, d, s->bt);  // vᵀ, for dp = dout·vᵀ
  FN(rows_in)(qkv + ok, w, d, s->kl);       // k, for dq = ds·k
  memset(s->dk, 0, d->t * d->chp * sizeof(float));
  memset(s->dv, 0, d->t * d->chp * sizeof(float));
  for (int64_t i0 = 0; i0 < d->t; i0 += RW) {
    int64_t qs, gs;
    const float* qb = FN(block_view)(qkv + oq, w, i0, d, s->rows, &qs);
    const float* gb = FN(block_view)(dout + h * d->ch, cout, i0, d, s->grads, &gs);
    FN(times_t)(qb, qs, s->at, d, s->p);
    FN(softmax_block)(s->p, d, lo, hi);
    FN(times_t)(gb, gs, s->bt, d, s->dp);
    // ds = scale·p⊙(dp − Σ_j dp⊙p), in place of dp (zero in the padding, where p is).
    for (int r = 0; r < RW; r++) {
      const float* pr = s->p + r * d->tp;
      float* g = s->dp + r * d->tp;
      FN(vec) dots = {0};
      for (int64_t j = 0; j < d->tp; j += V) dots += FN(load)(pr + j) * FN(load)(g + j);
      const float dot = FN(hsum)(dots);
      for (int64_t j = 0; j < d->tp; j++) g[j] = d->scale * pr[j] * (g[j] - dot);
    }
    FN(accumulate_t)(s->p, gb, gs, d, s->dv);  // dv += pᵀ·dout
    FN(accumulate_t)(s->dp, qb, qs, d, s->dk);  // dk += dsᵀ·q
    FN(times)(s->dp, s->kl, d, s->acc);          // dq = ds·k
    FN(block_out)(s->acc, i0, d, dqkv + oq, w);
  }
  for (int64_t j = 0; j < d->t; j++) {
    FN(copy)(dqkv + ok + j * w, s->dk + j * d->chp, d->ch);
    FN(copy)(dqkv + ov + j * w, s->dv + j * d->chp, d->ch);
  }
}

#undef FN_
#undef FN__
#undef FN
#undef INLINE
#undef LIST
#undef SHUFFLE
#undef PICK_A
#undef PICK_B
#undef STAGE
#undef FOLD
#undef IOTA
#undef HALF
