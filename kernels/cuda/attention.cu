// KV-cache writes and attention on the GPU, over the page layout of kernels/layout.h.
//
// Lanes and elements: a warp handles one head_dim-long row; lane l < A (A = hd / E,
// E = max(1, hd / 32)) holds elements [l·E, l·E + E). With the q4 row encoding (byte j
// holds elements j and j + hd/2), lanes below A/2 read the low nibbles of bytes
// [l·E, l·E + E) and lanes above read the high nibbles of the same bytes.

#include <cuda/atomic>

#include <algorithm>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace kvant::cuda {

namespace {

constexpr int kSplit = 64;       // positions per split-K block
// Pages are kPageTokens long on the GPU (CudaExecutor::create checks): a constant, so
// the position → page arithmetic in the inner loops is shifts, not 64-bit divisions
// (which cost ~100 instructions each and made decode attention compute-bound).

// E = elements per lane: 1 (head_dim ≤ 32), 2 (64), 4 (128) or 8 (256), a template
// parameter so that every per-lane array stays in registers.
template <int E>
struct Lanes {
  int active, half;  // active lanes, lanes per half row
};
template <int E>
__device__ __forceinline__ Lanes<E> lanes_for(int hd) {
  return {hd / E, hd / E / 2};
}

__device__ __forceinline__ bool rotated(KvType t, int hd) { return t == KvType::q4 && hd >= 16 && (hd & (hd - 1)) == 0; }

__device__ __forceinline__ uint8_t* region(const DeviceKv& kv, int slot, int64_t pos, uint32_t layer, uint32_t kind,
                                           uint32_t head) {
  const int32_t page = kv.page_table[static_cast<int64_t>(slot) * kv.max_pages + pos / kPageTokens];
  return kv.base + static_cast<uint64_t>(page) * kv.layout.page_bytes() + kv.layout.region_offset(layer, kind, head);
}

// One sequence's key and value regions of one (layer, KV head), with the page stride and
// region offsets computed once: for the inner loops, where region()'s layout arithmetic
// per 16-byte copy cost 8% of decode at 4096 positions.
struct Regions {
  uint8_t* base;
  const int32_t* pages;  // the sequence's page table row
  uint64_t page_bytes, offset[2];
  __device__ __forceinline__ uint8_t* at(int64_t pos, int kind) const {
    return base + static_cast<uint64_t>(pages[pos / kPageTokens]) * page_bytes + offset[kind];
  }
};
__device__ __forceinline__ Regions regions_of(const DeviceKv& kv, int slot, uint32_t layer, uint32_t head) {
  return {kv.base, kv.page_table + static_cast<int64_t>(slot) * kv.max_pages, kv.layout.page_bytes(),
          {kv.layout.region_offset(layer, 0, head), kv.layout.region_offset(layer, 1, head)}};
}

// Four int8 quants packed in a word, times d: byte b + 128 in the mantissa of 2^23 (one
// byte permute), less 2^23 + 128 (the integer-to-float conversion runs at a quarter of
// the rate on sm_90).
__device__ __forceinline__ void int8x4_to_floats(uint32_t w, float d, float* x) {
  w ^= 0x80808080u;
#pragma unroll
  for (int b = 0; b < 4; ++b) x[b] = d * (__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u + b)) - 8388736.0f);
}

// The lane's elements of one row at `row` (scale d for q8 and q4; 0 for inactive lanes).
template <int E>
__device__ __forceinline__ void decode_row(KvType type, const uint8_t* row, float d, Lanes<E> ln, int lane, float* x) {
  if (lane >= ln.active) {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = 0.0f;
    return;
  }
  const int first = lane * E;
  switch (type) {
    case KvType::f32:
#pragma unroll
      for (int e = 0; e < E; ++e) x[e] = reinterpret_cast<const float*>(row)[first + e];
      return;
    case KvType::f16:
#pragma unroll
      for (int e = 0; e < E; ++e) x[e] = __half2float(reinterpret_cast<const __half*>(row)[first + e]);
      return;
    case KvType::q8:
      if constexpr (E % 4 == 0) {  // four quants per load (rows and lane offsets are multiples of 4 bytes)
#pragma unroll
        for (int e = 0; e < E; e += 4) int8x4_to_floats(*reinterpret_cast<const uint32_t*>(row + first + e), d, x + e);
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) x[e] = d * static_cast<float>(reinterpret_cast<const int8_t*>(row)[first + e]);
      }
      return;
    case KvType::q4: {
      const bool high = lane >= ln.half;
      const int byte0 = (high ? lane - ln.half : lane) * E;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const uint8_t b = row[byte0 + e];
        x[e] = d * static_cast<float>((high ? (b >> 4) : (b & 0x0f)) - 8);
      }
      return;
    }
  }
}

// The lane's EP raw quants of a q8 row in shared memory (EP a multiple of 16: 16-byte
// loads; rows and lane offsets are multiples of 16 bytes), as floats, 0 for inactive lanes.
template <int EP>
__device__ __forceinline__ void decode_q8_row(const uint8_t* row, Lanes<EP> ln, int lane, float* x) {
  static_assert(EP % 16 == 0);
#pragma unroll
  for (int c = 0; c < EP / 16; ++c) {
    const uint4 v = lane < ln.active ? reinterpret_cast<const uint4*>(row + lane * EP)[c] : uint4{0u, 0u, 0u, 0u};
    int8x4_to_floats(v.x, 1.0f, x + 16 * c);
    int8x4_to_floats(v.y, 1.0f, x + 16 * c + 4);
    int8x4_to_floats(v.z, 1.0f, x + 16 * c + 8);
    int8x4_to_floats(v.w, 1.0f, x + 16 * c + 12);
  }
}

// The lane's elements of row `pos` of a region, read from global memory.
template <int E>
__device__ __forceinline__ void load_row(const DeviceKv& kv, const uint8_t* reg, int64_t pos, Lanes<E> ln, int lane,
                                         float* x) {
  const int64_t slot = pos % kPageTokens;
  const bool quantized = kv.layout.type == KvType::q8 || kv.layout.type == KvType::q4;
  const float d = quantized && lane < ln.active
                      ? __half2float(reinterpret_cast<const __half*>(reg + kv.layout.scales_offset())[slot])
                      : 0.0f;
  decode_row<E>(kv.layout.type, reg + slot * kv.layout.row_bytes(), d, ln, lane, x);
}

// Normalized Walsh-Hadamard transform of a row spread over a warp (see the top).
template <int E>
__device__ __forceinline__ void warp_hadamard(float* x, int hd, int lane) {
#pragma unroll
  for (int h = 1; h < E; h *= 2)
#pragma unroll
    for (int e = 0; e < E; ++e)
      if ((e & h) == 0) {
        const float a = x[e], b = x[e + h];
        x[e] = a + b;
        x[e + h] = a - b;
      }
  for (int h = E; h < hd; h *= 2) {
    const int mask = h / E;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float p = __shfl_xor_sync(0xffffffffu, x[e], mask);
      x[e] = (lane & mask) ? p - x[e] : x[e] + p;
    }
  }
  const float s = 1.0f / sqrtf(static_cast<float>(hd));
#pragma unroll
  for (int e = 0; e < E; ++e) x[e] *= s;
}

// The RoPE angles of the lane's elements at position pos: element i pairs with i + hd/2,
// held by lane ^ half, and turns by pos · inv_freq[i mod hd/2].
template <int E>
struct Rotation {
  float s[E], c[E];
};
template <int E>
__device__ __forceinline__ Rotation<E> rotation(Lanes<E> ln, int lane, int64_t pos, const float* inv_freq) {
  Rotation<E> r;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    r.s[e] = 0.0f;
    r.c[e] = 1.0f;
    if (lane < ln.active) sincosf(static_cast<float>(pos) * inv_freq[(lane % ln.half) * E + e], &r.s[e], &r.c[e]);
  }
  return r;
}

// RoPE of a row spread over a warp.
template <int E>
__device__ __forceinline__ void warp_rope(float* x, Lanes<E> ln, int lane, const Rotation<E>& r) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float partner = __shfl_xor_sync(0xffffffffu, x[e], ln.half);
    if (lane < ln.active) x[e] = lane < ln.half ? x[e] * r.c[e] - partner * r.s[e] : x[e] * r.c[e] + partner * r.s[e];
  }
}

// Calls f with std::integral_constant<int, E> for the head dimension.
template <class F>
void by_elements(int hd, F&& f) {
  if (hd <= 32) f(std::integral_constant<int, 1>{});
  else if (hd <= 64) f(std::integral_constant<int, 2>{});
  else if (hd <= 128) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}

// ---- KV store ----------------------------------------------------------------------------

