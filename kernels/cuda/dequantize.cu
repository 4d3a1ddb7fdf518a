#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/dequantize.h"

namespace kvant::cuda {

namespace {

// One thread per 32-element block: the block's scale is loaded once.
__global__ void dequantize_q8_kernel(const int8_t* quants, const __half* scales, int64_t n_blocks, float* out) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= n_blocks) return;
  const float d = __half2float(scales[b]);
  const int4* q = reinterpret_cast<const int4*>(quants + b * 32);  // 16-byte aligned (FORMAT.md 6.3)
  #pragma unroll
  for (int v = 0; v < 2; ++v) {
    const int4 chunk = q[v];
    const int8_t* bytes = reinterpret_cast<const int8_t*>(&chunk);
    #pragma unroll
    for (int j = 0; j < 16; ++j) out[b * 32 + v * 16 + j] = d * static_cast<float>(bytes[j]);
  }
}

// One thread per group of 64 (32 bytes): low nibbles are elements 0..31, high 32..63.
__global__ void dequantize_q4_kernel(const uint8_t* packed, const __half* scales, int64_t n_groups, float* out) {
  const int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (g >= n_groups) return;
  const float d_lo = __half2float(scales[2 * g]), d_hi = __half2float(scales[2 * g + 1]);
  const int4* q = reinterpret_cast<const int4*>(packed + g * 32);
  #pragma unroll
  for (int v = 0; v < 2; ++v) {
    const int4 chunk = q[v];
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&chunk);
    #pragma unroll
    for (int j = 0; j < 16; ++j) {
      out[g * 64 + v * 16 + j] = d_lo * static_cast<float>((bytes[j] & 0x0f) - 8);
      out[g * 64 + 32 + v * 16 + j] = d_hi * static_cast<float>((bytes[j] >> 4) - 8);
    }
  }
}

template <class T>
__global__ void widen_kernel(const T* in, int64_t n, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  if constexpr (sizeof(T) == 4) out[i] = in[i];
  else if constexpr (std::is_same_v<T, __half>) out[i] = __half2float(in[i]);
  else out[i] = __bfloat162float(in[i]);
}

unsigned grid_for(int64_t n, unsigned threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace

cudaError_t dequantize_to_f32(DType dtype, const void* tensor, int64_t rows, int64_t cols, float* out,
                              cudaStream_t stream) {
  const int64_t n = rows * cols;
  constexpr unsigned kThreads = 256;
  const auto* bytes = static_cast<const uint8_t*>(tensor);
  const auto* scales = reinterpret_cast<const __half*>(
      bytes + quant_region_bytes(dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)));
  switch (dtype) {
    case DType::f32:
      widen_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<const float*>(tensor), n, out);
      break;
    case DType::f16:
      widen_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<const __half*>(tensor), n, out);
      break;
    case DType::bf16:
      widen_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(tensor), n, out);
      break;
    case DType::q8:
      dequantize_q8_kernel<<<grid_for(n / 32, kThreads), kThreads, 0, stream>>>(
          static_cast<const int8_t*>(tensor), scales, n / 32, out);
      break;
    case DType::q4:
      dequantize_q4_kernel<<<grid_for(n / 64, kThreads), kThreads, 0, stream>>>(bytes, scales, n / 64, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace kvant::cuda
