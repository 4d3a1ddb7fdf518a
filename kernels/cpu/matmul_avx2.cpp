// AVX2 + FMA + F16C matmul kernels. Quantized weights use vpmaddubsw (unsigned × signed
// bytes to int16 pairs, no overflow for |q| ≤ 128 × 127 · 2) and vpmaddwd to int32; one
// 32-byte register is one block, scaled by (weight scale · activation scale) broadcast
// from 8 block scales loaded at a time.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/matmul.h"

namespace kvant::cpu::detail {

namespace {

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

inline __m256 load8_partial(const float* p, int n) {
  if (n == 8) return _mm256_loadu_ps(p);
  alignas(32) float tmp[8] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * 4);
  return _mm256_load_ps(tmp);
}

inline __m256 load8_f16_partial(const uint16_t* p, int n) {
  alignas(16) uint16_t tmp[8] = {};
  std::memcpy(tmp, p, static_cast<size_t>(n) * 2);
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
}

void quantize_acts_avx2(const float* x, int64_t k, uint8_t* record) {
  auto* q = reinterpret_cast<int8_t*>(record);
  uint8_t* qu = record + k;
  auto* lo = reinterpret_cast<int8_t*>(record + 2 * k);
  auto* scale = reinterpret_cast<float*>(record + 3 * k);
  float* corr = scale + k / 32;
  const __m256 magic = _mm256_set1_ps(12582912.0f), sign = _mm256_set1_ps(-0.0f);
  const __m256 inf = _mm256_set1_ps(__builtin_inff());
  const __m256 r256 = _mm256_set1_ps(256.0f), lo_min = _mm256_set1_ps(-127.0f), lo_max = _mm256_set1_ps(127.0f);
  // int32 lanes of 4 registers -> 32 int8 in order (packs work within 128-bit halves).
  auto pack = [](const __m256i* iv) {
    const __m256i p16a = _mm256_packs_epi32(iv[0], iv[1]), p16b = _mm256_packs_epi32(iv[2], iv[3]);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  };
  for (int64_t b = 0; b < k / 32; ++b) {
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    int nonfinite = 0;
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + b * 32 + i * 8);
      const __m256 a = _mm256_andnot_ps(sign, v[i]);
      nonfinite |= _mm256_movemask_ps(_mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // Inf or NaN
      m = _mm256_max_ps(m, a);
    }
    if (nonfinite) {
      write_nonfinite_block(record, k, b);
      continue;
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = act_block_scale(amax);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i iv[4], lv[4];
    for (int i = 0; i < 4; ++i) {
      const __m256 t = _mm256_mul_ps(v[i], vid);
      const __m256 r = _mm256_sub_ps(_mm256_add_ps(t, magic), magic);
      iv[i] = _mm256_cvttps_epi32(r);
      const __m256 l = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(t, r), r256), magic), magic);
      lv[i] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(l, lo_min), lo_max));
    }
    const __m256i p8 = pack(iv);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * 32), p8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + b * 32), pack(lv));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qu + b * 32), _mm256_xor_si256(p8, _mm256_set1_epi8(-128)));
    const __m256i s = _mm256_add_epi32(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3])), 8),
        _mm256_add_epi32(_mm256_add_epi32(lv[0], lv[1]), _mm256_add_epi32(lv[2], lv[3])));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    scale[b] = d;
    corr[b] = 8.0f * d * static_cast<float>(_mm_cvtsi128_si32(s4)) * (1.0f / 256.0f);
  }
}