// Quantizes a (rotated) row spread over a warp to q4 with the scale search of
// kernels/layout.h, into `row` and `*scale`; x becomes the decoded row (scale · q). Lane
// c < 16 computes candidate c's scale and reciprocal (two divisions per lane instead of
// 32 per thread), and the 16 candidates' errors are summed over the warp together.
template <int E>
__device__ __forceinline__ void store_q4_row(float* x, Lanes<E> ln, int lane, uint8_t* row, __half* scale) {
  float amax = 0.0f;
#pragma unroll
  for (int e = 0; e < E; ++e) amax = fmaxf(amax, fabsf(x[e]));
  amax = warp_max(amax);
  const float my_d = __half2float(__float2half_rn(amax / (5.0f + 0.2f * static_cast<float>(lane % 16))));
  const float my_id = 1.0f / my_d;  // quants are round(x · (1/d)), as the CPU's
  float err[16];
#pragma unroll
  for (int c = 0; c < 16; ++c) {
    const float d = __shfl_sync(0xffffffffu, my_d, c), id = __shfl_sync(0xffffffffu, my_id, c);
    err[c] = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float r = x[e] - d * fminf(fmaxf(rintf(x[e] * id), -8.0f), 7.0f);
      err[c] += r * r;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int c = 0; c < 16; ++c) err[c] += __shfl_xor_sync(0xffffffffu, err[c], o);
  int best = 0;
  float best_err = INFINITY;
#pragma unroll
  for (int c = 0; c < 16; ++c) {
    const bool usable = __shfl_sync(0xffffffffu, my_d, c) > 0.0f;  // amax > 0 and no f16 underflow
    if (usable && err[c] < best_err) {
      best_err = err[c];
      best = c;
    }
  }
  const float bd = __shfl_sync(0xffffffffu, my_d, best), bid = __shfl_sync(0xffffffffu, my_id, best);
  const float d = best_err < INFINITY ? bd : 0.0f, id = best_err < INFINITY ? bid : 0.0f;
  const int first = lane * E;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int q = static_cast<int>(fminf(fmaxf(rintf(x[e] * id), -8.0f), 7.0f));
    x[e] = d * static_cast<float>(q);
    const int hi = __shfl_xor_sync(0xffffffffu, q, ln.half);
    if (lane < ln.half) row[first + e] = static_cast<uint8_t>((q + 8) | ((hi + 8) << 4));
  }
  if (lane == 0) *scale = __float2half_rn(d);
}

// The lane's elements of a row (0 for inactive lanes), RoPE'd when rot is given.
template <int E>
__device__ __forceinline__ void source_row(const float* src, Lanes<E> ln, int lane, const Rotation<E>* rot, float* x) {
#pragma unroll
  for (int e = 0; e < E; ++e) x[e] = lane < ln.active ? src[lane * E + e] : 0.0f;
  if (rot) warp_rope<E>(x, ln, lane, *rot);
}

// The lane's elements of a key region's offset row (kernels/layout.h).
template <int E>
__device__ __forceinline__ void load_offset_row(const DeviceKv& kv, const uint8_t* reg, Lanes<E> ln, int lane, float* x) {
  const auto* o = reinterpret_cast<const __half*>(reg + kv.layout.offset_row_offset());
#pragma unroll
  for (int e = 0; e < E; ++e) x[e] = lane < ln.active ? __half2float(o[lane * E + e]) : 0.0f;
}

// Whether token t's page starts in this batch (a sequence's tokens come in position
// order, contiguous): then its key waits for the page's offset row (store_keys_in_order);
// the keys of other tokens are stored against the offset row already in the page.
__device__ __forceinline__ bool page_starts_in_batch(const int32_t* positions, const int32_t* slots, int64_t t) {
  const int64_t back = positions[t] % kPageTokens;
  return t >= back && slots[t - back] == slots[t] && positions[t - back] == positions[t] - back;
}

// The key of token t (n_kv_heads × hd per token), RoPE'd when inv_freq is given and
// rotated: the lane's elements.
template <int E>
__device__ __forceinline__ void key_row(const float* k, int64_t t, int n_kv_heads, int g, int hd, const Rotation<E>* rot,
                                        Lanes<E> ln, int lane, float* x) {
  source_row<E>(k + (t * n_kv_heads + g) * hd, ln, lane, rot, x);
  if (rotated(KvType::q4, hd)) warp_hadamard<E>(x, hd, lane);
}
template <int E>
__device__ __forceinline__ void key_row(const float* k, int64_t t, int64_t pos, int n_kv_heads, int g, int hd,
                                        const float* inv_freq, Lanes<E> ln, int lane, float* x) {
  const Rotation<E> rot = inv_freq ? rotation<E>(ln, lane, pos, inv_freq) : Rotation<E>{};
  key_row<E>(k, t, n_kv_heads, g, hd, inv_freq ? &rot : nullptr, ln, lane, x);
}

// Stores key row x (key_row) of position pos against the offset row `o` into its
// region; x becomes the decoded residual.
template <int E>
__device__ __forceinline__ void store_key(const DeviceKv& kv, uint8_t* reg, int64_t pos, const float* o, Lanes<E> ln,
                                          int lane, float* x) {
#pragma unroll
  for (int e = 0; e < E; ++e) x[e] -= o[e];
  const int64_t slot = pos % kPageTokens;
  store_q4_row<E>(x, ln, lane, reg + slot * kv.layout.row_bytes(),
                  reinterpret_cast<__half*>(reg + kv.layout.scales_offset()) + slot);
}

// The keys of pages that start in this batch, one block per KV head, page after page in
// batch order (each page's offset row derives from the page before it): per page, the
// offset row, then its rows, a warp each. Pages of different sequences follow each other
// too. With `staged` (the launch's dynamic shared memory holds [kPageTokens + 1][hd]
// floats), a page's decoded rows and offset row stay in shared memory for the next page
// (prefill); otherwise, and for a page an earlier launch wrote, each warp decodes the
// previous page from global memory.
template <int E>
__device__ void store_keys_in_order(const DeviceKv& kv, uint32_t layer, const float* k, int64_t n, int n_kv_heads, int hd,
                                    const int32_t* positions, const int32_t* slots, const float* inv_freq, int g,
                                    bool staged) {
  extern __shared__ float sm_dyn[];
  float* sm_rows = sm_dyn;                      // [kPageTokens][hd]: the page's decoded residual rows, by slot
  float* sm_off = sm_dyn + kPageTokens * hd;    // [hd]: its offset row (f16 values)
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  const Lanes<E> ln = lanes_for<E>(hd);
  const int rb = static_cast<int>(kv.layout.row_bytes());
  int64_t written = -1;  // token that started the page whose rows sm_rows holds
  for (int64_t t0 = 0; t0 < n;) {
    const int64_t p0 = positions[t0];
    if (p0 % kPageTokens != 0) {  // not a page that starts here: row warps store it
      ++t0;
      continue;
    }
    // The page's tokens: [t0, t1).
    const int seq = slots[t0];
    const int64_t next = t0 + 1 + lane;  // lane 31 would be the next page's
    const bool more = lane < kPageTokens - 1 && next < n && slots[next] == seq && positions[next] == p0 + 1 + lane;
    const int64_t t1 = t0 + __ffs(__ballot_sync(0xffffffffu, !more));
    uint8_t* reg = region(kv, seq, p0, layer, 0, static_cast<uint32_t>(g));
    float o[E];
    if (p0 == 0) {  // the first key itself
      key_row<E>(k, t0, p0, n_kv_heads, g, hd, inv_freq, ln, lane, o);
    } else {  // o_(j-1) + (1/j) · mean of page j-1's decoded rows, summed in slot order as the CPU does
      float sum[E], prev_o[E];
#pragma unroll
      for (int e = 0; e < E; ++e) sum[e] = 0.0f;
      if (staged && written >= 0 && slots[written] == seq && positions[written] == p0 - kPageTokens &&
          t0 - written == kPageTokens) {
        if (lane < ln.active)
#pragma unroll
          for (int e = 0; e < E; ++e) {
            for (int r = 0; r < kPageTokens; ++r) sum[e] += sm_rows[r * hd + lane * E + e];
            prev_o[e] = sm_off[lane * E + e];
          }
      } else {
        const uint8_t* prev = region(kv, seq, p0 - kPageTokens, layer, 0, static_cast<uint32_t>(g));
        const auto* prev_scales = reinterpret_cast<const __half*>(prev + kv.layout.scales_offset());
#pragma unroll 8
        for (int r = 0; r < kPageTokens; ++r) {
          float x[E];
          decode_row<E>(KvType::q4, prev + r * rb, __half2float(prev_scales[r]), ln, lane, x);
#pragma unroll
          for (int e = 0; e < E; ++e) sum[e] += x[e];
        }
        load_offset_row<E>(kv, prev, ln, lane, prev_o);
      }
      const float w = 1.0f / static_cast<float>(p0);  // 1 / (32 j), as the CPU computes it
#pragma unroll
      for (int e = 0; e < E; ++e) o[e] = lane < ln.active ? __fadd_rn(prev_o[e], __fmul_rn(sum[e], w)) : 0.0f;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) o[e] = __half2float(__float2half_rn(o[e]));
    __syncthreads();  // every warp has read sm_rows and sm_off
    if (warp == 0 && lane < ln.active)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        reinterpret_cast<__half*>(reg + kv.layout.offset_row_offset())[lane * E + e] = __float2half_rn(o[e]);
        if (staged) sm_off[lane * E + e] = o[e];
      }
    // The page's rows, a warp each (every warp computed the same o).
    for (int64_t t = t0 + warp; t < t1; t += warps) {
      float x[E];
      const int64_t pos = positions[t];
      key_row<E>(k, t, pos, n_kv_heads, g, hd, inv_freq, ln, lane, x);
      store_key<E>(kv, reg, pos, o, ln, lane, x);
      if (staged && lane < ln.active)
#pragma unroll
        for (int e = 0; e < E; ++e) sm_rows[(t - t0) * hd + lane * E + e] = x[e];
    }
    __syncthreads();  // the rows are written (and staged) before the next page reads them
    written = t1 - t0 == kPageTokens ? t0 : -1;
    t0 = t1;
  }
}

