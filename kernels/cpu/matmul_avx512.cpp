// AVX-512 matmul kernels (F, BW, VL, DQ, VNNI). Compiled with the flags in
// kernels/CMakeLists.txt; only called when the CPU has them (cpu_features.cpp).
//
// Quantized weights, for a tile of R rows × T tokens, per chunk of 64 weights (two
// blocks of 32): one vpdpbusd per (row, token) gives 16 int32 lanes, lanes 0-7 from
// block 2c and 8-15 from block 2c+1; they are converted to float and multiplied by the
// lane's scale (weight scale · activation scale, permuted from 16 block scales loaded
// once per 512 weights). All lanes are summed at the end, so q4's +8 offset is removed
// by subtracting w_scale · corr for each block in the same accumulator. From
// kPackedMinTokens tokens on, q8/q4 weights are rearranged so that a lane holds a block
// instead (matmul_packed).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/avx512_common.h"
#include "kernels/cpu/matmul.h"

namespace kvant::cpu::detail {

namespace {

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// ---- activation quantization (bit-identical to the reference) -----------------------

void quantize_acts_avx512(const float* x, int64_t k, uint8_t* record) {
  auto* q = reinterpret_cast<int8_t*>(record);
  uint8_t* qu = record + k;
  auto* lo = reinterpret_cast<int8_t*>(record + 2 * k);
  auto* scale = reinterpret_cast<float*>(record + 3 * k);
  float* corr = scale + k / 32;
  const __m512 magic = _mm512_set1_ps(12582912.0f), r256 = _mm512_set1_ps(256.0f);
  const __m512 lo_min = _mm512_set1_ps(-127.0f), lo_max = _mm512_set1_ps(127.0f);
  // The residual t − round(t) in 1/256 steps, rounded and clamped as the reference does.
  auto residual = [&](__m512 t, __m512 r) {
    const __m512 l = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(t, r), r256), magic), magic);
    return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(l, lo_min), lo_max)));
  };
  for (int64_t b = 0; b < k / 32; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
    // fpclass 0x99: QNaN, +Inf, -Inf, SNaN.
    if (_mm512_fpclass_ps_mask(v0, 0x99) | _mm512_fpclass_ps_mask(v1, 0x99)) {
      write_nonfinite_block(record, k, b);
      continue;
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = act_block_scale(amax);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512 t0 = _mm512_mul_ps(v0, vid), t1 = _mm512_mul_ps(v1, vid);
    const __m512 r0 = _mm512_sub_ps(_mm512_add_ps(t0, magic), magic), r1 = _mm512_sub_ps(_mm512_add_ps(t1, magic), magic);
    const __m512i i0 = _mm512_cvttps_epi32(r0), i1 = _mm512_cvttps_epi32(r1);
    const __m256i lo_bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(residual(t0, r0)), residual(t1, r1), 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + b * 32), lo_bytes);
    const __m128i b0 = _mm512_cvtepi32_epi8(i0), b1 = _mm512_cvtepi32_epi8(i1);
    const __m256i bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(b0), b1, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32), bytes);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qu + b * 32), _mm256_xor_si256(bytes, _mm256_set1_epi8(-128)));
    const __m512i l0 = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(lo_bytes));
    const __m512i l1 = _mm512_cvtepi8_epi32(_mm256_extracti128_si256(lo_bytes, 1));
    const int32_t sum = 256 * _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1)) +
                        _mm512_reduce_add_epi32(_mm512_add_epi32(l0, l1));
    scale[b] = d;
    corr[b] = 8.0f * d * static_cast<float>(sum) * (1.0f / 256.0f);
  }
}

// ---- software prefetch for decode ----------------------------------------------------

int64_t row_bytes(const WeightMatrix& w) {
  return w.dtype == DType::q4 ? w.cols / 2 : w.dtype == DType::q8 ? w.cols : w.dtype == DType::f32 ? w.cols * 4 : w.cols * 2;
}

