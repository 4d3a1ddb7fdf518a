// AVX-512 instances of the weight encoders (the search quantizer does 16 blocks per pass). Compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512dq -mf16c.
#include <immintrin.h>

#include "kernels/cpu/encode.h"
#include "kernels/cpu/encode_simd.h"

namespace kvant::cpu::detail {

namespace {
struct Avx512 {
  using V = __m512;
  using M = __mmask16;
  static constexpr int kLanes = 16;
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M mask_and(M a, M b) { return static_cast<M>(a & b); }
  static V select(M m, V if_true, V if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static V round_even(V v) {
    const V magic = _mm512_set1_ps(12582912.0f);
    return _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
  }
  static V f16_round_trip(V v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  // Lane b <- p[32 * b] for b < valid, 0 elsewhere.
  static V gather_blocks(const float* p, int valid) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(32));
    const M m = static_cast<M>(valid >= 16 ? 0xffff : (1u << valid) - 1u);
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, p, 4);
  }
  static void store(float* dst, V v) { _mm512_store_ps(dst, v); }
  static bool any(M m) { return m != 0; }
  static M partial(int valid) { return static_cast<M>(valid >= 16 ? 0xffff : (1u << valid) - 1u); }
  static V load_partial(const float* p, int valid) { return _mm512_maskz_loadu_ps(partial(valid), p); }
  // Stores v as f16 (valid lanes) and returns the stored values as f32.
  static V store_f16_partial(uint16_t* dst, V v, int valid) {
    const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_mask_storeu_epi16(dst, partial(valid), h);
    return _mm512_cvtph_ps(h);
  }
  static void store_int(int32_t* dst, V v) { _mm512_store_si512(dst, _mm512_cvtps_epi32(v)); }
  static void store_f16(uint16_t* dst, V v) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(dst),
                       _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
}  // namespace

SearchResult quantize_search_avx512(const float* x, int64_t cols, QuantSearch search, int8_t* q, uint16_t* scales) {
  return quantize_search_simd<Avx512>(x, cols, search, q, scales);
}

EncodeStats f32_to_f16_avx512(const float* x, int64_t n, uint16_t* out) { return f32_to_f16_simd<Avx512>(x, n, out); }

}  // namespace kvant::cpu::detail
