// KV-cache writes and attention on the GPU, over the page layout of kernels/layout.h.
//
// Lanes and elements: a warp handles one head_dim-long row; lane l < A (A = hd / E,
// E = max(1, hd / 32)) holds elements [l·E, l·E + E). With the q4 row encoding (byte j
// holds elements j and j + hd/2), lanes below A/2 read the low nibbles of bytes
// [l·E, l·E + E) and lanes above read the high nibbles of the same bytes.
#include <mma.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace kvant::cuda {

namespace {

constexpr int kMaxE = 8;         // head_dim up to 256
constexpr int kMaxGroup = 8;     // query heads per KV head handled by one block
constexpr int kSplit = 256;      // positions per split-K block

struct Lanes {
  int e, active, half;  // elements per lane, active lanes, lanes per half row
};
__device__ __forceinline__ Lanes lanes_for(int hd) {
  const int e = hd >= 32 ? hd / 32 : 1;
  return {e, hd / e, hd / e / 2};
}

__device__ __forceinline__ bool rotated(KvType t, int hd) { return t == KvType::q4 && hd >= 16 && (hd & (hd - 1)) == 0; }

__device__ __forceinline__ uint8_t* region(const DeviceKv& kv, int slot, int64_t pos, uint32_t layer, uint32_t kind,
                                           uint32_t head) {
  const int32_t page = kv.page_table[static_cast<int64_t>(slot) * kv.max_pages + pos / kv.layout.page_tokens];
  return kv.base + static_cast<uint64_t>(page) * kv.layout.page_bytes() + kv.layout.region_offset(layer, kind, head);
}

// The lane's elements of row `pos` (0 for inactive lanes).
__device__ __forceinline__ void load_row(const DeviceKv& kv, const uint8_t* reg, int64_t pos, Lanes ln, int lane,
                                         float* x) {
  const int64_t slot = pos % kv.layout.page_tokens;
  const uint8_t* row = reg + slot * kv.layout.row_bytes();
  if (lane >= ln.active) {
    for (int e = 0; e < ln.e; ++e) x[e] = 0.0f;
    return;
  }
  const int first = lane * ln.e;
  switch (kv.layout.type) {
    case KvType::f32:
      for (int e = 0; e < ln.e; ++e) x[e] = reinterpret_cast<const float*>(row)[first + e];
      return;
    case KvType::f16:
      for (int e = 0; e < ln.e; ++e) x[e] = __half2float(reinterpret_cast<const __half*>(row)[first + e]);
      return;
    case KvType::q8: {
      const float d = __half2float(reinterpret_cast<const __half*>(reg + kv.layout.scales_offset())[slot]);
      for (int e = 0; e < ln.e; ++e) x[e] = d * static_cast<float>(reinterpret_cast<const int8_t*>(row)[first + e]);
      return;
    }
    case KvType::q4: {
      const float d = __half2float(reinterpret_cast<const __half*>(reg + kv.layout.scales_offset())[slot]);
      const bool high = lane >= ln.half;
      const int byte0 = (high ? lane - ln.half : lane) * ln.e;
      for (int e = 0; e < ln.e; ++e) {
        const uint8_t b = row[byte0 + e];
        x[e] = d * static_cast<float>((high ? (b >> 4) : (b & 0x0f)) - 8);
      }
      return;
    }
  }
}

// Normalized Walsh-Hadamard transform of a row spread over a warp (see the top).
__device__ __forceinline__ void warp_hadamard(float* x, Lanes ln, int hd, int lane) {
  for (int h = 1; h < hd; h *= 2) {
    if (h < ln.e) {
      for (int e = 0; e < ln.e; ++e)
        if ((e & h) == 0) {
          const float a = x[e], b = x[e + h];
          x[e] = a + b;
          x[e + h] = a - b;
        }
    } else {
      const int mask = h / ln.e;
      for (int e = 0; e < ln.e; ++e) {
        const float p = __shfl_xor_sync(0xffffffffu, x[e], mask);
        x[e] = (lane & mask) ? p - x[e] : x[e] + p;
      }
    }
  }
  const float s = 1.0f / sqrtf(static_cast<float>(hd));
  for (int e = 0; e < ln.e; ++e) x[e] *= s;
}

// ---- KV store ----------------------------------------------------------------------------

// One warp per (token, KV head, keys or values).
__global__ void kv_store_kernel(DeviceKv kv, uint32_t layer, const float* k, const float* v, int64_t n, int n_kv_heads,
                                int hd, const int32_t* positions, const int32_t* slots, const float* inv_freq) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t t = warp / (2 * n_kv_heads);
  if (t >= n) return;
  const int g = static_cast<int>((warp / 2) % n_kv_heads), kind = static_cast<int>(warp % 2);
  const Lanes ln = lanes_for(hd);
  const float* src = (kind == 0 ? k : v) + (t * n_kv_heads + g) * hd;
  float x[kMaxE];
  for (int e = 0; e < ln.e; ++e) x[e] = lane < ln.active ? src[lane * ln.e + e] : 0.0f;
  const int64_t pos = positions[t];
  if (kind == 0 && inv_freq) {  // RoPE: element i pairs with i + hd/2, held by lane ^ half
    for (int e = 0; e < ln.e; ++e) {
      const float partner = __shfl_xor_sync(0xffffffffu, x[e], ln.half);
      if (lane < ln.active) {
        const int i = (lane % ln.half) * ln.e + e;
        float s, c;
        sincosf(static_cast<float>(pos) * inv_freq[i], &s, &c);
        x[e] = lane < ln.half ? x[e] * c - partner * s : x[e] * c + partner * s;
      }
    }
  }
  uint8_t* reg = region(kv, slots[t], pos, layer, static_cast<uint32_t>(kind), static_cast<uint32_t>(g));
  const int64_t slot = pos % kv.layout.page_tokens;
  uint8_t* row = reg + slot * kv.layout.row_bytes();
  __half* scale = reinterpret_cast<__half*>(reg + kv.layout.scales_offset()) + slot;
  const int first = lane * ln.e;
  switch (kv.layout.type) {
    case KvType::f32:
      if (lane < ln.active)
        for (int e = 0; e < ln.e; ++e) reinterpret_cast<float*>(row)[first + e] = x[e];
      return;
    case KvType::f16:
      if (lane < ln.active)
        for (int e = 0; e < ln.e; ++e) reinterpret_cast<__half*>(row)[first + e] = __float2half_rn(x[e]);
      return;
    case KvType::q8: {
      float amax = 0.0f;
      for (int e = 0; e < ln.e; ++e) amax = fmaxf(amax, fabsf(x[e]));
      amax = warp_max(amax);
      const __half sc = __float2half_rn(amax / 127.0f);
      const float d = __half2float(sc);
      const float id = d > 0.0f ? 1.0f / d : 0.0f;
      if (lane < ln.active)
        for (int e = 0; e < ln.e; ++e)
          reinterpret_cast<int8_t*>(row)[first + e] = static_cast<int8_t>(fminf(fmaxf(rintf(x[e] * id), -127.0f), 127.0f));
      if (lane == 0) *scale = sc;
      return;
    }
    case KvType::q4: {
      if (rotated(KvType::q4, hd)) warp_hadamard(x, ln, hd, lane);
      float amax = 0.0f;
      for (int e = 0; e < ln.e; ++e) amax = fmaxf(amax, fabsf(x[e]));
      amax = warp_max(amax);
      __half best = __float2half_rn(0.0f);
      float best_err = INFINITY;
      for (int c = 0; c < 16 && amax > 0.0f; ++c) {
        const __half sc = __float2half_rn(amax / (5.0f + 0.2f * static_cast<float>(c)));
        const float d = __half2float(sc);
        if (!(d > 0.0f)) continue;
        float err = 0.0f;
        for (int e = 0; e < ln.e; ++e) {
          const float r = x[e] - d * fminf(fmaxf(rintf(x[e] / d), -8.0f), 7.0f);
          err += r * r;
        }
        err = warp_sum(err);
        if (err < best_err) {
          best_err = err;
          best = sc;
        }
      }
      const float d = __half2float(best);
      for (int e = 0; e < ln.e; ++e) {
        const int q = d > 0.0f ? static_cast<int>(fminf(fmaxf(rintf(x[e] / d), -8.0f), 7.0f)) : 0;
        const int hi = __shfl_xor_sync(0xffffffffu, q, ln.half);
        if (lane < ln.half) row[first + e] = static_cast<uint8_t>((q + 8) | ((hi + 8) << 4));
      }
      if (lane == 0) *scale = best;
      return;
    }
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

// Block (KV head g, split s, token t), 4 warps. Each warp walks its positions with an
// online softmax per query head; the warps merge in shared memory; the split's partial
// (max, sum, unnormalized output) goes to scratch for attend_combine.
__global__ void __launch_bounds__(128) attend_split_kernel(DeviceKv kv, uint32_t layer, const float* q, int n_heads,
                                                           int n_kv_heads, int hd, const int32_t* positions,
                                                           const int32_t* slots, int window, int max_splits, float scale,
                                                           float* scratch) {
  const int heads_per_block = min(n_heads / n_kv_heads, kMaxGroup);
  const int sub = n_heads / n_kv_heads / heads_per_block;
  const int g = blockIdx.x / sub, h0 = g * (n_heads / n_kv_heads) + (blockIdx.x % sub) * heads_per_block;
  const int s = blockIdx.y;
  const int64_t t = blockIdx.z;
  const Range r = attended(positions, t, window);
  const int64_t lo = r.begin + static_cast<int64_t>(s) * kSplit;
  if (lo >= r.end) return;
  const int64_t hi = min(r.end, lo + kSplit);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const Lanes ln = lanes_for(hd);
  const bool rot = rotated(kv.layout.type, hd);

  __shared__ float sm_m[4][kMaxGroup], sm_l[4][kMaxGroup];
  extern __shared__ float sm_acc[];  // [4][heads_per_block][hd]

  float qv[kMaxGroup][kMaxE];
  for (int i = 0; i < heads_per_block; ++i) {
    for (int e = 0; e < ln.e; ++e)
      qv[i][e] = lane < ln.active ? q[(t * n_heads + h0 + i) * hd + lane * ln.e + e] : 0.0f;
    if (rot) warp_hadamard(qv[i], ln, hd, lane);
  }
  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][kMaxE];
  for (int i = 0; i < kMaxGroup; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
    for (int e = 0; e < kMaxE; ++e) acc[i][e] = 0.0f;
  }
  const int slot = slots[t];
  float kf[kMaxE], vf[kMaxE];
  for (int64_t p = lo + warp; p < hi; p += 4) {
    load_row(kv, region(kv, slot, p, layer, 0, static_cast<uint32_t>(g)), p, ln, lane, kf);
    load_row(kv, region(kv, slot, p, layer, 1, static_cast<uint32_t>(g)), p, ln, lane, vf);
    for (int i = 0; i < heads_per_block; ++i) {
      float d = 0.0f;
      for (int e = 0; e < ln.e; ++e) d += qv[i][e] * kf[e];
      const float sc = warp_sum(d) * scale;
      const float m_new = fmaxf(m[i], sc);
      const float corr = expf(m[i] - m_new), pe = expf(sc - m_new);
      l[i] = l[i] * corr + pe;
      for (int e = 0; e < ln.e; ++e) acc[i][e] = acc[i][e] * corr + pe * vf[e];
      m[i] = m_new;
    }
  }
  for (int i = 0; i < heads_per_block; ++i) {
    if (lane == 0) {
      sm_m[warp][i] = m[i];
      sm_l[warp][i] = l[i];
    }
    if (lane < ln.active)
      for (int e = 0; e < ln.e; ++e) sm_acc[(warp * heads_per_block + i) * hd + lane * ln.e + e] = acc[i][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < heads_per_block * (hd + 2); idx += blockDim.x) {
    const int i = idx / (hd + 2), d = idx % (hd + 2);
    float mm = -INFINITY;
    for (int w = 0; w < 4; ++w) mm = fmaxf(mm, sm_m[w][i]);
    float value = 0.0f;
    if (d == 0) {
      value = mm;
    } else {
      for (int w = 0; w < 4; ++w) {
        if (sm_m[w][i] == -INFINITY) continue;
        const float f = expf(sm_m[w][i] - mm);
        value += f * (d == 1 ? sm_l[w][i] : sm_acc[(w * heads_per_block + i) * hd + d - 2]);
      }
    }
    scratch[((t * n_heads + h0 + i) * static_cast<int64_t>(max_splits) + s) * (hd + 2) + d] = value;
  }
}

// Block (head, token) of hd threads: merges the splits, normalizes, un-rotates q4 rows.
__global__ void attend_combine_kernel(const int32_t* positions, int n_heads, int hd, int window, int max_splits,
                                      bool rot, const float* scratch, float* out) {
  const int h = blockIdx.x;
  const int64_t t = blockIdx.y;
  const int d = threadIdx.x;
  const Range r = attended(positions, t, window);
  const int splits = static_cast<int>((r.end - r.begin + kSplit - 1) / kSplit);
  const float* base = scratch + (t * n_heads + h) * static_cast<int64_t>(max_splits) * (hd + 2);
  float mm = -INFINITY;
  for (int s = 0; s < splits; ++s) mm = fmaxf(mm, base[s * (hd + 2)]);
  float L = 0.0f, A = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float* part = base + s * (hd + 2);
    if (part[0] == -INFINITY) continue;
    const float f = expf(part[0] - mm);
    L += f * part[1];
    A += f * part[2 + d];
  }
  extern __shared__ float row[];
  row[d] = L > 0.0f ? A / L : 0.0f;
  __syncthreads();
  if (rot) {  // back from the Hadamard basis
    for (int step = 1; step < hd; step *= 2) {
      const float a = row[d], b = row[d ^ step];
      __syncthreads();
      row[d] = (d & step) ? b - a : a + b;
      __syncthreads();
    }
    row[d] *= 1.0f / sqrtf(static_cast<float>(hd));
  }
  out[(t * n_heads + h) * hd + d] = row[d];
}

// ---- prefill attention: tensor-core flash attention ---------------------------------------
//
// Block (query tile of 64 rows, KV head g), 4 warps; rows enumerate (token, query head of
// the group). Per key tile of 64 positions: K and V are dequantized to f16 in shared
// memory, S = Q·Kᵀ on tensor cores (WMMA 16×16×16, f32 accumulate), each warp runs the
// online softmax for its 16 rows (causal and sliding-window masks), writes P in f16 and
// rescales its rows of O, and O += P·V on tensor cores. O stays in shared memory in f32.

namespace wmma = nvcuda::wmma;
constexpr int kBq = 64, kBk = 64;

template <int HD>
struct FlashSmem {
  __half q[kBq][HD + 8];
  __half k[kBk][HD + 8];
  __half v[kBk][HD + 8];
  float s[kBq][kBk + 4];
  __half p[kBq][kBk + 8];
  float o[kBq][HD + 4];
  float m[kBq], l[kBq];
  int pos[kBq];
  int head[kBq];
};

template <int HD>
__global__ void __launch_bounds__(128) flash_prefill_kernel(DeviceKv kv, uint32_t layer, const float* q, int64_t n_tokens,
                                                            int n_heads, int n_kv_heads, const int32_t* positions,
                                                            const int32_t* slots, int window, float scale, float* out) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  FlashSmem<HD>& sm = *reinterpret_cast<FlashSmem<HD>*>(smem_raw);
  const int group = n_heads / n_kv_heads;
  const int g = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kBq, rows = n_tokens * group;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const Lanes ln = lanes_for(HD);
  const bool rot = rotated(kv.layout.type, HD);
  const int slot = slots[0];