// One warp per (token, KV head, keys or values), then (when q is given) one per (token,
// query head) rotating q into q_out. With offset rows (q4), the keys of pages that start
// in this batch are left to the first `key_blocks` blocks, one per KV head
// (store_keys_in_order): first, so that their page-by-page walk overlaps the other rows.
template <int E, int kThreads>
__global__ void __launch_bounds__(kThreads) kv_store_kernel(DeviceKv kv, uint32_t layer, const float* k, const float* v, int64_t n, int n_kv_heads,
                                int hd, const int32_t* positions, const int32_t* slots, const float* inv_freq,
                                const float* q, float* q_out, int n_heads, unsigned key_blocks, bool staged) {
  if (blockIdx.x < key_blocks) {
    grid_dependency_wait();
    if (n <= kMaxGemvTokens) launch_dependents();
    store_keys_in_order<E>(kv, layer, k, n, n_kv_heads, hd, positions, slots, inv_freq, static_cast<int>(blockIdx.x),
                           staged);
    return;
  }
  const int64_t warp = ((blockIdx.x - key_blocks) * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const Lanes<E> ln = lanes_for<E>(hd);
  // The warp's row and its RoPE angles come first: positions are the host's, inv_freq a
  // weight, so the sines and cosines are computed before the wait.
  const bool query = warp >= n * 2 * n_kv_heads;
  const int64_t qw = warp - n * 2 * n_kv_heads;
  if (query && (!q || qw >= n * n_heads)) return;
  const int64_t t = query ? qw / n_heads : warp / (2 * n_kv_heads);
  const int g = static_cast<int>((warp / 2) % n_kv_heads), kind = static_cast<int>(warp % 2);
  const int64_t pos = positions[t];
  const bool rope = query || (kind == 0 && inv_freq);
  const Rotation<E> rot = rope ? rotation<E>(ln, lane, pos, inv_freq) : Rotation<E>{};
  grid_dependency_wait();
  if (n <= kMaxGemvTokens) launch_dependents();  // decode: the attention starts copying settled rows
  float x[E];
  if (query) {
    source_row<E>(q + qw * hd, ln, lane, &rot, x);
    if (lane < ln.active)
#pragma unroll
      for (int e = 0; e < E; ++e) q_out[qw * hd + lane * E + e] = x[e];
    return;
  }
  if (kind == 0 && kv.layout.key_offsets()) {  // against the offset row its page already has
    if (page_starts_in_batch(positions, slots, t)) return;  // (decode: no loads, t < its slot)
    key_row<E>(k, t, n_kv_heads, g, hd, rope ? &rot : nullptr, ln, lane, x);
    uint8_t* reg = region(kv, slots[t], pos, layer, 0, static_cast<uint32_t>(g));
    float o[E];
    load_offset_row<E>(kv, reg, ln, lane, o);
    store_key<E>(kv, reg, pos, o, ln, lane, x);
    return;
  }
  source_row<E>((kind == 0 ? k : v) + (t * n_kv_heads + g) * hd, ln, lane, rope ? &rot : nullptr, x);
  uint8_t* reg = region(kv, slots[t], pos, layer, static_cast<uint32_t>(kind), static_cast<uint32_t>(g));
  const int64_t slot = pos % kPageTokens;
  uint8_t* row = reg + slot * kv.layout.row_bytes();
  __half* scale = reinterpret_cast<__half*>(reg + kv.layout.scales_offset()) + slot;
  const int first = lane * E;
  switch (kv.layout.type) {
    case KvType::f32:
      if (lane < ln.active)
#pragma unroll
        for (int e = 0; e < E; ++e) reinterpret_cast<float*>(row)[first + e] = x[e];
      return;
    case KvType::f16:
      if (lane < ln.active)
#pragma unroll
        for (int e = 0; e < E; ++e) reinterpret_cast<__half*>(row)[first + e] = __float2half_rn(x[e]);
      return;
    case KvType::q8: {
      float amax = 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) amax = fmaxf(amax, fabsf(x[e]));
      amax = warp_max(amax);
      const __half sc = __float2half_rn(amax / 127.0f);
      const float d = __half2float(sc);
      const float id = d > 0.0f ? 1.0f / d : 0.0f;
      if (lane < ln.active)
#pragma unroll
        for (int e = 0; e < E; ++e)
          reinterpret_cast<int8_t*>(row)[first + e] = static_cast<int8_t>(fminf(fmaxf(rintf(x[e] * id), -127.0f), 127.0f));
      if (lane == 0) *scale = sc;
      return;
    }
    case KvType::q4:
      if (rotated(KvType::q4, hd)) warp_hadamard<E>(x, hd, lane);
      store_q4_row<E>(x, ln, lane, row, scale);
      return;
  }
}

// ---- decode attention: split-K flash-decoding --------------------------------------------

struct Range {
  int64_t begin, end;
};
__device__ __forceinline__ Range attended(const int32_t* positions, int64_t t, int window) {
  const int64_t pos = positions[t];
  return {window > 0 ? max(int64_t{0}, pos - window + 1) : 0, pos + 1};
}

// Block (KV head group slice, split s, token t), 4 warps, G query heads (the G heads
// of one KV head, or a slice of them). A split is a run of chunks of kSplit positions,
// as few chunks per split as keep every split of the launch on the GPU at once (so a
// 4096-position context of 32 heads takes 3 chunks a split, not one block per chunk in
// two waves of 8 per SM). The block copies a chunk's K and V rows (and scales) into
// shared memory with cp.async, every load of the chunk in flight at once, and the next
// chunk's into a second buffer while it computes this one: its loads overlap the
// decoding and products. (Warps that loaded kBatch rows each, then computed, then loaded
// again waited on DRAM four times per split and a page-table lookup before each; decode
// at 4096 positions took ~80 µs per layer, ~10% of the bandwidth. A block per chunk with
// one buffer waited on DRAM once per chunk: 31.4 µs per layer on the H200, 35% of the
// copy bandwidth in the graph.) Each warp takes kBatch positions at a time from shared
// memory, with an online softmax per head carried over the split's chunks; the warps
// merge in shared memory and the split's partial (max, sum, unnormalized output) goes to
// scratch. The last split to finish (counted with an atomic) merges all splits, rotates
// q4 results back, and writes the output: one kernel per attention. (A context of one
// split writes its output directly.)
//
// P (> 1 for q8 rows and one query head per KV head): a warp takes P positions side by
// side, each on 32 / P lanes, instead of spreading every position over the warp; see the
// kernel. On the H200, llama2-7b with q4 weights at 4096 positions of q8 KV, this kernel
// went from 42.3 to 31.4 us per layer in isolation (decode 320 -> 361 tok/s) with the
// page-run staging, the scales folded out of the rows, byte-permute int8 conversion, P = 4
// and 8 blocks per SM (bench/results/gpu-h200-2026-12-04.md).
constexpr int kBatch = 4;

// Sums each of v[0..3] over the warp, every lane getting all four: the first two rounds
// halve the values a lane carries (lanes 16 apart swap halves, then lanes 8 apart), the
// last three reduce one value, and four shuffles broadcast the sums: 10 shuffles where
// four separate warp sums take 20.
__device__ __forceinline__ void warp_sum4(float (&v)[4], int lane) {
  const bool up16 = lane & 16, up8 = lane & 8;
  float a = up16 ? v[2] : v[0], b = up16 ? v[3] : v[1];
  a += __shfl_xor_sync(0xffffffffu, up16 ? v[0] : v[2], 16);
  b += __shfl_xor_sync(0xffffffffu, up16 ? v[1] : v[3], 16);
  float c = up8 ? b : a;  // value 2·up16 + up8
  c += __shfl_xor_sync(0xffffffffu, up8 ? a : b, 8);
  c += __shfl_xor_sync(0xffffffffu, c, 4);
  c += __shfl_xor_sync(0xffffffffu, c, 2);
  c += __shfl_xor_sync(0xffffffffu, c, 1);
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = __shfl_sync(0xffffffffu, c, 8 * j);  // lane 8j holds value j
}

// Dynamic shared memory of a split block: the warps' accumulators [4][G][hd] floats, then
// two chunk buffers (one where two do not fit: see launch_split), each K and V rows
// [2][kSplit][row_bytes], their scales [2][kSplit] halves and (with key offset rows) the
// offset rows of the up to kSplit / kPageTokens + 1 pages the chunk touches, [3][hd]
// halves, rounded up to 16 bytes.
constexpr int kSplitPages = kSplit / kPageTokens + 1;
__host__ __device__ inline size_t chunk_buffer_bytes(int hd, const KvLayout& L) {
  const size_t b = 2 * kSplit * L.row_bytes() + 2 * kSplit * sizeof(__half) +
                   (L.key_offsets() ? static_cast<size_t>(kSplitPages * hd) * sizeof(__half) : 0);
  return (b + 15) / 16 * 16;
}
__host__ __device__ inline size_t split_smem_bytes(int g, int hd, const KvLayout& L, int buffers) {
  return static_cast<size_t>(4 * g * hd) * sizeof(float) + buffers * chunk_buffer_bytes(hd, L);
}

