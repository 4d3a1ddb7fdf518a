// AVX2 vector helpers for the attention kernel (attention_impl.h).
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/attention_impl.h"

namespace kvant::cpu::detail {

namespace {

struct Avx2Ops {
  static float hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
  }
  static float dot(const float* a, const float* b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum(acc);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }
  static void axpy(float alpha, const float* x, float* y, int64_t n) {
    const __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] += alpha * x[i];
  }
  static void scale(float* y, float s, int64_t n) {
    const __m256 vs = _mm256_set1_ps(s);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(vs, _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] *= s;
  }
  static void load_row(KvType type, const uint8_t* row, const uint16_t* scale, int64_t hd, float* out) {
    if (type == KvType::f16 && hd % 8 == 0) {
      for (int64_t i = 0; i < hd; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i))));
      return;
    }
    if (type == KvType::q8 && hd % 8 == 0) {
      const __m256 d = _mm256_set1_ps(_cvtsh_ss(*scale));
      for (int64_t i = 0; i < hd; i += 8) {
        int64_t eight;
        std::memcpy(&eight, row + i, 8);
        const __m256i v = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(eight));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(d, _mm256_cvtepi32_ps(v)));
      }
      return;
    }
    load_kv_row(type, row, scale, hd, out);
  }
};

}  // namespace

AttendFn attend_avx2() { return attend_group_impl<Avx2Ops>; }

}  // namespace kvant::cpu::detail
