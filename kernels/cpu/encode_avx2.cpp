// AVX2 instances of the weight encoders (the search quantizer does 8 blocks per pass). Compiled with
// -mavx2 -mfma -mf16c.
#include <immintrin.h>

#include "kernels/cpu/encode.h"
#include "kernels/cpu/encode_simd.h"

namespace kvant::cpu::detail {

namespace {
struct Avx2 {
  using V = __m256;
  using M = __m256;  // all-ones lanes
  static constexpr int kLanes = 8;
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M mask_and(M a, M b) { return _mm256_and_ps(a, b); }
  static V select(M m, V if_true, V if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static V round_even(V v) {
    const V magic = _mm256_set1_ps(12582912.0f);
    return _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
  }
  static V f16_round_trip(V v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static V gather_blocks(const float* p, int valid) {
    const __m256i idx = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, m, 4);
  }
  static void store(float* dst, V v) { _mm256_store_ps(dst, v); }
  static bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  static V load_partial(const float* p, int valid) {
    if (valid == 8) return _mm256_loadu_ps(p);
    alignas(32) float tmp[8] = {};
    for (int i = 0; i < valid; ++i) tmp[i] = p[i];
    return _mm256_load_ps(tmp);
  }
  static V store_f16_partial(uint16_t* dst, V v, int valid) {
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (valid == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
    } else {
      alignas(16) uint16_t tmp[8];
      _mm_store_si128(reinterpret_cast<__m128i*>(tmp), h);
      for (int i = 0; i < valid; ++i) dst[i] = tmp[i];
    }
    return _mm256_cvtph_ps(h);
  }
  static void store_int(int32_t* dst, V v) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst), _mm256_cvtps_epi32(v));
  }
  static void store_f16(uint16_t* dst, V v) {
    _mm_store_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
}  // namespace

SearchResult quantize_search_avx2(const float* x, int64_t cols, QuantSearch search, int8_t* q, uint16_t* scales) {
  return quantize_search_simd<Avx2>(x, cols, search, q, scales);
}

EncodeStats f32_to_f16_avx2(const float* x, int64_t n, uint16_t* out) { return f32_to_f16_simd<Avx2>(x, n, out); }

}  // namespace kvant::cpu::detail