// While a 4-row tile computes one token, the next tile's weights are prefetched a few
// lines per step of its inner loop, so that each line is asked for one tile's time
// before it is read and the requests reach memory as a steady stream. (Asking for the
// whole next tile at once, 64 prefetches for a 2048-wide q4 tile, left the tile's own
// loads queued behind them: llama-1b q4 decode 47 -> 65 tok/s on two threads.)
struct PrefetchStream {
  const char* next = nullptr;  // the next line to ask for
  const char* end = nullptr;
  int lines_per_step = 0;      // 0: off

  void step() {
    for (int l = 0; l < lines_per_step; ++l, next += 64)
      if (next < end) _mm_prefetch(next, _MM_HINT_T0);
  }
};

// Software prefetch of rows [rb, re) (clipped by the caller): their block scales, and
// their weights too where `weights`, every cache line at once. A 4-row tile of a
// 2048-wide q4 matrix is one 4 KB page, where the hardware prefetcher starts over.
void prefetch_rows(const MatmulArgs& a, int64_t rb, int64_t re, bool weights) {
  if (rb >= re) return;
  if (weights) {
    const auto* begin = reinterpret_cast<const char*>(a.w.data + rb * row_bytes(a.w));
    const auto* end = reinterpret_cast<const char*>(a.w.data + re * row_bytes(a.w));
    for (const char* p = begin; p < end; p += 64) _mm_prefetch(p, _MM_HINT_T0);
  }
  if (a.w.quantized()) {
    const auto* sb = reinterpret_cast<const char*>(a.w.scales() + rb * (a.w.cols / 32));
    const auto* se = reinterpret_cast<const char*>(a.w.scales() + re * (a.w.cols / 32));
    for (const char* p = sb; p < se; p += 64) _mm_prefetch(p, _MM_HINT_T0);
  }
}

// ---- quantized weights -------------------------------------------------------------

// Lane-scale permutation for chunk c of a 16-block group: lanes 0-7 <- block 2c, 8-15 <- 2c+1.
// A table, loaded instead of built: building it took two vector operations per chunk.
inline __m512i chunk_index(int c) {
  alignas(64) static const auto kTable = [] {
    std::array<std::array<int32_t, 16>, 8> t{};
    for (int chunk = 0; chunk < 8; ++chunk)
      for (int lane = 0; lane < 16; ++lane) t[chunk][lane] = 2 * chunk + lane / 8;
    return t;
  }();
  return _mm512_load_si512(kTable[c].data());
}

// 32 bytes of q4 -> 64 unsigned nibbles in natural order (low nibbles, then high).
inline __m512i unpack_q4(const uint8_t* p) {
  const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
  return _mm512_and_si512(_mm512_srlv_epi16(v, shift), _mm512_set1_epi8(0x0f));
}

