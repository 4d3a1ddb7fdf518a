// Matrix kernels: int8 activation quantization, decode GEMV for every weight type
// (bandwidth-bound: 16-byte loads, several in flight per thread, one warp per row), and
// the prefill GEMM (dequantize to f16, then cuBLAS on tensor cores).
#include <cublas_v2.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace kvant::cuda {

size_t act_bytes(int64_t k) {
  const auto b = static_cast<size_t>(k + (k / 32) * 4 + (k / 16) * 4);
  return (b + 15) / 16 * 16;
}

namespace {

struct ActView {
  const int8_t* q;
  const float* scale;  // per 32
  const int32_t* sum16;
};

__device__ __forceinline__ ActView act_view(const uint8_t* base, int64_t k, int64_t t, size_t bytes) {
  const uint8_t* rec = base + t * bytes;
  return {reinterpret_cast<const int8_t*>(rec), reinterpret_cast<const float*>(rec + k),
          reinterpret_cast<const int32_t*>(rec + k + (k / 32) * 4)};
}

// One warp per block of 32 values: scale = max|x| / 127, round to nearest even.
__global__ void quantize_acts_kernel(const float* x, int64_t k, uint8_t* out, size_t bytes, int64_t blocks) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = blockIdx.y;
  if (warp >= blocks) return;
  const float v = x[t * k + warp * 32 + lane];
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const float id = d > 0.0f ? 1.0f / d : 0.0f;
  const int q = __float2int_rn(v * id);
  uint8_t* rec = out + t * bytes;
  reinterpret_cast<int8_t*>(rec)[warp * 32 + lane] = static_cast<int8_t>(q);
  int s = q;
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);  // sums within each half-warp
  if (lane == 0) reinterpret_cast<float*>(rec + k)[warp] = d;
  if (lane % 16 == 0) reinterpret_cast<int32_t*>(rec + k + (k / 32) * 4)[warp * 2 + lane / 16] = s;
}

__device__ __forceinline__ uint4 load_nc(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// q4: a 16-byte chunk c of a row is half of group g = c / 2: bytes [32g + 16h, +16) hold
// elements 64g + 16h + [0, 16) in their low nibbles and 64g + 32 + 16h + [0, 16) in
// their high nibbles (FORMAT.md 6.2).
template <int NT>
__global__ void __launch_bounds__(128) gemv_q4_kernel(const uint8_t* w, int64_t rows, int64_t k, const uint8_t* xq,
                                                      size_t act_stride, float* y, int64_t ldy, bool accumulate) {
  const int64_t row = blockIdx.x * 4 + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const uint8_t* wrow = w + row * (k / 2);
  const __half* scales = reinterpret_cast<const __half*>(w + rows * (k / 2)) + row * (k / 32);
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  const int64_t chunks = k / 32;
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += kWarp) {
    const uint4 packed = load_nc(wrow + c * 16);
    const int64_t g = c / 2, h = c % 2;
    const float2 sw = __half22float2(*reinterpret_cast<const __half2*>(scales + 2 * g));
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    const int64_t lo_elem = 64 * g + 16 * h, hi_elem = lo_elem + 32;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const ActView x = act_view(xq, k, t, act_stride);
      const uint4 xl = *reinterpret_cast<const uint4*>(x.q + lo_elem);
      const uint4 xh = *reinterpret_cast<const uint4*>(x.q + hi_elem);
      const int xls[4] = {static_cast<int>(xl.x), static_cast<int>(xl.y), static_cast<int>(xl.z), static_cast<int>(xl.w)};
      const int xhs[4] = {static_cast<int>(xh.x), static_cast<int>(xh.y), static_cast<int>(xh.z), static_cast<int>(xh.w)};
      int dl = 0, dh = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        dl = __dp4a(static_cast<int>(words[j] & 0x0f0f0f0fu), xls[j], dl);
        dh = __dp4a(static_cast<int>((words[j] >> 4) & 0x0f0f0f0fu), xhs[j], dh);
      }
      dl -= 8 * x.sum16[lo_elem / 16];
      dh -= 8 * x.sum16[hi_elem / 16];
      acc[t] += static_cast<float>(dl) * sw.x * x.scale[2 * g] + static_cast<float>(dh) * sw.y * x.scale[2 * g + 1];
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + row] = accumulate ? y[t * ldy + row] + v : v;
  }
}

