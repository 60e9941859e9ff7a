// Column sums for the wasm Sum kernel (lib/engine/wasm_kernels/reduce.ts): bias gradients, dy
// [N, H, W, C] summed to [C]. In double, in blocks of SUM_ROWS rows whose partial sums are then
// added in block order, exactly as the JS loop there, so both give the same bits for any thread
// count; the blocks split over OpenMP's threads (a U-Net step sums ~40 gradients of up to 13 MB,
// 14 ms on one thread). OpenBLAS's sgemm against ones, which this replaced, paid for waking its
// own thread pool between oneDNN's calls, up to 57 ms a call inside a U-Net step for 0.7 ms of work.
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

enum { SUM_ROWS = 1024 };

/** acc[j] = Σ_i x[i·inner + j] for i < rows, in double, rows in order. */
CLONES static void block_sums(const float* x, int64_t rows, int64_t inner, double* acc) {
  for (int64_t j = 0; j < inner; j++) acc[j] = 0;
  for (int64_t i = 0; i < rows; i++) {
    const float* xr = x + i * inner;
    for (int64_t j = 0; j < inner; j++) acc[j] += xr[j];
  }
}

/** out[j] = Σ_i x[i·inner + j] for i < rows. Returns 1 when out of memory (nothing written). */
int32_t dp_column_sums(const float* x, int64_t rows, int64_t inner, float* out) {
  const int64_t blocks = (rows + SUM_ROWS - 1) / SUM_ROWS;
  double* part = malloc((size_t)(blocks > 0 ? blocks : 1) * (size_t)inner * sizeof(double));
  if (!part) return 1;
#pragma omp parallel for schedule(static) if (rows * inner > 65536)
  for (int64_t b = 0; b < blocks; b++) {
    const int64_t r0 = b * SUM_ROWS, n = rows - r0 < SUM_ROWS ? rows - r0 : SUM_ROWS;
    block_sums(x + r0 * inner, n, inner, part + b * inner);
  }
  for (int64_t j = 0; j < inner; j++) {
    double s = 0;
    for (int64_t b = 0; b < blocks; b++) s += part[b * inner + j];
    out[j] = (float)s;
  }
  free(part);
  return 0;
}
