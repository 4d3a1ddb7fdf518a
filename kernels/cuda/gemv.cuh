// The GEMV kernels' shared arithmetic: how a lane reads 16-byte chunks of weight rows
// (from global or shared memory) and multiplies them with the staged activations.
// Included by matmul.cu (the register-streaming GEMV) and gemv_pipelined.cu (the
// bulk-copy pipeline); everything is internal to those files.
#pragma once

#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace kvant::cuda {
namespace {

struct ActView {
  const int8_t* q;
  const int8_t* lo;
  const float* scale;  // per 32
  const int32_t* sum16;
};

__device__ __forceinline__ ActView act_view(const uint8_t* base, int64_t k, int64_t t, size_t bytes) {
  const uint8_t* rec = base + t * bytes;
  return {reinterpret_cast<const int8_t*>(rec), reinterpret_cast<const int8_t*>(rec + k),
          reinterpret_cast<const float*>(rec + 2 * k), reinterpret_cast<const int32_t*>(rec + 2 * k + (k / 32) * 4)};
}


__device__ __forceinline__ uint4 load_stream(const void* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }

// R rows, each from any matrix of the same dtype and length: the quants (or values) of
// row i at w[i], its f16 block scales at s[i] (q8/q4).
template <int R>
struct RowSet {
  const uint8_t* w[R];
  const __half* s[R];
};

__host__ __device__ __forceinline__ int64_t row_bytes(DType d, int64_t k) {
  return d == DType::q4 ? k / 2 : d == DType::q8 ? k : d == DType::f32 ? 4 * k : 2 * k;
}

// Row r of a [rows, k] matrix at base, in the .kvant layout (scales after all quants).
template <DType D>
__device__ __forceinline__ void set_row(const uint8_t* base, int64_t rows, int64_t k, int64_t r, const uint8_t** w,
                                        const __half** s) {
  *w = base + r * row_bytes(D, k);
  *s = reinterpret_cast<const __half*>(base + rows * row_bytes(D, k)) + r * (k / 32);
}

// Values per 16-byte chunk of a row: q4 32, q8 16, f16/bf16 8, f32 4.
template <DType D>
constexpr int kChunkValues = D == DType::q4 ? 32 : D == DType::q8 ? 16 : D == DType::f32 ? 4 : 8;

// Whole 16-byte chunks per row.
template <DType D>
__device__ __forceinline__ int chunk_count(int64_t k) {
  return static_cast<int>(k / kChunkValues<D>);
}

// What a lane reads of the weights for chunk c of R rows: the 16 bytes and the raw f16
// scale bits (q4: the half2 of its two 16-value runs; q8: the chunk's block scale in the
// low half). Raw bits keep the batches' registers few.
template <int R>
struct Chunk {
  uint4 w[R];
  uint32_t s[R];
};

// kShared: the rows are in shared memory (gemv_pipelined.cu), read with plain loads.
template <DType D, int R, bool kShared = false>
__device__ __forceinline__ Chunk<R> load_chunk(const RowSet<R>& rs, int c) {
  Chunk<R> ch;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    if constexpr (kShared) ch.w[i] = *reinterpret_cast<const uint4*>(rs.w[i] + c * 16);
    else ch.w[i] = load_stream(rs.w[i] + static_cast<int64_t>(c) * 16);
    if constexpr (D == DType::q4) ch.s[i] = *reinterpret_cast<const uint32_t*>(rs.s[i] + 2 * (c / 2));
    else if constexpr (D == DType::q8) ch.s[i] = __half_as_ushort(rs.s[i][c / 2]);
  }
  return ch;
}

// Where a GEMV reads its activations: NT tokens' int8 records act_stride bytes apart at
// xq (q8/q4 weights; quantize_acts), or their f32 rows, k floats apart, at x (float
// weights). In global memory, or staged in shared memory by stage_acts. With norm_w (q8
// on the copy pipeline): the records are not made yet, and each block makes them itself
// from the rows at norm_x, RMSNorm'd with weight norm_w (stage_normed_acts).
struct Acts {
  const uint8_t* xq;
  size_t act_stride;
  const float* x;
  const float* norm_x = nullptr;
  const float* norm_w = nullptr;
  float eps = 0.0f;
};