template <DType D, int R, int T>
inline void quant_tile(const MatmulArgs& a, int64_t r, int64_t t, PrefetchStream& pf) {
  const int64_t k = a.w.cols, blocks = k / 32;
  const size_t rec = act_record_bytes(k);
  const uint16_t* ws[R];
  const uint8_t* wq[R];
  for (int i = 0; i < R; ++i) {
    ws[i] = a.w.scales() + (r + i) * blocks;
    wq[i] = a.w.data + (r + i) * (D == DType::q4 ? k / 2 : k);
  }
  const int8_t* xq[T];
  const uint8_t* xu[T];
  const int8_t* xl[T];
  const float* xs[T];
  const float* xc[T];
  for (int j = 0; j < T; ++j) {
    const ActRecord rec_j(a.xq + (t + j) * rec, k);
    xq[j] = rec_j.q;
    xu[j] = rec_j.qu;
    xl[j] = rec_j.lo;
    xs[j] = rec_j.scale;
    xc[j] = rec_j.corr;
  }
  // The int32 sums are 256 · Σ w·q + Σ w·lo; the 1/256 goes into the scale.
  const __m512 sx_unit = _mm512_set1_ps(1.0f / 256.0f);
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();

  for (int64_t g = 0; g < blocks; g += 16) {
    const int nb = static_cast<int>(blocks - g < 16 ? blocks - g : 16);
    const __mmask16 m = static_cast<__mmask16>(nb == 16 ? 0xffff : (1u << nb) - 1u);
    __m512 sw[R], sx[T];
    for (int i = 0; i < R; ++i) sw[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, ws[i] + g));
    for (int j = 0; j < T; ++j) sx[j] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xs[j] + g), sx_unit);
    if constexpr (D == DType::q4) {
      for (int j = 0; j < T; ++j) {
        const __m512 corr = _mm512_maskz_loadu_ps(m, xc[j] + g);
        for (int i = 0; i < R; ++i) acc[i][j] = _mm512_fnmadd_ps(sw[i], corr, acc[i][j]);
      }
    }
    // One token (decode): the weight and activation scales multiplied once per 16 blocks,
    // then permuted per chunk (with more tokens the products would not fit the registers).
    if constexpr (T == 1)
      for (int i = 0; i < R; ++i) sw[i] = _mm512_mul_ps(sw[i], sx[0]);
    for (int c = 0; c < nb / 2; ++c) {
      const int64_t chunk = g / 2 + c;
      pf.step();
      const __m512i idx = chunk_index(c);
      __m512i xv[T], xlv[T];
      __m512 sxl[T];
      for (int j = 0; j < T; ++j) {
        if constexpr (D == DType::q4) {
          xv[j] = _mm512_loadu_si512(xq[j] + chunk * 64);
          xlv[j] = _mm512_loadu_si512(xl[j] + chunk * 64);
        } else {
          xv[j] = _mm512_loadu_si512(xu[j] + chunk * 64);
          xlv[j] = _mm512_xor_si512(_mm512_loadu_si512(xl[j] + chunk * 64), _mm512_set1_epi8(-128));  // lo + 128
        }
        if constexpr (T > 1) sxl[j] = _mm512_permutexvar_ps(idx, sx[j]);  // T == 1: in sw already
      }
      for (int i = 0; i < R; ++i) {
        __m512i wv, base;
        if constexpr (D == DType::q4) {
          wv = unpack_q4(wq[i] + chunk * 32);
          base = _mm512_setzero_si512();
        } else {
          wv = _mm512_loadu_si512(wq[i] + chunk * 64);
          // −128 · Σw per group of 4: the unsigned activations carry +128.
          base = _mm512_sub_epi32(_mm512_setzero_si512(),
                                  _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), wv));
        }
        const __m512 swl = _mm512_permutexvar_ps(idx, sw[i]);
        for (int j = 0; j < T; ++j) {
          __m512i dp;
          if constexpr (D == DType::q4) {
            const __m512i hi = _mm512_slli_epi32(_mm512_dpbusd_epi32(base, wv, xv[j]), 8);
            dp = _mm512_dpbusd_epi32(hi, wv, xlv[j]);
          } else {
            const __m512i hi = _mm512_slli_epi32(_mm512_dpbusd_epi32(base, xv[j], wv), 8);
            dp = _mm512_dpbusd_epi32(_mm512_add_epi32(hi, base), xlv[j], wv);
          }
          __m512 scale = swl;
          if constexpr (T > 1) scale = _mm512_mul_ps(swl, sxl[j]);
          acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), scale, acc[i][j]);
        }
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) {
      float& y = a.y[(t + j) * a.ldy + r + i - a.y_row0];
      const float v = hsum(acc[i][j]);
      y = a.accumulate ? y + v : v;
    }
}

// ---- quantized weights, many tokens: one lane per block --------------------------------
//
// quant_tile converts and scales every vpdpbusd result (two blocks of eight lanes per 64
// weights). With many tokens, a row tile's weights are reused by all of them, so they are
// rearranged once: per group of 16 blocks (512 values), unpacked to signed bytes and
// stored as 8 vectors, vector s holding values 4s..4s+3 of every block, lane b = block b.
// The activations are arranged the same way once per token (pack_acts, by the quantize
// op). A lane then accumulates its block over all 8 vectors in int32, and the
// conversion and the scales are applied once per 512 values. The unsigned operand is the activation (q + 128, then lo + 128); the
// +128s come out exactly as 128 · 257 · Σ w per block, precomputed with the weights.
// The block sums are the reference's integers (256 Σ w·q + Σ w·lo); a group past the
// last block is padded with zero weights and scales.

constexpr int64_t kGroupBlocks = kPackedGroupBlocks;

