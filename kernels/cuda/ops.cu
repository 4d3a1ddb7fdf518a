// Row and elementwise kernels: embedding lookup, norms, RoPE, activations, residuals.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace kvant::cuda {

namespace {

// Element e of row r of a [rows, cols] tensor in its .kvant layout.
__device__ __forceinline__ float tensor_element(DType dtype, const uint8_t* t, int64_t rows, int64_t cols, int64_t r,
                                                int64_t e) {
  switch (dtype) {
    case DType::f32: return reinterpret_cast<const float*>(t)[r * cols + e];
    case DType::f16: return __half2float(reinterpret_cast<const __half*>(t)[r * cols + e]);
    case DType::bf16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(t)[r * cols + e]);
    case DType::q8: {
      const auto* scales = reinterpret_cast<const __half*>(t + rows * cols);
      return __half2float(scales[(r * cols + e) / 32]) * static_cast<float>(reinterpret_cast<const int8_t*>(t)[r * cols + e]);
    }
    case DType::q4: {
      const auto* scales = reinterpret_cast<const __half*>(t + rows * cols / 2);
      const uint8_t byte = t[r * cols / 2 + (e / 64) * 32 + (e % 32)];
      const int q = ((e % 64) < 32 ? (byte & 0x0f) : (byte >> 4)) - 8;
      return __half2float(scales[(r * cols + e) / 32]) * static_cast<float>(q);
    }
  }
  return 0.0f;
}

__global__ void embed_kernel(DeviceMatrix table, DeviceMatrix pos_table, bool has_pos, const int32_t* tokens,
                             const int32_t* positions, int64_t n, float* out) {
  grid_dependency_wait();
  const int64_t t = blockIdx.y;
  const int64_t dim = table.cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < dim;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = tensor_element(table.dtype, table.data, table.rows, dim, tokens[t], e);
    if (has_pos) v += tensor_element(pos_table.dtype, pos_table.data, pos_table.rows, dim, positions[t], e);
    out[t * dim + e] = v;
  }
}

__global__ void select_rows_kernel(const float* in, const int32_t* rows, int64_t width, float* out) {
  grid_dependency_wait();
  const int64_t r = blockIdx.y;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[r * width + e] = in[rows[r] * width + e];
}

// One block per row.
__global__ void __launch_bounds__(1024) rms_norm_kernel(const float* x, const float* w, int64_t n, float eps, float* out) {
  grid_dependency_wait();
  __shared__ float shared[32];
  const float* row = x + blockIdx.x * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += row[i] * row[i];
  ss = block_sum(ss, shared);
  const float inv = rsqrtf(ss / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = row[i] * inv * w[i];
}

// rms_norm, then the int8 records of matmul.cu's quantize_acts from the same values.
// Thread i holds elements [E·i, E·i + E) in registers (a warp 32·E consecutive values,
// whole blocks of 32), so the records take one shuffle tree per warp (with a value per
// lane and strided, 4 per thread, RMSNorm+quantize took 6.4 us on the H100 at n = 4096).
constexpr int kNormThreads = 1024;
template <int E>
__global__ void __launch_bounds__(kNormThreads) rms_norm_quantize_kernel(const float* x, const float* w, int64_t n,
                                                                         float eps, float* out, uint8_t* q,
                                                                         size_t q_stride) {
  const int64_t first = static_cast<int64_t>(threadIdx.x) * E;
  const bool active = first < n;  // n % 32 == 0: lanes past the end leave in whole blocks
  float wv[E] = {}, v[E];
  if (active) load_floats<E>(w + first, wv);  // before the wait: nothing writes the norm weights
  grid_dependency_wait();
  launch_dependents();
  __shared__ float shared[32];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < E; ++j) v[j] = 0.0f;
  if (active) load_floats<E>(x + blockIdx.x * n + first, v);
#pragma unroll
  for (int j = 0; j < E; ++j) ss += v[j] * v[j];
  ss = block_sum(ss, shared);
  const float inv = rsqrtf(ss / static_cast<float>(n) + eps);
#pragma unroll
  for (int j = 0; j < E; ++j) v[j] = v[j] * inv * wv[j];
  if (active) store_floats<E>(v, out + blockIdx.x * n + first);
  if (!q) return;  // rms_norm alone (prefill): one read of the row, one write
  const int lane = threadIdx.x % kWarp;
  quantize_act_lanes<E>(v, lane, active, first - static_cast<int64_t>(lane) * E, n, q + blockIdx.x * q_stride);
}