// q8: 16-byte chunk c holds elements [16c, 16c + 16) of block c / 2.
template <int NT>
__global__ void __launch_bounds__(128) gemv_q8_kernel(const uint8_t* w, int64_t rows, int64_t k, const uint8_t* xq,
                                                      size_t act_stride, float* y, int64_t ldy, bool accumulate) {
  const int64_t row = blockIdx.x * 4 + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const uint8_t* wrow = w + row * k;
  const __half* scales = reinterpret_cast<const __half*>(w + rows * k) + row * (k / 32);
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  const int64_t chunks = k / 16;
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += kWarp) {
    const uint4 q = load_nc(wrow + c * 16);
    const float sw = __half2float(scales[c / 2]);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const ActView x = act_view(xq, k, t, act_stride);
      const uint4 xv = *reinterpret_cast<const uint4*>(x.q + c * 16);
      int d = __dp4a(static_cast<int>(q.x), static_cast<int>(xv.x), 0);
      d = __dp4a(static_cast<int>(q.y), static_cast<int>(xv.y), d);
      d = __dp4a(static_cast<int>(q.z), static_cast<int>(xv.z), d);
      d = __dp4a(static_cast<int>(q.w), static_cast<int>(xv.w), d);
      acc[t] += static_cast<float>(d) * sw * x.scale[c / 2];
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + row] = accumulate ? y[t * ldy + row] + v : v;
  }
}

// Float weights: 16-byte chunks of 8 halves (f16 / bf16) or 4 floats.
template <DType D>
__device__ __forceinline__ void widen(uint4 v, float* out) {
  if constexpr (D == DType::f32) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  } else {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if constexpr (D == DType::f16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[j]));
        out[2 * j] = f.x;
        out[2 * j + 1] = f.y;
      } else {
        out[2 * j] = __uint_as_float(words[j] << 16);
        out[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
      }
    }
  }
}

template <DType D, int NT>
__global__ void __launch_bounds__(128) gemv_float_kernel(const uint8_t* w, int64_t rows, int64_t k, const float* x,
                                                         float* y, int64_t ldy, bool accumulate) {
  constexpr int kPer = D == DType::f32 ? 4 : 8;  // elements per 16 bytes
  const int64_t row = blockIdx.x * 4 + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= rows) return;
  const uint8_t* wrow = w + row * k * (D == DType::f32 ? 4 : 2);
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
  const int64_t full = k / kPer;
#pragma unroll 4
  for (int64_t c = lane; c < full; c += kWarp) {
    float wf[kPer];
    widen<D>(load_nc(wrow + c * 16), wf);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float* xr = x + t * k + c * kPer;
#pragma unroll
      for (int j = 0; j < kPer; ++j) acc[t] += wf[j] * xr[j];
    }
  }
  for (int64_t e = full * kPer + lane; e < k; e += kWarp) {  // rows whose length is not a multiple of kPer
    float wv;
    if constexpr (D == DType::f32) wv = reinterpret_cast<const float*>(wrow)[e];
    else if constexpr (D == DType::f16) wv = __half2float(reinterpret_cast<const __half*>(wrow)[e]);
    else wv = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(wrow)[e]);
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] += wv * x[t * k + e];
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float v = warp_sum(acc[t]);
    if (lane == 0) y[t * ldy + row] = accumulate ? y[t * ldy + row] + v : v;
  }
}

template <int NT>
void launch_gemv(const DeviceMatrix& w, const float* x, const uint8_t* xq, float* y, int64_t ldy, bool accumulate,
                 cudaStream_t s) {
  const unsigned grid = blocks_for(w.rows, 4);
  const size_t stride = act_bytes(w.cols);
  switch (w.dtype) {
    case DType::q4: gemv_q4_kernel<NT><<<grid, 128, 0, s>>>(w.data, w.rows, w.cols, xq, stride, y, ldy, accumulate); break;
    case DType::q8: gemv_q8_kernel<NT><<<grid, 128, 0, s>>>(w.data, w.rows, w.cols, xq, stride, y, ldy, accumulate); break;
    case DType::f16:
      gemv_float_kernel<DType::f16, NT><<<grid, 128, 0, s>>>(w.data, w.rows, w.cols, x, y, ldy, accumulate);
      break;
    case DType::bf16:
      gemv_float_kernel<DType::bf16, NT><<<grid, 128, 0, s>>>(w.data, w.rows, w.cols, x, y, ldy, accumulate);
      break;
    case DType::f32:
      gemv_float_kernel<DType::f32, NT><<<grid, 128, 0, s>>>(w.data, w.rows, w.cols, x, y, ldy, accumulate);
      break;
  }
}

// ---- dequantization for the GEMM ----------------------------------------------------

__global__ void dequantize_f16_kernel(DType dtype, const uint8_t* t, int64_t rows, int64_t cols, __half* out) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v;
    switch (dtype) {
      case DType::f32: v = reinterpret_cast<const float*>(t)[i]; break;
      case DType::q8:
        v = __half2float(reinterpret_cast<const __half*>(t + n)[i / 32]) * static_cast<float>(reinterpret_cast<const int8_t*>(t)[i]);
        break;
      case DType::q4: {
        const int64_t r = i / cols, e = i % cols;
        const uint8_t byte = t[r * cols / 2 + (e / 64) * 32 + (e % 32)];
        const int q = ((e % 64) < 32 ? (byte & 0x0f) : (byte >> 4)) - 8;
        v = __half2float(reinterpret_cast<const __half*>(t + n / 2)[i / 32]) * static_cast<float>(q);
        break;
      }
      default: v = 0.0f; break;
    }
    out[i] = __float2half_rn(v);
  }
}