struct alignas(64) PackedWeights {  // one row, one group
  int8_t w[8][64];
  int32_t offset[16];  // 128 · 257 · Σ_block w
  float scale[16];
};
struct alignas(64) PackedActs {  // one token, one group: the layout of pack_acts (matmul.h)
  uint8_t hi[8][64];
  uint8_t lo[8][64];
  float scale[16];
};

// v[c] holds blocks 2c and 2c+1 (32 bytes each, in order) -> v[s] lane b holds bytes
// 4s..4s+3 of block b, the arrangement of pack_acts: a 16 × 8 transpose of 4-byte
// words in three rounds of two-source permutes, each round exchanging one bit of the
// vector index with one of the lane index (the last one also orders the lanes by block).
inline void transpose_group(__m512i v[8]) {
  static const int32_t kIdx[3][2][16] = {
      {{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
       {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}},
      {{0, 1, 4, 5, 16, 17, 20, 21, 8, 9, 12, 13, 24, 25, 28, 29},
       {2, 3, 6, 7, 18, 19, 22, 23, 10, 11, 14, 15, 26, 27, 30, 31}},
      {{0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30},
       {1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15, 29, 31}},
  };
  for (int round = 0; round < 3; ++round) {
    const int bit = 4 >> round;
    const __m512i lo = _mm512_loadu_si512(kIdx[round][0]), hi = _mm512_loadu_si512(kIdx[round][1]);
    for (int c = 0; c < 8; ++c) {
      if (c & bit) continue;
      const __m512i a = v[c], b = v[c | bit];
      v[c] = _mm512_permutex2var_epi32(a, lo, b);
      v[c | bit] = _mm512_permutex2var_epi32(a, hi, b);
    }
  }
}

// pack_acts (matmul.h) for one token: the same bytes as the portable version.
void pack_acts_avx512(const uint8_t* record, int64_t k, uint8_t* packed) {
  const ActRecord x(record, k);
  const int64_t blocks = k / 32, groups = (blocks + kGroupBlocks - 1) / kGroupBlocks;
  auto* out = reinterpret_cast<PackedActs*>(packed);
  const __m512i bias = _mm512_set1_epi8(-128);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t nb = std::min(kGroupBlocks, blocks - g * kGroupBlocks);
    __m512i hi[8], lo[8];
    for (int64_t c = 0; c < kGroupBlocks / 2; ++c) {
      hi[c] = lo[c] = bias;  // padding: zero values
      if (2 * c < nb) {
        hi[c] = _mm512_loadu_si512(x.qu + (g * kGroupBlocks + 2 * c) * 32);
        lo[c] = _mm512_xor_si512(_mm512_loadu_si512(x.lo + (g * kGroupBlocks + 2 * c) * 32), bias);
      }
    }
    transpose_group(hi);
    transpose_group(lo);
    for (int st = 0; st < 8; ++st) {
      _mm512_storeu_si512(out[g].hi[st], hi[st]);
      _mm512_storeu_si512(out[g].lo[st], lo[st]);
    }
    const auto m = static_cast<__mmask16>((1u << nb) - 1u);
    _mm512_storeu_ps(out[g].scale,
                     _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x.scale + g * kGroupBlocks), _mm512_set1_ps(1.0f / 256.0f)));
  }
}

template <DType D>
void pack_weights(const WeightMatrix& w, int64_t row, int64_t groups, PackedWeights* out) {
  const int64_t k = w.cols, blocks = k / 32;
  const uint8_t* q = w.data + row * (D == DType::q4 ? k / 2 : k);
  const uint16_t* scales = w.scales() + row * blocks;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t nb = std::min(kGroupBlocks, blocks - g * kGroupBlocks);
    __m512i v[8];
    for (int64_t c = 0; c < kGroupBlocks / 2; ++c) {
      v[c] = _mm512_setzero_si512();
      if (2 * c < nb) {
        if constexpr (D == DType::q4)
          v[c] = _mm512_sub_epi8(unpack_q4(q + (g * kGroupBlocks / 2 + c) * 32), _mm512_set1_epi8(8));
        else
          v[c] = _mm512_loadu_si512(q + (g * kGroupBlocks + 2 * c) * 32);
      }
    }
    transpose_group(v);
    PackedWeights& o = out[g];
    __m512i sum = _mm512_setzero_si512();
    for (int st = 0; st < 8; ++st) {
      _mm512_store_si512(o.w[st], v[st]);
      sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi8(1), v[st]);
    }
    _mm512_store_si512(o.offset, _mm512_mullo_epi32(sum, _mm512_set1_epi32(128 * 257)));
    const auto m = static_cast<__mmask16>((1u << nb) - 1u);
    _mm512_store_ps(o.scale, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, scales + g * kGroupBlocks)));
  }
}

