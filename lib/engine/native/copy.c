// Strided block copies inside the wasm heap for Concat and SplitV (lib/engine/wasm_kernels/
// copy.ts): the U-Net's skip connections join and split along channels, `blocks` rows of a few
// dozen to hundreds of words each, where JS pays a copyWithin call per row. One call here copies
// every row, the rows split over OpenMP's threads. Offsets and strides are in 4-byte words from
// `heap`; source and destination never overlap (distinct tensors).
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