// kT: the KV type, a template parameter so that each type's kernel carries only its own
// row decoding (q4: and its key offset rows; with a runtime flag for those, the other
// types' decode at 4096 positions ran 8% slower). A kernel for every type was 5056
// instructions, of which a short context runs ~1350 spread through it: sampled in
// Nsight Compute, 42% of its warps' stalls were instruction fetches (no_inst). Per type
// (and with one copy of the output step below), the f16 kernel is 3016 instructions and
// 64 registers (from 117): no_inst 12% of the stalls (188 -> 144 samples in one launch),
// q4 decode on the H100 467.2 -> 471.2 tok/s (+0.85%; +0.5% at 4096 positions, INT8 KV).
// P > 1 holds its registers to 64, 8 blocks per SM (its first version took 77, 6 blocks:
// 33.8 -> 30.9 us per layer at 4096 positions once held); the others are left alone (held
// to 64, the wide-head and GQA kernels spilled hundreds of bytes).
// resident: how many blocks of this kernel the GPU holds at once (the host's occupancy).
template <int E, int G, KvType kT, int P>
__global__ void __launch_bounds__(128, P > 1 ? 8 : 0)
    attend_split_kernel(DeviceKv kv, uint32_t layer, const float* q, int n_heads, int n_kv_heads, int hd,
                        const int32_t* positions, const int32_t* slots, int window, int resident, int max_splits,
                        float scale, float* scratch, int* counters, float* out, uint8_t* out_q, size_t q_stride,
                        bool early) {
  const int group = n_heads / n_kv_heads, sub = group / G;
  const int g = blockIdx.x / sub, h0 = g * group + (blockIdx.x % sub) * G;
  const int s = blockIdx.y;
  const int64_t t = blockIdx.z;
  const Range r = attended(positions, t, window);
  // The split's chunks [c0, c1): the launch's splits for this token's context (every
  // token of the launch counted at this one's length) just fit `resident`.
  const int64_t chunks = (r.end - r.begin + kSplit - 1) / kSplit;
  const int64_t per_chunk = static_cast<int64_t>(gridDim.x) * gridDim.z;
  const int64_t per_split = max(int64_t{1}, (chunks * per_chunk + resident - 1) / resident);
  const int splits = static_cast<int>((chunks + per_split - 1) / per_split);
  if (s >= splits) return;
  const int64_t c0 = s * per_split, c1 = min(chunks, c0 + per_split);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const Lanes<E> ln = lanes_for<E>(hd);
  constexpr bool kOffsets = kT == KvType::q4;
  const bool rot = rotated(kT, hd);

  __shared__ float sm_m[4][G], sm_l[4][G];
  __shared__ bool sm_last;
  extern __shared__ __align__(16) float sm_acc[];  // [4][G][hd], then the chunk buffers

  const int slot = slots[t];
  const Regions regs = regions_of(kv, slot, layer, static_cast<uint32_t>(g));
  constexpr KvType type = kT;
  constexpr bool quantized = type == KvType::q8 || type == KvType::q4;
  const int rb = static_cast<int>(kv.layout.row_bytes());
  uint8_t* const buffers = reinterpret_cast<uint8_t*>(sm_acc + 4 * G * hd);
  const size_t buffer_bytes = chunk_buffer_bytes(hd, kv.layout);
  // Buffer b: K rows [0, n), V rows [kSplit, kSplit + n), then the scales, then the offset rows.
  auto rows_of = [&](int b) { return buffers + b * buffer_bytes; };
  auto scales_of = [&](int b) { return reinterpret_cast<__half*>(rows_of(b) + 2 * kSplit * rb); };
  auto offsets_of = [&](int b) { return scales_of(b) + 2 * kSplit; };
  const int chunk = rb % 16 == 0 ? 16 : rb % 8 == 0 ? 8 : rb % 4 == 0 ? 4 : 1;
  // Positions [from, to) of the chunk at lo into buffer b, page by page: a page's rows
  // of one region are one contiguous run (and so are its scales), copied with
  // consecutive threads on consecutive chunks. (Indexing every 16-byte copy by (kind,
  // row, chunk) cost two divisions and a page-table read per copy: the decode attention
  // issued an instruction every cycle and a half per scheduler, 42 us per layer at 4096
  // positions on the H200.)
  auto stage = [&](int64_t from, int64_t to, int64_t lo, int b) {
    uint8_t* const rows = rows_of(b);
    __half* const scales = scales_of(b);
    for (int64_t p0 = from; p0 < to;) {
      const int64_t p1 = min(to, (p0 / kPageTokens + 1) * kPageTokens);
      const int n = static_cast<int>(p1 - p0), j0 = static_cast<int>(p0 - lo), slot0 = static_cast<int>(p0 % kPageTokens);
      for (int kind = 0; kind < 2; ++kind) {
        const uint8_t* reg = regs.at(p0, kind);
        const uint8_t* src = reg + slot0 * rb;
        uint8_t* dst = rows + (kind * kSplit + j0) * rb;
        if (chunk >= 4) {
          for (int off = threadIdx.x * chunk; off < n * rb; off += blockDim.x * chunk)
            copy_async(dst + off, src + off, chunk);
        } else {
          for (int off = threadIdx.x; off < n * rb; off += blockDim.x) dst[off] = src[off];
        }
        if (quantized) {  // the run's scales: copied like the rows where both ends allow 4-byte copies
          const __half* src_scales = reinterpret_cast<const __half*>(reg + kv.layout.scales_offset()) + slot0;
          __half* dst_scales = scales + kind * kSplit + j0;
          if (n % 2 == 0 && reinterpret_cast<uintptr_t>(src_scales) % 4 == 0 &&
              reinterpret_cast<uintptr_t>(dst_scales) % 4 == 0) {
            for (int i = 2 * static_cast<int>(threadIdx.x); i < n; i += 2 * blockDim.x)
              copy_async(dst_scales + i, src_scales + i, 4);
          } else {
            for (int i = threadIdx.x; i < n; i += blockDim.x) dst_scales[i] = src_scales[i];
          }
        }
      }
      p0 = p1;
    }
  };
  // Key offset rows of the pages [lo / P, (hi - 1) / P] into buffer b, copied in the same way.
  auto stage_offsets = [&](int64_t lo, int64_t hi, int b) {
    if constexpr (kOffsets) {
      const int ochunk = (2 * hd) % 16 == 0 ? 16 : 4, per_offset = 2 * hd / ochunk;
      const int64_t first_page = lo / kPageTokens;
      for (int idx = threadIdx.x; idx < kSplitPages * per_offset; idx += blockDim.x) {
        const int64_t p = (first_page + idx / per_offset) * kPageTokens;
        if (p < hi)
          copy_async(reinterpret_cast<uint8_t*>(offsets_of(b)) + idx * ochunk,
                     regs.at(p, 0) + kv.layout.offset_row_offset() + (idx % per_offset) * ochunk, ochunk);
      }
    }
  };
  auto chunk_lo = [&](int64_t c) { return r.begin + c * kSplit; };
  auto chunk_hi = [&](int64_t c) { return min(r.end, r.begin + (c + 1) * kSplit); };
  // A warp takes P positions at a time (P > 1: q8 rows, no rotation), each on kWarp / P
  // lanes of EP = E · P elements (group grp, lane sl in it); with P = 1 a position is
  // spread over the whole warp.
  constexpr int EP = E * P, kGroupLanes = kWarp / P;
  const int grp = lane / kGroupLanes, sl = lane % kGroupLanes;
  const Lanes<EP> lnp = lanes_for<EP>(hd);
  float qv[G][EP];
  // Rows more than n_tokens - 1 positions before this token's are not written by this
  // batch's KV store (it writes at most n_tokens rows of a sequence, ending at or after
  // this position): the first chunk's copies of them start before the wait, overlapping
  // the kernel before. The page table, positions and slots come from the host before the step.
  {
    const int64_t lo = chunk_lo(c0), hi = chunk_hi(c0);
    const int64_t settled = min(hi, max(lo, r.end - static_cast<int64_t>(gridDim.z)));
    stage(lo, settled, lo, 0);
    grid_dependency_wait();
    if (early) launch_dependents();
    // The query (written by the kernel before) is loaded ahead of the rest of the
    // copies. Loaded after them, its first use drew 17% of the warps' stall samples at
    // 4096 positions (Nsight Compute, long_sb): the first chunk's products waited for it.
#pragma unroll
    for (int i = 0; i < G; ++i)
#pragma unroll
      for (int e = 0; e < EP; ++e) qv[i][e] = sl < lnp.active ? q[(t * n_heads + h0 + i) * hd + sl * EP + e] : 0.0f;
    stage(settled, hi, lo, 0);
    stage_offsets(lo, hi, 0);
    copy_async_commit();
  }
  if (c0 + 1 < c1) {
    stage(chunk_lo(c0 + 1), chunk_hi(c0 + 1), chunk_lo(c0 + 1), 1);
    stage_offsets(chunk_lo(c0 + 1), chunk_hi(c0 + 1), 1);
    copy_async_commit();
  }
  if constexpr (P == 1)
    if (rot)
#pragma unroll
      for (int i = 0; i < G; ++i) warp_hadamard<E>(qv[i], hd, lane);
  // P > 1 (q8 rows): a key's score is taken on its raw quants with dp4a, the query as two
  // int8 levels per element, x ≈ dq · (h + r / 256) with dq = max|x| / (127 · 256) over
  // the head (the GEMV activations' encoding, 16 bits): eight dp4a per 16 quants instead
  // of decoding each quant to a float (two instructions) and a multiply-add. The query's
  // rounding, at most max|x| / 65024 per element, is 1/256 of the keys' own int8 steps
  // (relative); the output moved ~4e-5 against the f32 query (CudaKernels test). At 4096
  // positions, q4 weights: 347.4 -> 352.8 and 347.0 -> 350.8 tok/s on the H100.
  // qw[0] holds h, qw[1] r, four elements a word.
  constexpr int kQWords = P > 1 ? EP / 4 : 1;
  int qw[2][kQWords] = {};
  float dq_scale = 0.0f;  // the query's step times the softmax scale
  if constexpr (P > 1) {
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < EP; ++e) amax = fmaxf(amax, fabsf(qv[0][e]));
#pragma unroll
    for (int o = kGroupLanes / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    dq_scale = amax / (127.0f * 256.0f) * scale;
#pragma unroll
    for (int w = 0; w < kQWords; ++w) {
      uint32_t h = 0, r = 0;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const float x = qv[0][4 * w + b] * inv, hf = rintf(x);
        const float rf = fminf(fmaxf(rintf((x - hf) * 256.0f), -127.0f), 127.0f);
        h |= (static_cast<uint32_t>(static_cast<int>(hf)) & 0xffu) << (8 * b);
        r |= (static_cast<uint32_t>(static_cast<int>(rf)) & 0xffu) << (8 * b);
      }
      qw[0][w] = static_cast<int>(h);
      qw[1][w] = static_cast<int>(r);
    }
  }
  float m[G], l[G], acc[G][EP];
