// Column sums for the wasm Sum kernel (lib/engine/wasm_kernels/reduce.ts): bias gradients, dy
// [N, H, W, C] summed to [C]. In double, rows in order, exactly as the JS loop there, so both
// give the same bits; single-threaded (memory-bound, and no thread hand-off: OpenBLAS's sgemm
// against ones, which this replaces, paid for waking its own thread pool between oneDNN's calls,
// up to 57 ms a call inside a U-Net step for 0.7 ms of work).
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

/** out[j] = Σ_i x[i·inner + j] for i < rows. Returns 1 when out of memory (nothing written). */
CLONES int32_t dp_column_sums(const float* x, int64_t rows, int64_t inner, float* out) {
  double* acc = calloc((size_t)inner, sizeof(double));
  if (!acc) return 1;
  for (int64_t i = 0; i < rows; i++) {
    const float* xr = x + i * inner;
    for (int64_t j = 0; j < inner; j++) acc[j] += xr[j];
  }
  for (int64_t j = 0; j < inner; j++) out[j] = (float)acc[j];
  free(acc);
  return 0;
}