__global__ void to_half_kernel(const float* x, int64_t n, __half* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = __float2half_rn(x[i]);
}

__global__ void to_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

unsigned grid_stride_blocks(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 16)); }

}  // namespace

void quantize_acts(const float* x, int64_t n, int64_t k, uint8_t* out, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t blocks = k / 32;
  const dim3 grid(blocks_for(blocks * kWarp, 256), static_cast<unsigned>(n));
  quantize_acts_kernel<<<grid, 256, 0, stream>>>(x, k, out, act_bytes(k), blocks);
}

void gemv(const DeviceMatrix& w, const float* x, const uint8_t* xq, int64_t n, float* y, int64_t ldy, bool accumulate,
          cudaStream_t stream) {
  switch (n) {
    case 1: launch_gemv<1>(w, x, xq, y, ldy, accumulate, stream); break;
    case 2: launch_gemv<2>(w, x, xq, y, ldy, accumulate, stream); break;
    case 3: launch_gemv<3>(w, x, xq, y, ldy, accumulate, stream); break;
    case 4: launch_gemv<4>(w, x, xq, y, ldy, accumulate, stream); break;
    case 5: launch_gemv<5>(w, x, xq, y, ldy, accumulate, stream); break;
    case 6: launch_gemv<6>(w, x, xq, y, ldy, accumulate, stream); break;
    case 7: launch_gemv<7>(w, x, xq, y, ldy, accumulate, stream); break;
    case 8: launch_gemv<8>(w, x, xq, y, ldy, accumulate, stream); break;
    default: break;
  }
}

void dequantize_to_f16(const DeviceMatrix& w, void* out, cudaStream_t stream) {
  const int64_t n = w.rows * w.cols;
  if (w.dtype == DType::f16) {
    cudaMemcpyAsync(out, w.data, static_cast<size_t>(n) * 2, cudaMemcpyDeviceToDevice, stream);
    return;
  }
  dequantize_f16_kernel<<<grid_stride_blocks(n), 256, 0, stream>>>(w.dtype, w.data, w.rows, w.cols,
                                                                    static_cast<__half*>(out));
}

Gemm::Gemm() {
  cublasHandle_t h = nullptr;
  if (cublasCreate(&h) == CUBLAS_STATUS_SUCCESS) {
    cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    handle_ = h;
  }
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(static_cast<cublasHandle_t>(handle_));
  cudaFree(weights_);
  cudaFree(acts_);
}

const char* Gemm::run(const DeviceMatrix& w, const float* x, int64_t n, float* y, int64_t ldy, bool accumulate,
                      cudaStream_t stream) {
  if (!handle_) return "cuBLAS could not be initialised";
  auto grow = [](void*& p, size_t& have, size_t need) {
    if (need <= have) return cudaSuccess;
    cudaFree(p);
    p = nullptr;
    have = 0;
    const cudaError_t e = cudaMalloc(&p, need);
    if (e == cudaSuccess) have = need;
    return e;
  };
  const bool bf16 = w.dtype == DType::bf16;
  const void* weights = w.data;
  if (w.dtype != DType::f16 && !bf16) {
    if (grow(weights_, weights_bytes_, static_cast<size_t>(w.rows * w.cols) * 2) != cudaSuccess)
      return "cannot allocate the dequantization buffer";
    dequantize_to_f16(w, weights_, stream);
    weights = weights_;
  }
  if (grow(acts_, acts_bytes_, static_cast<size_t>(n * w.cols) * 2) != cudaSuccess)
    return "cannot allocate the activation buffer";
  if (bf16) to_bf16_kernel<<<blocks_for(n * w.cols, 256), 256, 0, stream>>>(x, n * w.cols, static_cast<__nv_bfloat16*>(acts_));
  else to_half_kernel<<<blocks_for(n * w.cols, 256), 256, 0, stream>>>(x, n * w.cols, static_cast<__half*>(acts_));
  auto* h = static_cast<cublasHandle_t>(handle_);
  cublasSetStream(h, stream);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  // Row-major Y (n × rows) is column-major Yᵀ (rows × n) = W · Xᵀ.
  const cublasStatus_t st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows), static_cast<int>(n),
                                         static_cast<int>(w.cols), &alpha, weights, type, static_cast<int>(w.cols), acts_,
                                         type, static_cast<int>(w.cols), &beta, y, CUDA_R_32F, static_cast<int>(ldy),
                                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  return st == CUBLAS_STATUS_SUCCESS ? nullptr : "cublasGemmEx failed";
}

}  // namespace kvant::cuda