template <DType D>
constexpr bool kIntActs = D == DType::q4 || D == DType::q8;

// Bytes of NT tokens' activations; the GEMVs stage them in shared memory when this is
// at most kMaxStaged and a multiple of 16 (the host decides: staged_bytes).
template <DType D>
__host__ __device__ __forceinline__ size_t acts_bytes(int64_t k, int64_t nt, size_t act_stride) {
  return static_cast<size_t>(nt) * (kIntActs<D> ? act_stride : static_cast<size_t>(k) * 4);
}
constexpr size_t kMaxStaged = 48 * 1024;

// The records of NT tokens' RMSNorm(x) · w made by kWarps warps of the block (threads
// [0, 32·kWarps), `sync` their barrier) in shared memory, with the arithmetic of
// rms_norm_quantize_kernel: each block reads the k floats of a token twice (the second
// time from L1), and the norm kernel and its launch boundary are gone. The q8 pipelined
// GEMVs do it while their producer's first copies are in flight: q8 decode on the H100
// 304.4 -> 310.5 tok/s (+2.0%, measured with the pinned logits of the same change). The
// q4 register-streaming GEMVs lost 15% with it (q/k/v 11.5 -> 22.1 us, gate·up 18.4 ->
// 26.5): there nothing else is in flight while the block stages, and this loop's loads
// (likely) go out one L2 round trip at a time; they keep the norm kernel. A warp's
// loads for the records go out kSpans spans at a time, before their arithmetic (one by
// one, each span waited on L2: q8 decode on the H100 321.09 -> 322.96 tok/s, +0.58%).
// k a multiple of 32 (whole record blocks); rows 16-byte aligned.
template <int NT, int kWarps, class Sync>
__device__ __forceinline__ Acts stage_normed_acts(const Acts& a, int64_t k, uint8_t* smem, Sync sync) {
  constexpr int kE = 4, kSpan = kWarp * kE;  // a warp normalizes 128 values a span
  constexpr int kSpans = 4;
  // The warps' sums of squares, in the records' space until the second barrier (no static
  // shared memory: the pipelined kernels opt in to all of it as dynamic).
  auto* partial = reinterpret_cast<float(*)[kWarps]>(smem);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float ss = 0.0f;
    for (int64_t i = threadIdx.x * int64_t{kE}; i < k; i += kWarps * kSpan) {
      float v[kE];
      load_floats<kE>(a.norm_x + t * k + i, v);
#pragma unroll
      for (int j = 0; j < kE; ++j) ss += v[j] * v[j];
    }
    ss = warp_sum(ss);
    if (lane == 0) partial[t][warp] = ss;
  }
  sync();
  float inv[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float ss = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) ss += partial[t][w];
    inv[t] = rsqrtf(ss / static_cast<float>(k) + a.eps);
  }
  sync();
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    for (int64_t first = warp * int64_t{kSpan}; first < k; first += kSpans * kWarps * kSpan) {
      float v[kSpans][kE] = {}, w[kSpans][kE] = {};
#pragma unroll
      for (int u = 0; u < kSpans; ++u) {
        const int64_t e = first + u * int64_t{kWarps * kSpan} + lane * kE;
        if (e < k) {
          load_floats<kE>(a.norm_x + t * k + e, v[u]);
          load_floats<kE>(a.norm_w + e, w[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kSpans; ++u) {
        const int64_t base = first + u * int64_t{kWarps * kSpan};
        if (base >= k) break;  // the same for the whole warp
        const bool active = base + lane * kE < k;  // k % 32 == 0: lanes past the end leave in whole blocks
#pragma unroll
        for (int j = 0; j < kE; ++j) v[u][j] = v[u][j] * inv[t] * w[u][j];
        quantize_act_lanes<kE>(v[u], lane, active, base, k, smem + t * a.act_stride);
      }
    }
  }
  sync();
  return {smem, a.act_stride, nullptr};
}

// The whole block copies the activations into shared memory (cp.async, all in flight
// at once) and waits for them: the dot products then read them from shared memory, not
// through L1 from L2 (where the loads of each batch waited on L2 latency).
template <DType D, int NT>
__device__ __forceinline__ Acts stage_acts(const Acts& a, int64_t k, uint8_t* smem) {
  const auto* src = kIntActs<D> ? a.xq : reinterpret_cast<const uint8_t*>(a.x);
  const size_t bytes = acts_bytes<D>(k, NT, a.act_stride);
  for (size_t i = threadIdx.x * size_t{16}; i < bytes; i += blockDim.x * size_t{16}) copy_async(smem + i, src + i, 16);
  copy_async_wait();
  __syncthreads();
  if constexpr (kIntActs<D>) return {smem, a.act_stride, nullptr};
  else return {nullptr, 0, reinterpret_cast<const float*>(smem)};
}

// One token's activations for weight chunk c: what a q4 or q8 chunk is multiplied with.
// q4: the two 16-value runs' quants (q) and residuals (r), x ≈ scale · (q + r/256), the
// runs' 8 · Σ (256q + r) (for the nibbles' +8) and scales / 256. q8: the chunk's 16
// quants and residuals and its block's scale / 256.
template <DType D>
struct ActChunk {
  uint4 ql, qh, rl, rh;
  int sl, sh;
  float dl, dh;
};

template <DType D>
__device__ __forceinline__ ActChunk<D> load_act_chunk(const Acts& a, int c, int64_t k, int t) {
  const ActView xa = act_view(a.xq, k, t, a.act_stride);
  ActChunk<D> x{};
  if constexpr (D == DType::q4) {
    const int g = c / 2, h = c % 2;
    const int lo_elem = 64 * g + 16 * h, hi_elem = lo_elem + 32;
    x.ql = *reinterpret_cast<const uint4*>(xa.q + lo_elem);
    x.qh = *reinterpret_cast<const uint4*>(xa.q + hi_elem);
    x.rl = *reinterpret_cast<const uint4*>(xa.lo + lo_elem);
    x.rh = *reinterpret_cast<const uint4*>(xa.lo + hi_elem);
    x.sl = 8 * xa.sum16[lo_elem / 16];
    x.sh = 8 * xa.sum16[hi_elem / 16];
    x.dl = xa.scale[2 * g] * (1.0f / 256.0f);
    x.dh = xa.scale[2 * g + 1] * (1.0f / 256.0f);
  } else {
    x.ql = *reinterpret_cast<const uint4*>(xa.q + c * 16);
    x.rl = *reinterpret_cast<const uint4*>(xa.lo + c * 16);
    x.dl = xa.scale[c / 2] * (1.0f / 256.0f);
  }
  return x;
}

// acc[i][t] += chunk ch of row i · token t's activations x (q4/q8 weights).
template <DType D, int R, int NT>
__device__ __forceinline__ void dot_acts(const Chunk<R>& ch, const ActChunk<D>& x, int t, float (*acc)[NT]) {
  if constexpr (D == DType::q4) {
    const int xls[4] = {static_cast<int>(x.ql.x), static_cast<int>(x.ql.y), static_cast<int>(x.ql.z), static_cast<int>(x.ql.w)};
    const int xhs[4] = {static_cast<int>(x.qh.x), static_cast<int>(x.qh.y), static_cast<int>(x.qh.z), static_cast<int>(x.qh.w)};
    const int rls[4] = {static_cast<int>(x.rl.x), static_cast<int>(x.rl.y), static_cast<int>(x.rl.z), static_cast<int>(x.rl.w)};
    const int rhs[4] = {static_cast<int>(x.rh.x), static_cast<int>(x.rh.y), static_cast<int>(x.rh.z), static_cast<int>(x.rh.w)};
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const uint32_t words[4] = {ch.w[i].x, ch.w[i].y, ch.w[i].z, ch.w[i].w};
      int dl = 0, dh = 0, el = 0, eh = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int nl = static_cast<int>(words[j] & 0x0f0f0f0fu), nh = static_cast<int>((words[j] >> 4) & 0x0f0f0f0fu);
        dl = __dp4a(nl, xls[j], dl);
        dh = __dp4a(nh, xhs[j], dh);
        el = __dp4a(nl, rls[j], el);
        eh = __dp4a(nh, rhs[j], eh);
      }
      const float2 sw = __half22float2(*reinterpret_cast<const __half2*>(&ch.s[i]));
      acc[i][t] += static_cast<float>(256 * dl + el - x.sl) * sw.x * x.dl +
                   static_cast<float>(256 * dh + eh - x.sh) * sw.y * x.dh;
    }
  } else {
#pragma unroll
    for (int i = 0; i < R; ++i) {  // 256 · Σ w·q + Σ w·lo
      const uint4 q = ch.w[i];
      int d = __dp4a(static_cast<int>(q.x), static_cast<int>(x.ql.x), 0);
      d = __dp4a(static_cast<int>(q.y), static_cast<int>(x.ql.y), d);
      d = __dp4a(static_cast<int>(q.z), static_cast<int>(x.ql.z), d);
      d = __dp4a(static_cast<int>(q.w), static_cast<int>(x.ql.w), d) * 256;
      d = __dp4a(static_cast<int>(q.x), static_cast<int>(x.rl.x), d);
      d = __dp4a(static_cast<int>(q.y), static_cast<int>(x.rl.y), d);
      d = __dp4a(static_cast<int>(q.z), static_cast<int>(x.rl.z), d);
      d = __dp4a(static_cast<int>(q.w), static_cast<int>(x.rl.w), d);
      acc[i][t] += static_cast<float>(d) * half_bits_to_float(static_cast<uint16_t>(ch.s[i])) * x.dl;
    }
  }
}