#pragma unroll
  for (int i = 0; i < G; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int e = 0; e < EP; ++e) acc[i][e] = 0.0f;
  }
  for (int64_t c = c0; c < c1; ++c) {
    const int b = static_cast<int>((c - c0) % 2);
    if (c + 1 < c1) copy_async_wait_groups<1>();  // chunk c's group; c + 1's may still run
    else copy_async_wait();
    __syncthreads();
    const int64_t lo = chunk_lo(c), hi = chunk_hi(c);
    const uint8_t* const rows = rows_of(b);
    const __half* const scales = scales_of(b);
    const __half* const offsets = offsets_of(b);
    const int64_t first_page = lo / kPageTokens;
    if constexpr (P > 1) {
      static_assert(G == 1, "positions side by side take one query head");
      // Position base + grp per step: its score summed over the group's lanes (log2(32/P)
      // shuffles, where spreading it over the warp took five per position), the softmax
      // maximum over the warp's P positions, and each group's own share of l and acc,
      // added over the groups after the loop. q8 rows: one 16-byte load per lane and row.
      // (Scoring the whole split first, then weighting the values against its maximum,
      // measured slower: 32.9 against 30.9 us per layer at 4096 positions.)
      // Positions as offsets in the chunk, 32-bit (with 64-bit positions the loop was 174
      // instructions of SASS, now 158), and the query's step folded into the softmax
      // scale. With the query loaded first (above), on the H100 at 4096 positions of
      // INT8 KV: q8 weights 268.27 -> 273.38 tok/s (+1.9%), q4 369.25 -> 379.57 (+2.8%).
      const int n = static_cast<int>(hi - lo);
      for (int base = warp * P; base < n; base += 4 * P) {
        const int j = base + grp;
        const int ri = min(j, n - 1);
        const float dk = __half2float(scales[ri]), dv = __half2float(scales[kSplit + ri]);
        // The score in integers, summed over the group's lanes: |256 · Σ k·h + Σ k·r| is
        // below 127 · 127 · 257 per element, 2^31 over 512 of them (head sizes here: ≤ 256).
        int dh = 0, dr = 0;
#pragma unroll
        for (int cc = 0; cc < EP / 16; ++cc) {
          const uint4 kw = sl < lnp.active ? reinterpret_cast<const uint4*>(rows + ri * rb + sl * EP)[cc]
                                           : uint4{0u, 0u, 0u, 0u};
          const int words[4] = {static_cast<int>(kw.x), static_cast<int>(kw.y), static_cast<int>(kw.z),
                                static_cast<int>(kw.w)};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            dh = __dp4a(words[j], qw[0][4 * cc + j], dh);
            dr = __dp4a(words[j], qw[1][4 * cc + j], dr);
          }
        }
        int di = 256 * dh + dr;
#pragma unroll
        for (int o = kGroupLanes / 2; o > 0; o >>= 1) di += __shfl_xor_sync(0xffffffffu, di, o);
        float vf[EP];
        decode_q8_row<EP>(rows + (kSplit + ri) * rb, lnp, sl, vf);
        const float sc = j < n ? static_cast<float>(di) * dq_scale * dk : -INFINITY;
        float mx = fmaxf(m[0], sc);
#pragma unroll
        for (int o = kGroupLanes; o < kWarp; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        if (mx > m[0]) {  // the running maximum moved (the same in every lane): rescale
          const float corr = expf(m[0] - mx);
          l[0] *= corr;
#pragma unroll
          for (int e = 0; e < EP; ++e) acc[0][e] *= corr;
          m[0] = mx;
        }
        const float pe = expf(sc - mx);
        l[0] += pe;
        const float pv = pe * dv;
#pragma unroll
        for (int e = 0; e < EP; ++e) acc[0][e] += pv * vf[e];
      }
    } else {
      // Quantized rows are decoded without their scales (d = 1; q4 keys excepted: their
      // offset rows are in real units): the key's scale multiplies its score, the value's
      // its weight, once per position instead of once per element.
      for (int64_t base = lo + warp * kBatch; base < hi; base += 4 * kBatch) {
        float kf[kBatch][E], vf[kBatch][E], dk[kBatch], dv[kBatch];
#pragma unroll
        for (int j = 0; j < kBatch; ++j) {
          const int ri = static_cast<int>(min(base + j, hi - 1) - lo);  // a repeated row for the tail; masked below
          dk[j] = quantized ? __half2float(scales[ri]) : 1.0f;
          dv[j] = quantized ? __half2float(scales[kSplit + ri]) : 1.0f;
          decode_row<E>(type, rows + ri * rb, kOffsets ? dk[j] : 1.0f, ln, lane, kf[j]);
          decode_row<E>(type, rows + (kSplit + ri) * rb, 1.0f, ln, lane, vf[j]);
          if (kOffsets) dk[j] = 1.0f;  // applied in the decode
          if (kOffsets && lane < ln.active) {
            const __half* o = offsets + ((lo + ri) / kPageTokens - first_page) * hd + lane * E;
#pragma unroll
            for (int e = 0; e < E; ++e) kf[j][e] += __half2float(o[e]);
          }
        }
#pragma unroll
        for (int i = 0; i < G; ++i) {
          float sc[kBatch];
#pragma unroll
          for (int j = 0; j < kBatch; ++j) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < E; ++e) d += qv[i][e] * kf[j][e];
            sc[j] = d;
          }
          warp_sum4(sc, lane);
          float mx = m[i];
#pragma unroll
          for (int j = 0; j < kBatch; ++j) {
            sc[j] = base + j < hi ? sc[j] * dk[j] * scale : -INFINITY;
            mx = fmaxf(mx, sc[j]);
          }
          const float corr = expf(m[i] - mx);
          float pe[kBatch], sum = 0.0f;
#pragma unroll
          for (int j = 0; j < kBatch; ++j) {
            pe[j] = expf(sc[j] - mx);
            sum += pe[j];
            pe[j] *= dv[j];
          }
          l[i] = l[i] * corr + sum;
#pragma unroll
          for (int e = 0; e < E; ++e) {
            float a = acc[i][e] * corr;
#pragma unroll
            for (int j = 0; j < kBatch; ++j) a += pe[j] * vf[j][e];
            acc[i][e] = a;
          }
          m[i] = mx;
        }
      }
    }
    if (c + 2 < c1) {  // buffer b is free once every warp is past it
      __syncthreads();
      stage(chunk_lo(c + 2), chunk_hi(c + 2), chunk_lo(c + 2), b);
      stage_offsets(chunk_lo(c + 2), chunk_hi(c + 2), b);
      copy_async_commit();
    }
  }
  if constexpr (P > 1) {
#pragma unroll
    for (int o = kGroupLanes; o < kWarp; o <<= 1) {  // the groups' shares
      l[0] += __shfl_xor_sync(0xffffffffu, l[0], o);
#pragma unroll
      for (int e = 0; e < EP; ++e) acc[0][e] += __shfl_xor_sync(0xffffffffu, acc[0][e], o);
    }
  }
  for (int i = 0; i < G; ++i) {
    if (lane == 0) {
      sm_m[warp][i] = m[i];
      sm_l[warp][i] = l[i];
    }
    if (grp == 0 && sl < lnp.active)
#pragma unroll
      for (int e = 0; e < EP; ++e) sm_acc[(warp * G + i) * hd + sl * EP + e] = acc[i][e];
  }
  __syncthreads();
  // A split that is the only one (contexts of up to kSplit positions) is the result:
  // no partial goes through scratch, no count, no merge (q4 decode +2% over 128 tokens
  // from an empty context on the H200). Otherwise the block writes its partial and the
  // last of the splits merges them. Both paths end in the one output step below (one
  // copy of its code: a short context's warps wait on instruction fetches).
  auto partial = [&](int i, int split) {
    return scratch + ((t * n_heads + h0 + i) * static_cast<int64_t>(max_splits) + split) * (hd + 2);
  };
  if (splits > 1) {
    // The block's partial: scratch[t][head][s] = (max, sum, acc[hd]).
    for (int idx = threadIdx.x; idx < G * (hd + 2); idx += blockDim.x) {
      const int i = idx / (hd + 2), d = idx % (hd + 2);
      float mm = -INFINITY;
      for (int w = 0; w < 4; ++w) mm = fmaxf(mm, sm_m[w][i]);
      float value = mm;
      if (d > 0) {
        value = 0.0f;
        for (int w = 0; w < 4; ++w)
          if (sm_m[w][i] != -INFINITY)
            value += expf(sm_m[w][i] - mm) * (d == 1 ? sm_l[w][i] : sm_acc[(w * G + i) * hd + d - 2]);
      }
      partial(i, s)[d] = value;
    }
    // Thread 0's count is an acquire-release atomic: as a release it publishes every
    // thread's partial (the barrier orders them before it), as an acquire it lets the last
    // block read the others' (the barrier after it orders the reads; it also drops the
    // SM's L1 lines, which may hold a previous launch's partials). That is one
    // MEMBAR.ALL.GPU per block where __threadfence() before and after the count made every
    // warp wait on a MEMBAR.SC.GPU, twice.
    __syncthreads();
    if (threadIdx.x == 0) {
      int* counter = counters + t * gridDim.x + blockIdx.x;
      ::cuda::atomic_ref<int, ::cuda::thread_scope_device> count(*counter);
      sm_last = count.fetch_add(1, ::cuda::memory_order_acq_rel) == splits - 1;
      if (sm_last) *counter = 0;  // ready for the next launch
    }
    __syncthreads();
    if (!sm_last) return;
  }
  // The merge runs over all splits with the whole block: the splits' maxima and sums
  // one split per thread, the outputs one split per warp at a time with the loads of
  // several splits in flight. (A single warp walking the splits one by one waited on L2
  // for each: ~40 µs per layer at a 4096-token context.) A single split is merged from
  // the warps' shared sums by warp 0 alone, the same arithmetic.
  __shared__ float sm_red[4];
  for (int i = 0; i < G; ++i) {
    float A[E], L = 0.0f;
#pragma unroll
    for (int e = 0; e < E; ++e) A[e] = 0.0f;
    if (splits == 1) {
      if (warp != 0) return;
      const float mm = fmaxf(fmaxf(sm_m[0][i], sm_m[1][i]), fmaxf(sm_m[2][i], sm_m[3][i]));
      for (int w = 0; w < 4; ++w)
        if (sm_m[w][i] != -INFINITY) {
          const float f = expf(sm_m[w][i] - mm);
          L += f * sm_l[w][i];
          if (lane < ln.active)
#pragma unroll
            for (int e = 0; e < E; ++e) A[e] += f * sm_acc[(w * G + i) * hd + lane * E + e];
        }
    } else {
      float mm = -INFINITY;
      for (int sp = threadIdx.x; sp < splits; sp += blockDim.x) mm = fmaxf(mm, partial(i, sp)[0]);
      mm = warp_max(mm);
      if (lane == 0) sm_red[warp] = mm;
      __syncthreads();
      mm = fmaxf(fmaxf(sm_red[0], sm_red[1]), fmaxf(sm_red[2], sm_red[3]));
      __syncthreads();
      for (int sp = threadIdx.x; sp < splits; sp += blockDim.x) {
        const float* part = partial(i, sp);
        if (part[0] != -INFINITY) L += expf(part[0] - mm) * part[1];
      }
      L = warp_sum(L);
      if (lane == 0) sm_red[warp] = L;
#pragma unroll 4
      for (int sp = warp; sp < splits; sp += 4) {
        const float* part = partial(i, sp);
        const float f = part[0] == -INFINITY ? 0.0f : expf(part[0] - mm);
        if (lane < ln.active)
#pragma unroll
          for (int e = 0; e < E; ++e) A[e] += f * part[2 + lane * E + e];
      }
      if (lane < ln.active)
#pragma unroll
        for (int e = 0; e < E; ++e) sm_acc[warp * hd + lane * E + e] = A[e];
      __syncthreads();
      if (warp == 0) {
        L = sm_red[0] + sm_red[1] + sm_red[2] + sm_red[3];
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int d = lane * E + e;
          A[e] = lane < ln.active ? sm_acc[d] + sm_acc[hd + d] + sm_acc[2 * hd + d] + sm_acc[3 * hd + d] : 0.0f;
        }
      }
    }
    // Head i's output from its unnormalized sum A and softmax sum L (warp 0): rotated back
    // (q4 KV), written, and its int8 records made.
    if (warp == 0) {
      const float inv = L > 0.0f ? 1.0f / L : 0.0f;
#pragma unroll
      for (int e = 0; e < E; ++e) A[e] = lane < ln.active ? A[e] * inv : 0.0f;
      if (rot) warp_hadamard<E>(A, hd, lane);
      if (lane < ln.active)
#pragma unroll
        for (int e = 0; e < E; ++e) out[(t * n_heads + h0 + i) * hd + lane * E + e] = A[e];
      if (out_q)
        quantize_act_lanes<E>(A, lane, lane < ln.active, static_cast<int64_t>(h0 + i) * hd,
                              static_cast<int64_t>(n_heads) * hd, out_q + t * q_stride);
    }
    if (splits > 1) __syncthreads();
  }
}