// R rows × T tokens over every group: out[i * T + j] = row i · token j.
template <int R, int T>
inline void packed_tile(const PackedWeights* const* w, const PackedActs* const* x, int64_t groups, float* out) {
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i d[R][T];
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < T; ++j) d[i][j] = _mm512_setzero_si512();
    // The products with one byte plane of the activations (q + 128, then lo + 128).
    auto products = [&](const uint8_t (PackedActs::*plane)[8][64]) {
#pragma GCC unroll 4  // measured: full unrolling spills, 2 is slower
      for (int st = 0; st < 8; ++st) {
        __m512i wv[R];
        for (int i = 0; i < R; ++i) wv[i] = _mm512_load_si512(w[i][g].w[st]);
        for (int j = 0; j < T; ++j) {
          const __m512i xv = _mm512_loadu_si512((x[j][g].*plane)[st]);
          for (int i = 0; i < R; ++i) d[i][j] = _mm512_dpbusd_epi32(d[i][j], xv, wv[i]);
        }
      }
    };
    products(&PackedActs::hi);
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < T; ++j) d[i][j] = _mm512_slli_epi32(d[i][j], 8);
    products(&PackedActs::lo);
    for (int i = 0; i < R; ++i) {
      const __m512i off = _mm512_load_si512(w[i][g].offset);
      const __m512 sw = _mm512_load_ps(w[i][g].scale);
      for (int j = 0; j < T; ++j) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(d[i][j], off));
        acc[i][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(sw, _mm512_loadu_ps(x[j][g].scale)), acc[i][j]);
      }
    }
  }
  if constexpr (R * T >= 8) {
    __m512 v[16];
    for (int n = 0; n < 16; ++n) v[n] = n < R * T ? acc[n / T][n % T] : _mm512_setzero_ps();
    alignas(64) float sums[16];
    _mm512_store_ps(sums, hsum16(v));
    for (int n = 0; n < R * T; ++n) out[n] = sums[n];
  } else {
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < T; ++j) out[i * T + j] = hsum(acc[i][j]);
  }
}

template <int R, int T>
void packed_store(const MatmulArgs& a, const PackedWeights* const* w, const PackedActs* const* x, int64_t groups,
                  int64_t r, int64_t t) {
  float out[R * T];
  packed_tile<R, T>(w, x, groups, out);
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) {
      float& y = a.y[(t + j) * a.ldy + r + i - a.y_row0];
      y = a.accumulate ? y + out[i * T + j] : out[i * T + j];
    }
}