// acc[i][t] += chunk c of row i · the same elements of token t's activations.
template <DType D, int R, int NT>
__device__ __forceinline__ void dot_chunk(const Chunk<R>& ch, int c, int64_t k, const Acts& a, float (*acc)[NT]) {
  const float* x = a.x;
  if constexpr (kIntActs<D>) {
#pragma unroll
    for (int t = 0; t < NT; ++t) dot_acts<D, R, NT>(ch, load_act_chunk<D>(a, c, k, t), t, acc);
  } else {
    constexpr int kPer = kChunkValues<D>;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      float wf[kPer];
      if constexpr (D == DType::f32) {
        wf[0] = __uint_as_float(ch.w[i].x);
        wf[1] = __uint_as_float(ch.w[i].y);
        wf[2] = __uint_as_float(ch.w[i].z);
        wf[3] = __uint_as_float(ch.w[i].w);
      } else {
        const uint32_t words[4] = {ch.w[i].x, ch.w[i].y, ch.w[i].z, ch.w[i].w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if constexpr (D == DType::f16) {
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&words[j]));
            wf[2 * j] = f.x;
            wf[2 * j + 1] = f.y;
          } else {
            wf[2 * j] = __uint_as_float(words[j] << 16);
            wf[2 * j + 1] = __uint_as_float(words[j] & 0xffff0000u);
          }
        }
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float* xr = x + t * k + static_cast<int64_t>(c) * kPer;
#pragma unroll
        for (int j = 0; j < kPer; ++j) acc[i][t] += wf[j] * xr[j];
      }
    }
  }
}

// Calls f with std::integral_constant<int, n> for a decode batch of n ≤ kMaxGemvTokens
// tokens (the GEMVs are compiled per token count); nothing for other n.
template <class F>
void by_tokens(int64_t n, F&& f) {
  static_assert(kMaxGemvTokens == 8);
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: break;
  }
}

}  // namespace
}  // namespace kvant::cuda