// ---- prefill attention: tensor-core flash attention ---------------------------------------
//
// Block (query tile of 64 rows, KV head g), 4 warps of 16 rows; rows enumerate (token,
// query head of the group). Per key tile of 64 positions the block puts K and V in shared
// memory as f16 (f16 KV: copied with cp.async, all of the tile's loads in flight; q8 and
// q4: their raw rows staged the same way, the next tile's during this tile's products,
// and decoded from shared memory; f32: row by row), then each warp, with everything else
// in registers (FlashAttention-2's layout): S = Q·Kᵀ with mma.sync m16n8k16 (f16 in, f32 accumulate;
// Q's fragments loaded once, K's with ldmatrix), the online softmax of its 16 rows (each
// row's 64 scores spread over the 4 lanes of a quad: two shuffles per reduction), P kept
// in registers as the next product's A fragments, and O += P·V (V's fragments with
// ldmatrix.trans). The first version, WMMA with S, P and O round-tripping through shared
// memory and the rows' softmax one at a time, took 240 us per layer for 512 tokens of
// llama2-7b on the H100 (~9 TFLOP/s).

constexpr int kBq = 64, kBk = 64;
static_assert(kBk <= 2 * kPageTokens, "a key tile touches at most three pages");

template <int HD>
struct FlashSmem {
  union {
    struct {
      __half k[kBk][HD + 8];  // rows padded by 16 bytes: ldmatrix's 8 row addresses hit distinct banks
      __half v[kBk][HD + 8];
    } kv;
    float o[kBq][HD + 4];  // the output, for the final rotation and store
  };
  __half q[kBq][HD + 8];
  int pos[kBq];
  int head[kBq];
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
// d += a·b for a 16×16 f16 tile a (row-major fragments), a 16×8 tile b, f32 d.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

template <int HD>
__global__ void __launch_bounds__(128) flash_prefill_kernel(DeviceKv kv, uint32_t layer, const float* q, int64_t n_tokens,
                                                            int n_heads, int n_kv_heads, const int32_t* positions,
                                                            const int32_t* slots, int window, float scale, float* out) {
  grid_dependency_wait();
  extern __shared__ __align__(128) uint8_t smem_raw[];
  FlashSmem<HD>& sm = *reinterpret_cast<FlashSmem<HD>*>(smem_raw);
  const int group = n_heads / n_kv_heads;
  const int g = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBq, rows = n_tokens * group;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  constexpr int E = HD / 32;
  const Lanes<E> ln = lanes_for<E>(HD);
  const bool rot = rotated(kv.layout.type, HD);
  const int slot = slots[0];
  const Regions regs = regions_of(kv, slot, layer, static_cast<uint32_t>(g));

  // Q rows (rotated for q4 KV) and their positions.
  for (int r = warp; r < kBq; r += 4) {
    const int64_t row = row0 + r;
    float x[E];
    const bool valid = row < rows;
    const int64_t t = valid ? row / group : 0;
    const int h = g * group + static_cast<int>(valid ? row % group : 0);
    for (int e = 0; e < E; ++e) x[e] = valid ? q[(t * n_heads + h) * HD + lane * E + e] : 0.0f;
    if (rot) warp_hadamard<E>(x, HD, lane);
    for (int e = 0; e < E; ++e) sm.q[r][lane * E + e] = __float2half_rn(x[e]);
    if (lane == 0) {
      sm.pos[r] = valid ? positions[t] : -1;
      sm.head[r] = h;
    }
  }
  __syncthreads();
  // Keys the tile needs: [lowest window start, highest position].
  int hi_pos = -1, lo_pos = INT32_MAX;
  for (int r = 0; r < kBq; ++r)
    if (sm.pos[r] >= 0) {
      hi_pos = max(hi_pos, sm.pos[r]);
      lo_pos = min(lo_pos, sm.pos[r]);
    }
  if (hi_pos < 0) return;
  const int64_t k_begin = window > 0 ? max(int64_t{0}, static_cast<int64_t>(lo_pos) - window + 1) : 0;
  const int64_t k_end = hi_pos + 1;

  // The warp's rows: r0 + qr and r0 + qr + 8 for this lane (qr = lane / 4; the lane's
  // columns of a 16×8 accumulator tile are 2·(lane % 4) + {0, 1}).
  const int r0 = warp * 16, qr = lane / 4, qc = 2 * (lane % 4);
  const int row_pos[2] = {sm.pos[r0 + qr], sm.pos[r0 + qr + 8]};
  int warp_hi = max(row_pos[0], row_pos[1]), warp_lo = INT32_MAX;
  for (int i = 0; i < 2; ++i)
    if (row_pos[i] >= 0) warp_lo = min(warp_lo, row_pos[i]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    warp_hi = max(warp_hi, __shfl_xor_sync(0xffffffffu, warp_hi, o));
    warp_lo = min(warp_lo, __shfl_xor_sync(0xffffffffu, warp_lo, o));
  }
  uint32_t qa[HD / 16][4];
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) ldmatrix_x4(qa[kk], &sm.q[r0 + lane % 16][kk * 16 + (lane / 16) * 8]);
  float o_acc[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o_acc[n][0] = o_acc[n][1] = o_acc[n][2] = o_acc[n][3] = 0.0f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  const float scale_log2 = scale * 1.4426950408889634f;  // softmax in base 2
  const bool copy_rows = kv.layout.type == KvType::f16;
  // q8 and q4 KV: the tile's raw rows go to shared memory after FlashSmem with cp.async
  // (K rows, V rows, then their scales), every load in flight at once, and the next
  // tile's copies are issued before this tile's products; the warps then decode rows from
  // shared memory. (Decoding each row straight from global memory, a warp waited on DRAM
  // 16 times per tile: INT8 KV prefill at depth 4096 ran at half the f16 KV speed.)
  const bool raw_rows = kv.layout.type == KvType::q8 || kv.layout.type == KvType::q4;
  const int rb = static_cast<int>(kv.layout.row_bytes());
  uint8_t* raw = smem_raw + sizeof(FlashSmem<HD>);
  __half* raw_scales = reinterpret_cast<__half*>(raw + 2 * kBk * rb);
  __half next_scale = __float2half_rn(0.0f);  // this thread's scale of the tile in flight (K rows, then V)
  auto issue = [&](int64_t t0) {
    const int per_row = rb / 16;
    for (int idx = threadIdx.x; idx < 2 * kBk * per_row; idx += blockDim.x) {
      const int kind = idx / (kBk * per_row), j = (idx / per_row) % kBk, c = idx % per_row;
      const int64_t p = t0 + j;
      if (p < k_end) copy_async(raw + (kind * kBk + j) * rb + c * 16, regs.at(p, kind) + (p % kPageTokens) * rb + c * 16, 16);
    }
    const int kind = static_cast<int>(threadIdx.x) / kBk, j = static_cast<int>(threadIdx.x) % kBk;  // 128 threads: one each
    const int64_t p = t0 + j;
    next_scale = p < k_end ? reinterpret_cast<const __half*>(regs.at(p, kind) + kv.layout.scales_offset())[p % kPageTokens]
                           : __float2half_rn(0.0f);
  };
  static_assert(2 * kBk == 128, "issue() gives each of the 128 threads one row's scale");
  if (raw_rows) issue(k_begin);

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBk) {
    __syncthreads();  // every warp is done with the previous tile
    if (copy_rows) {
      // f16 rows straight into the tile: HD / 8 chunks of 16 bytes per row; rows past the
      // end are zeros (their scores are masked, but P·V must not meet NaN bit patterns).
      constexpr int kChunks = HD / 8;
      for (int idx = threadIdx.x; idx < 2 * kBk * kChunks; idx += blockDim.x) {
        const int kind = idx / (kBk * kChunks), j = (idx / kChunks) % kBk, c = idx % kChunks;
        const int64_t p = k0 + j;
        __half* dst = (kind == 0 ? &sm.kv.k[j][0] : &sm.kv.v[j][0]) + c * 8;
        if (p < k_end) copy_async(dst, regs.at(p, kind) + (p % kPageTokens) * kv.layout.row_bytes() + c * 16, 16);
        else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
      copy_async_wait();
    } else {
      if (raw_rows) {
        raw_scales[threadIdx.x] = next_scale;
        copy_async_wait();
        __syncthreads();  // the raw tile is in shared memory for every warp
      }
      // The key offset rows of the (up to three) pages the tile touches, loaded up front.
      float off[3][E];
      if (kv.layout.key_offsets())
        for (int i = 0; i < 3; ++i) {
          const int64_t p = (k0 / kPageTokens + i) * kPageTokens;
          if (p < k_end) load_offset_row<E>(kv, regs.at(p, 0), ln, lane, off[i]);
        }
      for (int j = warp; j < kBk; j += 4) {  // K and V rows of the tile, as f16
        const int64_t p = k0 + j;
        float kx[E], vx[E];
        if (p < k_end) {
          if (raw_rows) {
            decode_row<E>(kv.layout.type, raw + j * rb, __half2float(raw_scales[j]), ln, lane, kx);
            decode_row<E>(kv.layout.type, raw + (kBk + j) * rb, __half2float(raw_scales[kBk + j]), ln, lane, vx);
          } else {
            load_row<E>(kv, regs.at(p, 0), p, ln, lane, kx);
            load_row<E>(kv, regs.at(p, 1), p, ln, lane, vx);
          }
          if (kv.layout.key_offsets()) {
            const int i = static_cast<int>(p / kPageTokens - k0 / kPageTokens);
#pragma unroll
            for (int e = 0; e < E; ++e) kx[e] += i == 0 ? off[0][e] : i == 1 ? off[1][e] : off[2][e];
          }
        } else {
          for (int e = 0; e < E; ++e) kx[e] = vx[e] = 0.0f;
        }
        for (int e = 0; e < E; ++e) {
          sm.kv.k[j][lane * E + e] = __float2half_rn(kx[e]);
          sm.kv.v[j][lane * E + e] = __float2half_rn(vx[e]);
        }
      }
      if (raw_rows) {
        __syncthreads();  // every warp has decoded its rows: the raw buffer takes the next tile
        if (k0 + kBk < k_end) issue(k0 + kBk);
      }
    }
    __syncthreads();
    // Keys after every row of the warp, or before all of their windows: nothing to add.
    if (k0 > warp_hi || (window > 0 && k0 + kBk - 1 <= static_cast<int64_t>(warp_lo) - window)) continue;

    // S = Q·Kᵀ: 8 tiles of 8 keys. ldmatrix x4 on K gives two key tiles' B fragments.
    float s[kBk / 8][4];
#pragma unroll
    for (int n = 0; n < kBk / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
#pragma unroll
      for (int n = 0; n < kBk / 8; n += 2) {
        uint32_t b[4];
        const int m = lane / 8;  // matrix m: keys (n + m / 2)·8.., dims kk·16 + (m % 2)·8
        ldmatrix_x4(b, &sm.kv.k[(n + m / 2) * 8 + lane % 8][kk * 16 + (m % 2) * 8]);
        mma_16816(s[n], qa[kk], b[0], b[1]);
        mma_16816(s[n + 1], qa[kk], b[2], b[3]);
      }
    // Online softmax for rows qr (i = 0) and qr + 8 (i = 1).
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kBk / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int i = c / 2, pos = row_pos[i];
        const int64_t kp = k0 + n * 8 + qc + c % 2;
        const bool ok = pos >= 0 && kp < k_end && kp <= pos && (window <= 0 || kp > pos - window);
        s[n][c] = ok ? s[n][c] * scale_log2 : -INFINITY;
        mx[i] = fmaxf(mx[i], s[n][c]);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
      const float m_new = fmaxf(m_run[i], mx[i]);
      m_use[i] = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing yet: every p is 0
      alpha[i] = exp2f(m_run[i] - m_use[i]);
      m_run[i] = m_new;
    }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < kBk / 8; ++n)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[n][c] = exp2f(s[n][c] - m_use[c / 2]);
        sum[c / 2] += s[n][c];
      }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 1);
      sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], 2);
      l_run[i] = l_run[i] * alpha[i] + sum[i];
    }
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      o_acc[n][0] *= alpha[0];
      o_acc[n][1] *= alpha[0];
      o_acc[n][2] *= alpha[1];
      o_acc[n][3] *= alpha[1];
    }
    // O += P·V: P's accumulator tiles 2j and 2j + 1 are the A fragment of keys 16j..16j+15.