  // Q rows (rotated for q4 KV), their positions, and the empty running state.
  for (int r = warp; r < kBq; r += 4) {
    const int64_t row = row0 + r;
    float x[kMaxE];
    const bool valid = row < rows;
    const int64_t t = valid ? row / group : 0;
    const int h = g * group + static_cast<int>(valid ? row % group : 0);
    for (int e = 0; e < ln.e; ++e) x[e] = valid ? q[(t * n_heads + h) * HD + lane * ln.e + e] : 0.0f;
    if (rot) warp_hadamard(x, ln, HD, lane);
    for (int e = 0; e < ln.e; ++e) {
      sm.q[r][lane * ln.e + e] = __float2half_rn(x[e]);
      sm.o[r][lane * ln.e + e] = 0.0f;
    }
    if (lane == 0) {
      sm.pos[r] = valid ? positions[t] : -1;
      sm.head[r] = h;
      sm.m[r] = -INFINITY;
      sm.l[r] = 0.0f;
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

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBk) {
    for (int j = warp; j < kBk; j += 4) {  // K and V rows of the tile, as f16
      const int64_t p = k0 + j;
      float kx[kMaxE], vx[kMaxE];
      if (p < k_end) {
        load_row(kv, region(kv, slot, p, layer, 0, static_cast<uint32_t>(g)), p, ln, lane, kx);
        load_row(kv, region(kv, slot, p, layer, 1, static_cast<uint32_t>(g)), p, ln, lane, vx);
      } else {
        for (int e = 0; e < ln.e; ++e) kx[e] = vx[e] = 0.0f;
      }
      for (int e = 0; e < ln.e; ++e) {
        sm.k[j][lane * ln.e + e] = __float2half_rn(kx[e]);
        sm.v[j][lane * ln.e + e] = __float2half_rn(vx[e]);
      }
    }
    __syncthreads();
    const int r0 = warp * 16;
    // S = Q Kᵀ for the warp's 16 rows.
    for (int c = 0; c < kBk / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < HD / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
        wmma::load_matrix_sync(a, &sm.q[r0][kk * 16], HD + 8);
        wmma::load_matrix_sync(b, &sm.k[c * 16][kk * 16], HD + 8);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(&sm.s[r0][c * 16], acc, kBk + 4, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax of the warp's rows; P in f16; rescale O.
    for (int r = r0; r < r0 + 16; ++r) {
      const int pos = sm.pos[r];
      float sv[2];
      bool ok[2];
      for (int i = 0; i < 2; ++i) {
        const int col = lane + 32 * i;
        const int64_t kp = k0 + col;
        ok[i] = pos >= 0 && kp < k_end && kp <= pos && (window <= 0 || kp > pos - window);
        sv[i] = ok[i] ? sm.s[r][col] * scale : -INFINITY;
      }
      const float mx = warp_max(fmaxf(sv[0], sv[1]));
      const float m_old = sm.m[r];
      const float m_new = fmaxf(m_old, mx);
      float pr[2];
      for (int i = 0; i < 2; ++i) pr[i] = ok[i] ? expf(sv[i] - m_new) : 0.0f;
      const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
      const float sum = warp_sum(pr[0] + pr[1]);
      __syncwarp();
      if (lane == 0) {
        sm.m[r] = m_new;
        sm.l[r] = sm.l[r] * alpha + sum;
      }
      sm.p[r][lane] = __float2half_rn(pr[0]);
      sm.p[r][lane + 32] = __float2half_rn(pr[1]);
      for (int d = lane; d < HD; d += kWarp) sm.o[r][d] *= alpha;
    }
    __syncwarp();
    // O += P V for the warp's rows.
    for (int c = 0; c < HD / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, &sm.o[r0][c * 16], HD + 4, wmma::mem_row_major);
      for (int kk = 0; kk < kBk / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
        wmma::load_matrix_sync(a, &sm.p[r0][kk * 16], kBk + 8);
        wmma::load_matrix_sync(b, &sm.v[kk * 16][c * 16], HD + 8);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(&sm.o[r0][c * 16], acc, HD + 4, wmma::mem_row_major);
    }
    __syncthreads();  // K/V are overwritten next
  }
  // Normalize, rotate back, write.
  for (int r = warp; r < kBq; r += 4) {
    const int64_t row = row0 + r;
    if (row >= rows) continue;
    const float inv = sm.l[r] > 0.0f ? 1.0f / sm.l[r] : 0.0f;
    float x[kMaxE];
    for (int e = 0; e < ln.e; ++e) x[e] = sm.o[r][lane * ln.e + e] * inv;
    if (rot) warp_hadamard(x, ln, HD, lane);
    const int64_t t = row / group;
    for (int e = 0; e < ln.e; ++e) out[(t * n_heads + sm.head[r]) * HD + lane * ln.e + e] = x[e];
  }
}

template <int HD>
void launch_flash(const DeviceKv& kv, uint32_t layer, const float* q, int64_t n, int64_t n_heads, int64_t n_kv_heads,
                  const int32_t* positions, const int32_t* slots, int32_t window, float* out, cudaStream_t stream) {
  const size_t smem = sizeof(FlashSmem<HD>);
  static bool configured = false;
  if (!configured) {
    cudaFuncSetAttribute(flash_prefill_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    configured = true;
  }
  const int64_t rows = n * (n_heads / n_kv_heads);
  const dim3 grid(static_cast<unsigned>((rows + kBq - 1) / kBq), static_cast<unsigned>(n_kv_heads));
  flash_prefill_kernel<HD><<<grid, 128, smem, stream>>>(kv, layer, q, n, static_cast<int>(n_heads),
                                                        static_cast<int>(n_kv_heads), positions, slots, window,
                                                        1.0f / sqrtf(static_cast<float>(HD)), out);
}

}  // namespace

void kv_store(const DeviceKv& kv, uint32_t layer, const float* k, const float* v, int64_t n, const int32_t* positions,
              const int32_t* slots, const float* inv_freq, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t warps = n * 2 * kv.layout.n_kv_heads;
  kv_store_kernel<<<blocks_for(warps * kWarp, 128), 128, 0, stream>>>(kv, layer, k, v, n,
                                                                       static_cast<int>(kv.layout.n_kv_heads),
                                                                       static_cast<int>(kv.layout.head_dim), positions,
                                                                       slots, inv_freq);
}

size_t attention_scratch_floats(int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t max_context) {
  const int64_t splits = (max_context + kSplit - 1) / kSplit;
  return static_cast<size_t>(n_tokens * n_heads * splits * (head_dim + 2));
}

void attention(const DeviceKv& kv, uint32_t layer, const float* q, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
               const int32_t* positions, const int32_t* slots, bool single_sequence, int32_t window, int64_t max_context,
               float* out, float* scratch, cudaStream_t stream) {
  if (n_tokens == 0) return;
  const int hd = static_cast<int>(kv.layout.head_dim);
  if (single_sequence && n_tokens > kMaxGemvTokens && (hd == 64 || hd == 128)) {
    if (hd == 64) launch_flash<64>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, out, stream);
    else launch_flash<128>(kv, layer, q, n_tokens, n_heads, n_kv_heads, positions, slots, window, out, stream);
    return;
  }
  const int group = static_cast<int>(n_heads / n_kv_heads);
  const int per_block = std::min(group, kMaxGroup);
  const int max_splits = static_cast<int>((max_context + kSplit - 1) / kSplit);
  const dim3 grid(static_cast<unsigned>(n_kv_heads * (group / per_block)), static_cast<unsigned>(max_splits),
                  static_cast<unsigned>(n_tokens));
  const size_t smem = static_cast<size_t>(4 * per_block * hd) * sizeof(float);
  attend_split_kernel<<<grid, 128, smem, stream>>>(kv, layer, q, static_cast<int>(n_heads), static_cast<int>(n_kv_heads),
                                                   hd, positions, slots, window, max_splits,
                                                   1.0f / sqrtf(static_cast<float>(hd)), scratch);
  const bool rot = kv.layout.type == KvType::q4 && hd >= 16 && (hd & (hd - 1)) == 0;
  attend_combine_kernel<<<dim3(static_cast<unsigned>(n_heads), static_cast<unsigned>(n_tokens)), static_cast<unsigned>(hd),
                          static_cast<size_t>(hd) * sizeof(float), stream>>>(positions, static_cast<int>(n_heads), hd,
                                                                            window, max_splits, rot, scratch, out);
}

}  // namespace kvant::cuda