// Rows in blocks of 64, packed once; within a block, tokens in pairs of 3-token tiles
// (then a 3-token tile, a 2-token one, one token), each against the block's rows in tiles of 4
// (then 1), so that the tiles' activations stay in L1 while the block's packed weights
// (L2) stream past them.
// Measured on the 2-core AVX-512 VM (kvant-kernels-bench gemm, 128 tokens, one thread):
// 350-370 GFLOP/s for llama-1b's attn_q, ffn_up and ffn_down; with the token loop inside
// the row loop ffn_down fell to 230-240 (its activations, 2.2 MB for 128 tokens, came from
// L3). The VNNI peak measured on that core is ~8.3 G vpdpbusd/s, ~530 GFLOP/s at two
// products per value (q and lo).
template <DType D>
void matmul_packed(const MatmulArgs& a, int64_t r0, int64_t r1) {
  constexpr int64_t kRowBlock = 64;
  constexpr int kRows = 4, kTokens = 3, kTiles = 2;
  const int64_t k = a.w.cols, groups = (k / 32 + kGroupBlocks - 1) / kGroupBlocks;
  static_assert(sizeof(PackedActs) == kPackedGroupBytes && sizeof(PackedWeights) == 640);
  thread_local std::vector<PackedWeights> weights;
  weights.resize(static_cast<size_t>(kRowBlock * groups));
  const auto* acts = reinterpret_cast<const PackedActs*>(a.xp);
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = std::min(r1, rb + kRowBlock);
    for (int64_t r = rb; r < re; ++r) {  // (rows from DRAM: two ahead asked for, +1.5% prefill)
      if (r + 2 < re) prefetch_rows(a, r + 2, r + 3, /*weights=*/true);
      pack_weights<D>(a.w, r, groups, weights.data() + (r - rb) * groups);
    }
    // n token tiles from t, against every row tile of the block (a row tile's packed
    // weights read once from L2 for all n, the tiles' activations staying in L1).
    auto rows = [&](auto tokens, int64_t t, int n) {
      constexpr int kT = decltype(tokens)::value;
      auto against = [&](auto rows_per_tile, int64_t r) {
        constexpr int kR = decltype(rows_per_tile)::value;
        const PackedWeights* w[kR];
        for (int i = 0; i < kR; ++i) w[i] = weights.data() + (r - rb + i) * groups;
        for (int tile = 0; tile < n; ++tile) {
          const PackedActs* x[kT];
          for (int j = 0; j < kT; ++j) x[j] = acts + (t + tile * kT + j) * groups;
          packed_store<kR, kT>(a, w, x, groups, r, t + tile * kT);
        }
      };
      int64_t r = rb;
      for (; r + kRows <= re; r += kRows) against(std::integral_constant<int, kRows>{}, r);
      for (; r < re; ++r) against(std::integral_constant<int, 1>{}, r);
    };
    // The next block's weights and scales are asked into L2 while this one computes, a
    // few lines per token tile (pack_weights otherwise waits on DRAM at every block).
    const int64_t next_end = std::min(r1, re + kRowBlock);
    const char* pf = reinterpret_cast<const char*>(a.w.data + re * row_bytes(a.w));
    const char* pf_end = reinterpret_cast<const char*>(a.w.data + next_end * row_bytes(a.w));
    const char* sf = reinterpret_cast<const char*>(a.w.scales() + re * (k / 32));
    const char* sf_end = reinterpret_cast<const char*>(a.w.scales() + next_end * (k / 32));
    const int64_t steps = std::max<int64_t>(1, a.n_tokens / (kTokens * kTiles));
    const int64_t lines = ((pf_end - pf) + (sf_end - sf)) / 64 / steps + 1;
    auto prefetch_next = [&] {
      for (int64_t l = 0; l < lines; ++l) {
        if (pf < pf_end) _mm_prefetch(pf, _MM_HINT_T1), pf += 64;
        else if (sf < sf_end) _mm_prefetch(sf, _MM_HINT_T1), sf += 64;
      }
    };
    int64_t t = 0;
    for (; t + kTokens * kTiles <= a.n_tokens; t += kTokens * kTiles) {
      prefetch_next();
      rows(std::integral_constant<int, kTokens>{}, t, kTiles);
    }
    for (; t + kTokens <= a.n_tokens; t += kTokens) rows(std::integral_constant<int, kTokens>{}, t, 1);
    if (t + 2 <= a.n_tokens) rows(std::integral_constant<int, 2>{}, t, 1), t += 2;
    for (; t < a.n_tokens; ++t) rows(std::integral_constant<int, 1>{}, t, 1);
  }
}

// ---- float weights -------------------------------------------------------------------

template <DType D>
inline __m512 load_w(const uint8_t* base, int64_t i, __mmask16 m) {
  if constexpr (D == DType::f32) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(base) + i);
  if constexpr (D == DType::f16)
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(base) + i));
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(base) + i));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