__global__ void layer_norm_kernel(const float* x, const float* w, const float* b, int64_t n, float eps, float* out) {
  grid_dependency_wait();
  __shared__ float shared[32];
  const float* row = x + blockIdx.x * n;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += row[i];
  const float mean = block_sum(s, shared) / static_cast<float>(n);
  float v = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += (row[i] - mean) * (row[i] - mean);
  const float inv = rsqrtf(block_sum(v, shared) / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    out[blockIdx.x * n + i] = (row[i] - mean) * inv * w[i] + (b ? b[i] : 0.0f);
}

// One thread per rotated pair; pairs i and i + head_dim/2 of each head.
__global__ void rope_kernel(const float* x, float* out, int64_t n_heads, int64_t head_dim, const int32_t* positions,
                            const float* inv_freq) {
  grid_dependency_wait();
  const int64_t t = blockIdx.y;
  const int64_t half = head_dim / 2;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= n_heads * half) return;
  const int64_t h = idx / half, i = idx % half;
  float s, c;
  sincosf(static_cast<float>(positions[t]) * inv_freq[i], &s, &c);
  const float* v = x + (t * n_heads + h) * head_dim;
  float* o = out + (t * n_heads + h) * head_dim;
  const float a = v[i], b = v[i + half];
  o[i] = a * c - b * s;
  o[i + half] = b * c + a * s;
}

__global__ void add_kernel(const float* a, const float* b, int64_t n, float* out) {
  grid_dependency_wait();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}

__global__ void silu_mul_kernel(const float* g, const float* u, int64_t n, float* out) {
  grid_dependency_wait();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void gelu_kernel(const float* x, int64_t n, bool tanh_approx, float* out) {
  grid_dependency_wait();
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  out[i] = tanh_approx ? 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))
                       : 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t rows, int64_t ldy) {
  grid_dependency_wait();
  const int64_t t = blockIdx.y;
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r < rows) y[t * ldy + r] += bias[r];
}

// ---- greedy decoding ------------------------------------------------------------------------

// Blocks of 256 threads with 8 loads in flight each: 32,000 logits in 16 blocks and one
// pass; at most 32 blocks, whose candidates the last block to finish reduces in one warp.
constexpr int kGreedyThreads = 256, kGreedyBatch = 8, kGreedyMaxBlocks = 32;

struct Best {
  float v;
  int64_t at;  // n: nothing seen (every value so far NaN)
};

// The larger of two candidates, the first index on a tie; NaN never gets in (v > NaN is false).
__device__ __forceinline__ Best better(Best a, Best b) { return b.v > a.v || (b.v == a.v && b.at < a.at) ? b : a; }

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    b = better(b, {__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.at, o)});
  return b;
}

// The work area: each block's candidate, and the count of blocks done (kept zero).
struct GreedyWork {
  float v[kGreedyMaxBlocks];
  long long at[kGreedyMaxBlocks];
  unsigned done;
};

__global__ void __launch_bounds__(kGreedyThreads) greedy_next_kernel(const float* __restrict__ logits, int64_t n,
                                                                     int32_t* token, int32_t* position,
                                                                     int32_t* __restrict__ report, int report_slots,
                                                                     float* __restrict__ keep, GreedyWork* work) {
  grid_dependency_wait();
  Best best{-INFINITY, n};
  const int pos = *position;  // read by every block before the last one writes it
  float* kept = keep ? keep + (pos & 1) * n : nullptr;
  const int64_t stride = int64_t{gridDim.x} * kGreedyThreads;
  for (int64_t base = blockIdx.x * int64_t{kGreedyThreads} + threadIdx.x; base < n; base += kGreedyBatch * stride) {
    float v[kGreedyBatch];
#pragma unroll
    for (int j = 0; j < kGreedyBatch; ++j) {
      const int64_t i = base + j * stride;
      v[j] = i < n ? logits[i] : NAN;
    }
#pragma unroll
    for (int j = 0; j < kGreedyBatch; ++j) {
      const int64_t i = base + j * stride;
      if (i < n && kept) kept[i] = v[j];
      if (v[j] > best.v || (v[j] == best.v && i < best.at)) best = {v[j], i};
    }
  }
  best = warp_best(best);
  __shared__ Best warps[kGreedyThreads / kWarp];
  __shared__ bool last;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warps[warp] = best;
  __syncthreads();
  if (warp != 0) return;
  best = warp_best(lane < kGreedyThreads / kWarp ? warps[lane] : Best{-INFINITY, n});
  if (lane == 0) {
    work->v[blockIdx.x] = best.v;
    work->at[blockIdx.x] = best.at;
    __threadfence();
    last = atomicAdd(&work->done, 1u) == gridDim.x - 1;
  }
  __syncwarp();
  if (!last) return;
  __threadfence();
  const volatile GreedyWork* w = work;
  best = warp_best(lane < static_cast<int>(gridDim.x) ? Best{w->v[lane], w->at[lane]} : Best{-INFINITY, n});
  if (lane == 0) {
    const auto t = static_cast<int32_t>(best.at == n ? 0 : best.at);
    *token = t;
    *position = pos + 1;
    report[pos % report_slots] = t;
    work->done = 0;
  }
}

dim3 row_grid(int64_t width, int64_t n, int threads) {
  return dim3(static_cast<unsigned>(std::min<int64_t>((width + threads - 1) / threads, 65535)), static_cast<unsigned>(n));
}

}  // namespace