template <DType D, int R, int T>
inline void quant_tile(const MatmulArgs& a, int64_t r, int64_t t) {
  const int64_t k = a.w.cols, blocks = k / 32;
  const size_t rec = act_record_bytes(k);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t g = 0; g < blocks; g += 8) {
    const int nb = static_cast<int>(blocks - g < 8 ? blocks - g : 8);
    __m256 s[R][T];
    for (int i = 0; i < R; ++i) {
      const __m256 sw = load8_f16_partial(a.w.scales() + (r + i) * blocks + g, nb);
      for (int j = 0; j < T; ++j) {
        const ActRecord x(a.xq + (t + j) * rec, k);
        s[i][j] = _mm256_mul_ps(sw, load8_partial(x.scale + g, nb));
        s[i][j] = _mm256_mul_ps(s[i][j], _mm256_set1_ps(1.0f / 256.0f));
        if constexpr (D == DType::q4) acc[i][j] = _mm256_fnmadd_ps(sw, load8_partial(x.corr + g, nb), acc[i][j]);
      }
    }
    for (int b = 0; b < nb; ++b) {
      const int64_t block = g + b;
      __m256i xv[T], xlv[T];
      for (int j = 0; j < T; ++j) {
        const ActRecord x(a.xq + (t + j) * rec, k);
        xv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + block * 32));
        xlv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.lo + block * 32));
      }
      const __m256i lane = _mm256_set1_epi32(b);
      for (int i = 0; i < R; ++i) {
        __m256i wv;
        if constexpr (D == DType::q4) {
          const __m256i packed =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.w.data + (r + i) * k / 2 + (block / 2) * 32));
          wv = _mm256_and_si256(block % 2 ? _mm256_srli_epi16(packed, 4) : packed, _mm256_set1_epi8(0x0f));
        } else {
          wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.w.data + (r + i) * k + block * 32));
        }
        for (int j = 0; j < T; ++j) {
          __m256i d32;
          if constexpr (D == DType::q4) {  // 256 · Σ w·q + Σ w·lo (the 1/256 is in the scale)
            const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv[j]), ones);
            const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xlv[j]), ones);
            d32 = _mm256_add_epi32(_mm256_slli_epi32(hi, 8), lo);
          } else {
            const __m256i aw = _mm256_abs_epi8(wv);
            const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[j], wv)), ones);
            const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xlv[j], wv)), ones);
            d32 = _mm256_add_epi32(_mm256_slli_epi32(hi, 8), lo);
          }
          const __m256 dp = _mm256_cvtepi32_ps(d32);
          acc[i][j] = _mm256_fmadd_ps(dp, _mm256_permutevar8x32_ps(s[i][j], lane), acc[i][j]);
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

template <DType D>
inline __m256 load_w(const uint8_t* base, int64_t i, int n) {
  if constexpr (D == DType::f32) return load8_partial(reinterpret_cast<const float*>(base) + i, n);
  alignas(16) uint16_t tmp[8] = {};
  const uint16_t* p = reinterpret_cast<const uint16_t*>(base) + i;
  if (n < 8) {
    std::memcpy(tmp, p, static_cast<size_t>(n) * 2);
    p = tmp;
  }
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (D == DType::f16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <DType D, int R, int T>
inline void float_tile(const MatmulArgs& a, int64_t r, int64_t t) {
  const int64_t k = a.w.cols;
  const size_t es = D == DType::f32 ? 4 : 2;
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) acc[i][j] = _mm256_setzero_ps();
  for (int64_t p = 0; p < k; p += 8) {
    const int n = static_cast<int>(k - p >= 8 ? 8 : k - p);
    __m256 xv[T];
    for (int j = 0; j < T; ++j) xv[j] = load8_partial(a.x + (t + j) * a.ldx + p, n);
    for (int i = 0; i < R; ++i) {
      const __m256 wv = load_w<D>(a.w.data + (r + i) * k * es, p, n);
      for (int j = 0; j < T; ++j) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < T; ++j) {
      float& y = a.y[(t + j) * a.ldy + r + i - a.y_row0];
      const float v = hsum(acc[i][j]);
      y = a.accumulate ? y + v : v;
    }
}

template <DType D, int R, int T>
struct QuantTile {
  static void run(const MatmulArgs& a, int64_t r, int64_t t) { quant_tile<D, R, T>(a, r, t); }
};
template <DType D, int R, int T>
struct FloatTile {
  static void run(const MatmulArgs& a, int64_t r, int64_t t) { float_tile<D, R, T>(a, r, t); }
};

template <template <DType, int, int> class Tile, DType D>
void matmul_dtype(const MatmulArgs& a, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    int64_t t = 0;
    for (; t + 2 <= a.n_tokens; t += 2) Tile<D, 2, 2>::run(a, r, t);
    for (; t < a.n_tokens; ++t) Tile<D, 2, 1>::run(a, r, t);
  }
  for (; r < r1; ++r)
    for (int64_t t = 0; t < a.n_tokens; ++t) Tile<D, 1, 1>::run(a, r, t);
}

}  // namespace

const MatmulKernels& matmul_kernels_avx2() {
  static const MatmulKernels k = {quantize_acts_avx2, pack_acts_portable, /*reads_packed_acts=*/false,
                                  {matmul_dtype<FloatTile, DType::f32>, matmul_dtype<FloatTile, DType::f16>,
                                   matmul_dtype<FloatTile, DType::bf16>, matmul_dtype<QuantTile, DType::q8>,
                                   matmul_dtype<QuantTile, DType::q4>}};
  return k;
}

}  // namespace kvant::cpu::detail
