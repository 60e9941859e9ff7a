// Strided block copies inside the wasm heap for Concat, SplitV and Transpose (lib/engine/
// wasm_kernels/copy.ts): the U-Net's skip connections join and split along channels, `blocks`
// rows of a few dozen to hundreds of words each, where JS pays a copyWithin call per row; the
// attention heads and DiT patches move rows of channels between axes. One call here copies every
// row, the rows split over OpenMP's threads. Offsets and strides are in 4-byte words from `heap`;
// source and destination never overlap (distinct tensors).
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
