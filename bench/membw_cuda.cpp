#include <cuda_runtime.h>

#include <algorithm>

#include "bench/membw.h"

namespace kvant::bench {

double measure_gpu_copy_bandwidth(double buffer_gb) {
  const auto bytes = static_cast<size_t>(buffer_gb * 1e9);
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaFree(a);
    return 0;
  }
  cudaMemset(a, 1, bytes);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  double best = 0;
  for (int i = 0; i < 6; ++i) {
    cudaEventRecord(start);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (i > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9);  // read + write
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(a);
  cudaFree(b);
  return best;
}

}  // namespace kvant::bench
