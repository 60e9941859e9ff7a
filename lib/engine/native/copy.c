// Strided block copies inside the wasm heap for Concat, SplitV and Transpose (lib/engine/
// wasm_kernels/copy.ts): the U-Net's skip connections join and split along channels, `blocks`
// rows of a few dozen to hundreds of words each, where JS pays a copyWithin call per row; the
// attention heads and DiT patches move rows of channels between axes. One call here copies every
// row, the rows split over OpenMP's threads. Offsets and strides are in 4-byte words from `heap`;
// source and destination never overlap (distinct tensors). Also the U-Net's nearest ×2
// upsampling and its gradient (lib/engine/fused/upsample.ts), on float views.
#include <stdint.h>
#include <string.h>

void dp_copy_blocks(int32_t* heap, int64_t src, int64_t src_stride, int64_t dst,
                    int64_t dst_stride, int64_t len, int64_t blocks) {
  const size_t bytes = (size_t)len * sizeof(int32_t);
#pragma omp parallel for schedule(static) if (blocks * len > 65536)
  for (int64_t i = 0; i < blocks; i++) {
    memcpy(heap + dst + i * dst_stride, heap + src + i * src_stride, bytes);
  }
}

/** Output row r, whose index over `dims` (row-major, `rank` axes) is (i_0, ..., i_{rank-1}),
 * gets the `len` words at src + Σ i_k·strides[k]: a transpose that keeps the last axis. */
void dp_gather_rows(int32_t* heap, int64_t src, int64_t dst, const int64_t* dims,
                    const int64_t* strides, int64_t rank, int64_t len) {
  int64_t rows = 1;
  for (int64_t k = 0; k < rank; k++) rows *= dims[k];
  const size_t bytes = (size_t)len * sizeof(int32_t);
#pragma omp parallel for schedule(static) if (rows * len > 65536)
  for (int64_t r = 0; r < rows; r++) {
    int64_t rest = r, from = src;
    for (int64_t k = rank - 1; k >= 0; k--) {
      from += (rest % dims[k]) * strides[k];
      rest /= dims[k];
    }
    memcpy(heap + dst + r * len, heap + from, bytes);
  }
}

/** y [n, 2h, 2w, c] ← x [n, h, w, c], each value copied to its 2×2 block (nearest ×2). */
void dp_upsample2(const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c) {
  const size_t bytes = (size_t)c * sizeof(float);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * h; r++) {
    const float* src = x + r * w * c;
    float* top = y + 2 * r * 2 * w * c;
    for (int64_t j = 0; j < w; j++) {
      memcpy(top + 2 * j * c, src + j * c, bytes);
      memcpy(top + (2 * j + 1) * c, src + j * c, bytes);
    }
    memcpy(top + 2 * w * c, top, 2 * w * bytes);
  }
}

/** dx [n, h, w, c] ← each 2×2 block of dy [n, 2h, 2w, c] summed as the gradient of the concat
 * route (lib/models/nn.ts) adds it: the two rows per column first, then the two columns. */
void dp_upsample2_grad(const float* dy, float* dx, int64_t n, int64_t h, int64_t w, int64_t c) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * h; r++) {
    const float* top = dy + 2 * r * 2 * w * c;
    const float* bottom = top + 2 * w * c;
    float* dst = dx + r * w * c;
    for (int64_t j = 0; j < w; j++) {
      const float *t0 = top + 2 * j * c, *t1 = t0 + c, *b0 = bottom + 2 * j * c, *b1 = b0 + c;
      for (int64_t ch = 0; ch < c; ch++) dst[j * c + ch] = (t0[ch] + b0[ch]) + (t1[ch] + b1[ch]);
    }
  }
}