#pragma unroll
    for (int j = 0; j < kBk / 16; ++j) {
      const uint32_t pa[4] = {pack_half2(s[2 * j][0], s[2 * j][1]), pack_half2(s[2 * j][2], s[2 * j][3]),
                              pack_half2(s[2 * j + 1][0], s[2 * j + 1][1]), pack_half2(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int n = 0; n < HD / 8; n += 2) {
        uint32_t b[4];
        const int m = lane / 8;  // matrix m: keys 16j + (m % 2)·8.., dims (n + m / 2)·8
        ldmatrix_x4_trans(b, &sm.kv.v[16 * j + (m % 2) * 8 + lane % 8][(n + m / 2) * 8]);
        mma_16816(o_acc[n], pa, b[0], b[1]);
        mma_16816(o_acc[n + 1], pa, b[2], b[3]);
      }
    }
  }
  __syncthreads();  // the K/V tile's space takes the output
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float inv = l_run[i] > 0.0f ? 1.0f / l_run[i] : 0.0f;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      sm.o[r0 + qr + 8 * i][n * 8 + qc] = o_acc[n][2 * i] * inv;
      sm.o[r0 + qr + 8 * i][n * 8 + qc + 1] = o_acc[n][2 * i + 1] * inv;
    }
  }
  __syncwarp();
  // Rotate back (q4 KV) and write the warp's rows.
  for (int r = r0; r < r0 + 16; ++r) {
    const int64_t row = row0 + r;
    if (row >= rows) break;
    float x[E];
    for (int e = 0; e < E; ++e) x[e] = sm.o[r][lane * E + e];
    if (rot) warp_hadamard<E>(x, HD, lane);
    const int64_t t = row / group;
    for (int e = 0; e < E; ++e) out[(t * n_heads + sm.head[r]) * HD + lane * E + e] = x[e];
  }
}

