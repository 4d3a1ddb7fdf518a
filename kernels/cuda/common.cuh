// Shared device helpers for the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kvant::cuda {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One activation value as the CPU's quantize_acts stores it (kernels/cpu/matmul.h):
// q = round(v / scale) and the residual in 1/256 steps, lo, clamped to ±127. The
// products are rounded on their own (__fmul_rn): no FMA contraction, so the bytes
// equal the CPU's.
__device__ __forceinline__ void quantize_act(float v, float inv_scale, int8_t* q, int8_t* lo) {
  const float t = __fmul_rn(v, inv_scale);
  const float r = rintf(t);
  *q = static_cast<int8_t>(r);
  *lo = static_cast<int8_t>(fminf(fmaxf(rintf(__fmul_rn(t - r, 256.0f)), -127.0f), 127.0f));
}

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result. `shared`
// holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + kWarp - 1) / kWarp;
  v = threadIdx.x < n_warps ? shared[threadIdx.x] : 0.0f;
  if (warp == 0) v = warp_sum(v);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace kvant::cuda
