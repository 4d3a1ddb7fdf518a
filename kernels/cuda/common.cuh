// Shared device helpers for the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

namespace kvant::cuda {

constexpr int kWarp = 32;

// Programmatic dependent launch: every kernel is launched with launch() below, which lets
// it start while the kernel before it in the stream still runs, and every kernel calls
// grid_dependency_wait() before it touches memory that an earlier kernel writes: it
// returns once that kernel has finished and its writes are visible. A kernel lets the
// next one launch early by calling launch_dependents(): the next kernel's blocks become
// resident once every block of this one has made the call (or exited), and run what
// comes before their own wait (the GEMVs load their first weights there) while this one
// finishes. The GEMVs, the activation quantizers before them and the decode KV store
// (the attention copies settled KV rows before its wait) call it right after their wait
// (+10% q4 decode on the H100); kernels that prefill runs do not (called from every
// kernel it cost prefill 3-6%, and f16 decode 2-14%; from the split attention before
// the output projection, f16 decode -1% on the H100 and q4 decode -2% on the H200). No-op
// before sm_90.
__device__ __forceinline__ void grid_dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <class... Params, class... Args>
inline void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// Asynchronous global → shared copy of `bytes` (4, 8 or 16; both addresses aligned to it).
__device__ __forceinline__ void copy_async(void* smem, const void* gmem, int bytes) {
  const auto s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if (bytes == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
  else if (bytes == 8) asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem) : "memory");
  else asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void copy_async_wait() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
// Closes this thread's copies issued since the last commit into a group; copy_async_wait_groups<N>
// waits until at most the N most recent groups are still in flight.
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void copy_async_wait_groups() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

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

// E consecutive floats (E a multiple of 4: 16-byte loads and stores; the address
// 16-byte aligned) to and from registers.
template <int E>
__device__ __forceinline__ void load_floats(const float* p, float (&v)[E]) {
  static_assert(E % 4 == 0);
#pragma unroll
  for (int j = 0; j < E; j += 4) {
    const float4 f = *reinterpret_cast<const float4*>(p + j);
    v[j] = f.x, v[j + 1] = f.y, v[j + 2] = f.z, v[j + 3] = f.w;
  }
}
template <int E>
__device__ __forceinline__ void store_floats(const float (&v)[E], float* p) {
  static_assert(E % 4 == 0);
#pragma unroll
  for (int j = 0; j < E; j += 4) *reinterpret_cast<float4*>(p + j) = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
}

// The int8 records (kernels.h, act_bytes) of a k-long activation row spread over a warp
// E values per lane: the lane holds elements base + lane·E + [0, E) (base a multiple of
// 32; lanes without elements pass active false, in groups of whole blocks); every lane
// of the warp calls it. As the CPU's quantize_acts: scale max |x| / 127 per block of 32;
// NaN with zero quants when the block holds Inf or NaN; 0 where max |x| / 127 is
// subnormal (its inverse would overflow).
template <int E>
__device__ __forceinline__ void quantize_act_lanes(const float (&v)[E], int lane, bool active, int64_t base, int64_t k,
                                                   uint8_t* rec) {
  static_assert(E == 1 || E == 2 || E == 4 || E == 8);
  constexpr int kBlockLanes = 32 / E, kHalfLanes = 16 / E;
  bool nonfinite = false;
  float amax = 0.0f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    nonfinite = nonfinite || !isfinite(v[e]);
    amax = fmaxf(amax, fabsf(v[e]));
  }
#pragma unroll
  for (int o = kBlockLanes / 2; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    nonfinite = __shfl_xor_sync(0xffffffffu, static_cast<int>(nonfinite), o) != 0 || nonfinite;
  }
  const float amax_d = amax / 127.0f;
  const float d = nonfinite ? __int_as_float(0x7fc00000) : amax_d >= FLT_MIN ? amax_d : 0.0f;
  int8_t q[E], lo[E];
  int s = 0;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    q[e] = lo[e] = 0;
    if (!nonfinite) quantize_act(v[e], d > 0.0f ? 1.0f / d : 0.0f, &q[e], &lo[e]);
    s += 256 * q[e] + lo[e];
  }
#pragma unroll
  for (int o = kHalfLanes / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (!active) return;
  const int64_t i = base + static_cast<int64_t>(lane) * E;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    reinterpret_cast<int8_t*>(rec)[i + e] = q[e];
    reinterpret_cast<int8_t*>(rec + k)[i + e] = lo[e];
  }
  if (lane % kBlockLanes == 0) reinterpret_cast<float*>(rec + 2 * k)[i / 32] = d;
  if (lane % kHalfLanes == 0) reinterpret_cast<int32_t*>(rec + 2 * k + (k / 32) * 4)[i / 16] = s;
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

// What the launchers size their grids and shared memory by (the current device, read
// once).
struct DeviceLimits {
  int sms = 0, major = 0;
  size_t smem_optin = 0;
};

inline const DeviceLimits& device_limits() {
  static const DeviceLimits limits = [] {
    DeviceLimits l;
    int device = 0, v = 0;
    cudaGetDevice(&device);
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device) == cudaSuccess) l.sms = v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess) l.major = v;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess)
      l.smem_optin = static_cast<size_t>(v);
    return l;
  }();
  return limits;
}

}  // namespace kvant::cuda