template <int HD>
void launch_flash(const DeviceKv& kv, uint32_t layer, const float* q, int64_t n, int64_t n_heads, int64_t n_kv_heads,
                  const int32_t* positions, const int32_t* slots, int32_t window, float* out, cudaStream_t stream) {
  // q8/q4 KV: the raw tile (K and V rows, their scales) after FlashSmem; q8 rows are the widest.
  const bool raw_rows = kv.layout.type == KvType::q8 || kv.layout.type == KvType::q4;
  const size_t smem = sizeof(FlashSmem<HD>) + (raw_rows ? 2 * kBk * (kv.layout.row_bytes() + sizeof(__half)) : 0);
  static bool configured = false;
  if (!configured) {
    const size_t most = sizeof(FlashSmem<HD>) + 2 * kBk * (HD + sizeof(__half));
    cudaFuncSetAttribute(flash_prefill_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most));
    configured = true;
  }
  const int64_t rows = n * (n_heads / n_kv_heads);
  const dim3 grid(static_cast<unsigned>((rows + kBq - 1) / kBq), static_cast<unsigned>(n_kv_heads));
  launch(flash_prefill_kernel<HD>, grid, 128, smem, stream, kv, layer, q, n, static_cast<int>(n_heads),
                                                        static_cast<int>(n_kv_heads), positions, slots, window,
                                                        1.0f / sqrtf(static_cast<float>(HD)), out);
}

}  // namespace

void kv_store(const DeviceKv& kv, uint32_t layer, const float* k, const float* v, int64_t n, const int32_t* positions,
              const int32_t* slots, const float* inv_freq, cudaStream_t stream) {
  rope_store(kv, layer, nullptr, nullptr, 0, k, v, n, positions, slots, inv_freq, stream);
}

void rope_store(const DeviceKv& kv, uint32_t layer, const float* q, float* q_out, int64_t n_heads, const float* k,
                const float* v, int64_t n, const int32_t* positions, const int32_t* slots, const float* inv_freq,
                cudaStream_t stream) {
  if (n == 0) return;
  const int64_t warps = n * 2 * kv.layout.n_kv_heads + (q ? n * n_heads : 0);
  const int hd = static_cast<int>(kv.layout.head_dim);
  // With key offset rows a batch of many tokens takes blocks of 32 warps (a KV head's
  // walk stores a page's rows at once); the row blocks take the same size.
  // Such a batch also stages each page's rows in shared memory; small batches (decode)
  // ask for none, so the kernel does not change the SM's shared-memory carve-out.
  const bool staged = kv.layout.key_offsets() && n > 4;
  const int threads = staged ? 32 * kWarp : 128;
  const size_t smem = staged ? (kPageTokens + 1) * static_cast<size_t>(hd) * sizeof(float) : 0;
  const unsigned key_blocks = kv.layout.key_offsets() ? kv.layout.n_kv_heads : 0;
  by_elements(hd, [&](auto e) {
    constexpr int E = decltype(e)::value;
    launch(staged ? kv_store_kernel<E, 32 * kWarp> : kv_store_kernel<E, 128>,
        dim3(key_blocks + blocks_for(warps * kWarp, threads)), threads, smem, stream, kv, layer, k, v, n,
        static_cast<int>(kv.layout.n_kv_heads), hd, positions, slots, inv_freq, q, q_out, static_cast<int>(n_heads),
        key_blocks, staged);
  });
}

size_t attention_scratch_floats(int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t max_context) {
  const int64_t splits = (max_context + kSplit - 1) / kSplit;
  return static_cast<size_t>(n_tokens * n_heads * splits * (head_dim + 2));
}

size_t attention_counters(int64_t n_tokens, int64_t n_heads) { return static_cast<size_t>(n_tokens * n_heads); }

namespace {
template <int E, int G>
void launch_split(const DeviceKv& kv, uint32_t layer, const float* q, int64_t n_tokens, int64_t n_heads,
                  int64_t n_kv_heads, const int32_t* positions, const int32_t* slots, int32_t window, int max_splits,
                  float* out, uint8_t* out_q, float* scratch, int* counters, cudaStream_t stream, bool early) {
  const int hd = static_cast<int>(kv.layout.head_dim);
  const int64_t group = n_heads / n_kv_heads;
  // Positions side by side in a warp (attend_split_kernel's P): q8 rows of one query head
  // per KV head, 16 quants per lane. (Other types keep P = 1: f16 rows side by side would
  // meet bank conflicts, q4 keys carry offset rows and a rotation across the warp.)
  constexpr int kP = G == 1 && E == 4 ? 4 : G == 1 && E == 8 ? 2 : 1;
  const bool side_by_side = kP > 1 && kv.layout.type == KvType::q8 && hd % (E * kP) == 0;
  const KvType type = kv.layout.type;
  const auto kernel = side_by_side              ? attend_split_kernel<E, G, KvType::q8, kP>
                      : type == KvType::q8      ? attend_split_kernel<E, G, KvType::q8, 1>
                      : type == KvType::q4      ? attend_split_kernel<E, G, KvType::q4, 1>
                      : type == KvType::f16     ? attend_split_kernel<E, G, KvType::f16, 1>
                                                : attend_split_kernel<E, G, KvType::f32, 1>;
  // Where two chunk buffers do not fit (f32 rows of 256-wide heads: 128 KB a chunk) the
  // block gets one and every split one chunk (`resident` too large to share them out):
  // the kernel then never touches the second buffer.
  const bool two = split_smem_bytes(G, hd, kv.layout, 2) <= device_limits().smem_optin;
  const size_t smem = split_smem_bytes(G, hd, kv.layout, two ? 2 : 1);
  if (smem > 48 * 1024)  // over the default limit (f32 and f16 KV, wide heads): asked for explicitly
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 128, smem) != cudaSuccess || per_sm < 1) per_sm = 1;
  const int resident = two ? per_sm * std::max(device_limits().sms, 1) : std::numeric_limits<int>::max();
  // The grid's splits: the most a context up to max_context takes. The kernel's split
  // count is at most ceil(resident / per_chunk) (its per_split >= chunks · per_chunk /
  // resident), so blocks past it would only return: at 4096 positions of 32 heads, 67
  // splits a head where 22 are used, 512 at a context of 32768. Such blocks cost little
  // (q4 decode at 4096 positions, INT8 KV, on the H100: 371.85 -> 372.04 tok/s; at a
  // chat's context of 4096 from depth 0: level); the grid now stays the GPU's size.
  const int64_t per_chunk = n_kv_heads * (group / G) * n_tokens;
  max_splits = static_cast<int>(std::min<int64_t>(max_splits, (int64_t{resident} + per_chunk - 1) / per_chunk));
  const dim3 grid(static_cast<unsigned>(n_kv_heads * (group / G)), static_cast<unsigned>(max_splits),
                  static_cast<unsigned>(n_tokens));
  launch(kernel, grid, 128, smem, stream,
      kv, layer, q, static_cast<int>(n_heads), static_cast<int>(n_kv_heads), hd, positions, slots, window, resident,
      max_splits, 1.0f / sqrtf(static_cast<float>(hd)), scratch, counters, out, out_q, act_bytes(n_heads * hd), early);
}
}  // namespace

void attention(const DeviceKv& kv, uint32_t layer, const float* q, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
               const int32_t* positions, const int32_t* slots, bool single_sequence, int32_t window, int64_t max_context,
               float* out, uint8_t* out_q, float* scratch, int* counters, cudaStream_t stream, bool launch_next_early) {
  if (n_tokens == 0) return;
  const int hd = static_cast<int>(kv.layout.head_dim);
  if (single_sequence && n_tokens > kMaxGemvTokens && (hd == 64 || hd == 128)) {
    if (hd == 64) launch_flash<64>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, out, stream);
    else launch_flash<128>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, out, stream);
    if (out_q) quantize_acts(out, n_tokens, n_heads * hd, out_q, stream);
    return;
  }
  if (out_q && hd % 32 != 0) {  // heads are not whole blocks of 32: quantized on their own
    attention(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, single_sequence, window, max_context, out,
              nullptr, scratch, counters, stream);
    quantize_acts(out, n_tokens, n_heads * hd, out_q, stream);
    return;
  }
  const int max_splits = static_cast<int>((max_context + kSplit - 1) / kSplit);
  const int64_t group = n_heads / n_kv_heads;
  // Heads per block: the largest of 8, 4, 2, 1 that divides the group.
  const int g_per_block = group % 8 == 0 ? 8 : group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
  by_elements(hd, [&](auto e) {
    constexpr int E = decltype(e)::value;
    switch (g_per_block) {
      case 8: launch_split<E, 8>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, max_splits, out, out_q, scratch, counters, stream, launch_next_early); break;
      case 4: launch_split<E, 4>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, max_splits, out, out_q, scratch, counters, stream, launch_next_early); break;
      case 2: launch_split<E, 2>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, max_splits, out, out_q, scratch, counters, stream, launch_next_early); break;
      default: launch_split<E, 1>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, max_splits, out, out_q, scratch, counters, stream, launch_next_early); break;
    }
  });
}

}  // namespace kvant::cuda
