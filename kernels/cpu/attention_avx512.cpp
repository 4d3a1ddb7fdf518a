// AVX-512 vector helpers for the attention kernel (attention_impl.h).
#include <immintrin.h>

#include "kernels/cpu/attention_impl.h"

namespace kvant::cpu::detail {

namespace {

struct Avx512Ops {
  static __mmask16 tail(int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1u); }
  static float dot(const float* a, const float* b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail(n - i);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
  }
  static void axpy(float alpha, const float* x, float* y, int64_t n) {
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail(n - i);
      _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
  }
  static void scale(float* y, float s, int64_t n) {
    const __m512 vs = _mm512_set1_ps(s);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail(n - i);
      _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m, y + i)));
    }
  }
  static void load_row(KvType type, const uint8_t* row, const uint16_t* scale, int64_t hd, float* out) {
    if (type == KvType::f32) {
      load_kv_row(type, row, scale, hd, out);
      return;
    }
    if (type == KvType::f16) {
      for (int64_t i = 0; i < hd; i += 16) {
        const __mmask16 m = tail(hd - i);
        _mm512_mask_storeu_ps(out + i, m,
                              _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + i)));
      }
      return;
    }
    const __m512 d = _mm512_set1_ps(_cvtsh_ss(*scale));
    if (type == KvType::q8) {
      for (int64_t i = 0; i < hd; i += 16) {
        const __mmask16 m = tail(hd - i);
        const __m512i v = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(d, _mm512_cvtepi32_ps(v)));
      }
      return;
    }
    const int64_t half = hd / 2;
    const __m512i eight = _mm512_set1_epi32(8), low = _mm512_set1_epi32(0x0f);
    for (int64_t j = 0; j < half; j += 16) {
      const __mmask16 m = tail(half - j);
      const __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, row + j));
      const __m512i lo = _mm512_sub_epi32(_mm512_and_si512(b, low), eight);
      const __m512i hi = _mm512_sub_epi32(_mm512_srli_epi32(b, 4), eight);
      _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)));
      _mm512_mask_storeu_ps(out + half + j, m, _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)));
    }
  }
};

}  // namespace

AttendFn attend_avx512() { return attend_group_impl<Avx512Ops>; }

}  // namespace kvant::cpu::detail