void embed(const DeviceMatrix& table, const DeviceMatrix* positions_table, const int32_t* tokens,
           const int32_t* positions, int64_t n, float* out, cudaStream_t stream) {
  if (n == 0) return;
  launch(embed_kernel, row_grid(table.cols, n, 256), 256, 0, stream, table, positions_table ? *positions_table : DeviceMatrix{},
                                                                  positions_table != nullptr, tokens, positions, n, out);
}

void select_rows(const float* in, const int32_t* rows, int64_t n, int64_t width, float* out, cudaStream_t stream) {
  if (n == 0) return;
  launch(select_rows_kernel, row_grid(width, n, 256), 256, 0, stream, in, rows, width, out);
}

void rms_norm(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* out, cudaStream_t stream) {
  rms_norm_quantize(x, w, rows, n, eps, out, nullptr, stream);
}

void rms_norm_quantize(const float* x, const float* w, int64_t rows, int64_t n, float eps, float* out, uint8_t* q,
                       cudaStream_t stream) {
  if (rows == 0) return;
  // Rows of whole blocks of 32 that fit the register cache are read once (the loop
  // kernel reads a row twice: 15 us for 512 rows of 4096 on the H100).
  const auto threads = [&](int e) { return static_cast<unsigned>((n / e + kWarp - 1) / kWarp * kWarp); };
  if (n % 32 == 0 && n <= int64_t{kNormThreads} * 4)
    launch(rms_norm_quantize_kernel<4>, static_cast<unsigned>(rows), threads(4), 0, stream, x, w, n, eps, out, q, act_bytes(n));
  else if (n % 32 == 0 && n <= int64_t{kNormThreads} * 8)
    launch(rms_norm_quantize_kernel<8>, static_cast<unsigned>(rows), threads(8), 0, stream, x, w, n, eps, out, q, act_bytes(n));
  else {  // wider than the register cache, or not whole blocks (then q is null: records need them)
    launch(rms_norm_kernel, static_cast<unsigned>(rows), rows <= kMaxGemvTokens ? 1024 : 256, 0, stream, x, w, n, eps, out);
    if (q) quantize_acts(out, rows, n, q, stream);
  }
}

void rms_norm_quantize(const RmsNormIn& norm, int64_t rows, int64_t n, cudaStream_t stream) {
  rms_norm_quantize(norm.in, norm.w, rows, n, norm.eps, norm.out, norm.q, stream);
}

void layer_norm(const float* x, const float* w, const float* b, int64_t rows, int64_t n, float eps, float* out,
                cudaStream_t stream) {
  if (rows == 0) return;
  launch(layer_norm_kernel, static_cast<unsigned>(rows), 256, 0, stream, x, w, b, n, eps, out);
}

void rope(const float* x, float* out, int64_t n_tokens, int64_t n_heads, int64_t head_dim, const int32_t* positions,
          const float* inv_freq, cudaStream_t stream) {
  if (n_tokens == 0) return;
  launch(rope_kernel, row_grid(n_heads * head_dim / 2, n_tokens, 128), 128, 0, stream, x, out, n_heads, head_dim, positions,
                                                                                   inv_freq);
}

void add(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream) {
  if (n > 0) launch(add_kernel, blocks_for(n, 256), 256, 0, stream, a, b, n, out);
}

void silu_mul(const float* g, const float* u, int64_t n, float* out, cudaStream_t stream) {
  if (n > 0) launch(silu_mul_kernel, blocks_for(n, 256), 256, 0, stream, g, u, n, out);
}

void gelu(const float* x, int64_t n, bool tanh_approximation, float* out, cudaStream_t stream) {
  if (n > 0) launch(gelu_kernel, blocks_for(n, 256), 256, 0, stream, x, n, tanh_approximation, out);
}

void add_bias(float* y, const float* bias, int64_t rows, int64_t n, int64_t ldy, cudaStream_t stream) {
  if (n > 0) launch(add_bias_kernel, row_grid(rows, n, 256), 256, 0, stream, y, bias, rows, ldy);
}

void copy_rows(const float* x, float* y, int64_t width, int64_t n, cudaStream_t stream) {
  if (n > 0) cudaMemcpyAsync(y, x, static_cast<size_t>(width * n) * 4, cudaMemcpyDeviceToDevice, stream);
}

size_t greedy_work_bytes() { return sizeof(GreedyWork); }

void greedy_next(const float* logits, int64_t n, int32_t* token, int32_t* position, int32_t* report, int report_slots,
                 float* keep, void* work, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(
      std::clamp<int64_t>((n + kGreedyThreads * kGreedyBatch - 1) / (kGreedyThreads * kGreedyBatch), 1, kGreedyMaxBlocks));
  launch(greedy_next_kernel, blocks, kGreedyThreads, 0, stream, logits, n, token, position, report, report_slots, keep,
         static_cast<GreedyWork*>(work));
}

}  // namespace kvant::cuda