template <DType D, int R, int T>
inline void float_tile(const MatmulArgs& a, int64_t r, int64_t t, PrefetchStream& pf) {
  const int64_t k = a.w.cols;
  const size_t es = D == DType::f32 ? 4 : 2;
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; p += 16) {
    const __mmask16 m = static_cast<__mmask16>(k - p >= 16 ? 0xffff : (1u << (k - p)) - 1u);
    pf.step();
    __m512 xv[T];
    for (int j = 0; j < T; ++j) xv[j] = _mm512_maskz_loadu_ps(m, a.x + (t + j) * a.ldx + p);
    for (int i = 0; i < R; ++i) {
      const __m512 wv = load_w<D>(a.w.data + (r + i) * k * es, p, m);
      for (int j = 0; j < T; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) {
      float& y = a.y[(t + j) * a.ldy + r + i - a.y_row0];
      const float v = hsum(acc[i][j]);
      y = a.accumulate ? y + v : v;
    }
}

// ---- drivers: tiles over rows and tokens ---------------------------------------------

template <DType D, int R, int T>
struct QuantTile {
  static constexpr int64_t kStepValues = 64;  // values of a row per inner step
  static void run(const MatmulArgs& a, int64_t r, int64_t t, PrefetchStream& pf) { quant_tile<D, R, T>(a, r, t, pf); }
};
template <DType D, int R, int T>
struct FloatTile {
  static constexpr int64_t kStepValues = 16;
  static void run(const MatmulArgs& a, int64_t r, int64_t t, PrefetchStream& pf) { float_tile<D, R, T>(a, r, t, pf); }
};

// Rows in tiles of 4 (then 1), tokens in tiles of T (then 1). For each row tile the
// weights stay in L1 while every token streams past them. With one token (decode) the
// next tile's weights are prefetched as a stream during this one (PrefetchStream); with
// more, the tile's time is spent on arithmetic and the tile after next is asked for at
// once.
template <template <DType, int, int> class Tile, DType D, int T>
void run_tiles(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const bool stream = a.n_tokens == 1;
  const int64_t rb = row_bytes(a.w), steps = (a.w.cols + Tile<D, 4, 1>::kStepValues - 1) / Tile<D, 4, 1>::kStepValues;
  PrefetchStream pf, off;
  int64_t r = r0;
  // The first tile's weights (and with more tokens the second's), at once: nothing
  // streamed them in during a tile before.
  prefetch_rows(a, r0, std::min(r1, r0 + 4), /*weights=*/true);
  prefetch_rows(a, std::min(r1, r0 + 4), std::min(r1, r0 + 8), /*weights=*/!stream);
  for (; r + 4 <= r1; r += 4) {
    if (stream) {
      prefetch_rows(a, std::min(r1, r + 4), std::min(r1, r + 8), /*weights=*/false);
      pf.next = reinterpret_cast<const char*>(a.w.data + std::min(r1, r + 4) * rb);
      pf.end = reinterpret_cast<const char*>(a.w.data + std::min(r1, r + 8) * rb);
      pf.lines_per_step = static_cast<int>((4 * rb / steps + 63) / 64);
    } else {
      prefetch_rows(a, std::min(r1, r + 8), std::min(r1, r + 12), /*weights=*/true);
    }
    int64_t t = 0;
    for (; t + T <= a.n_tokens; t += T) Tile<D, 4, T>::run(a, r, t, off);
    for (; t < a.n_tokens; ++t) Tile<D, 4, 1>::run(a, r, t, pf);
  }
  for (; r < r1; ++r) {
    int64_t t = 0;
    for (; t + T <= a.n_tokens; t += T) Tile<D, 1, T>::run(a, r, t, off);
    for (; t < a.n_tokens; ++t) Tile<D, 1, 1>::run(a, r, t, off);
  }
}

template <template <DType, int, int> class Tile, DType D>
void matmul_dtype(const MatmulArgs& a, int64_t r0, int64_t r1) {
  if constexpr (D == DType::q8 || D == DType::q4)
    if (a.xp && a.n_tokens >= kPackedMinTokens) return matmul_packed<D>(a, r0, r1);
  run_tiles<Tile, D, 3>(a, r0, r1);
}

}  // namespace

const MatmulKernels& matmul_kernels_avx512() {
  static const MatmulKernels k = {quantize_acts_avx512, pack_acts_avx512, /*reads_packed_acts=*/true,
                                  {matmul_dtype<FloatTile, DType::f32>, matmul_dtype<FloatTile, DType::f16>,
                                   matmul_dtype<FloatTile, DType::bf16>, matmul_dtype<QuantTile, DType::q8>,
                                   matmul_dtype<QuantTile, DType::q4>}};
  return k;
}

}  // namespace kvant::cpu::detail
