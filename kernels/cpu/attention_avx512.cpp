// AVX-512 vector helpers for the attention kernel (attention_impl.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/avx512_common.h"

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

// The same attention as attend_group_impl for head_dim = 16·C, vectorized across
// positions: per page, the K and V rows are decoded once into scratch; each query head
// takes its scores 16 positions at a time (16 dot products summed by one hsum16), the
// page's softmax in vectors, and P·V with its accumulator in registers.
template <int C>
void attend_group_fast(const AttentionArgs& a, int64_t g, const float* q, int64_t begin, int64_t end, float* out,
                       float* scratch) {
  constexpr int64_t hd = 16 * C;
  const KvLayout& L = *a.layout;
  const int64_t group = a.n_heads / a.n_kv_heads, P = L.page_tokens;
  float* kp = scratch;                 // P × hd
  float* vp = kp + P * hd;             // P × hd
  float* pr = vp + P * hd;             // group × (P + 16): scores, then probabilities
  float* acc = pr + group * (P + 16);  // group × hd
  float* qs = acc + group * hd;        // group × hd: queries (rotated for q4 KV) times the scale
  const bool rotated = kv_rotated(L.type, hd);
  for (int64_t i = 0; i < group; ++i) {
    float* qi = qs + i * hd;
    std::copy(q + (g * group + i) * hd, q + (g * group + i + 1) * hd, qi);
    if (rotated) hadamard(qi, hd);
    for (int64_t d = 0; d < hd; ++d) qi[d] *= a.scale;
    std::fill(acc + i * hd, acc + (i + 1) * hd, 0.0f);
  }
  float m[64], l[64];
  for (int64_t i = 0; i < group; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }
  const uint64_t rb = L.row_bytes();
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  for (int64_t p0 = begin; p0 < end;) {
    const PageSpan pg = page_span(a, g, p0, end);
    const int64_t n = pg.n;
    float shared_score[64];  // kp is free until the rows are decoded
    for (int64_t i = 0; i < group; ++i) shared_score[i] = offset_score<Avx512Ops>(pg, qs + i * hd, hd, kp);
    for (int64_t p = 0; p < n; ++p) {
      const int64_t slot = pg.slot0 + p;
      Avx512Ops::load_row(L.type, pg.k + slot * rb, pg.k_scale + slot, hd, kp + p * hd);
      Avx512Ops::load_row(L.type, pg.v + slot * rb, pg.v_scale + slot, hd, vp + p * hd);
    }
    for (int64_t i = 0; i < group; ++i) {
      __m512 qv[C];
      for (int c = 0; c < C; ++c) qv[c] = _mm512_loadu_ps(qs + i * hd + 16 * c);
      float* s = pr + i * (P + 16);
      const __m512 shared = _mm512_set1_ps(shared_score[i]);
      __m512 mx = neg_inf;
      for (int64_t j0 = 0; j0 < n; j0 += 16) {
        const int64_t cnt = std::min<int64_t>(16, n - j0);
        __m512 dots[16];
        for (int64_t p = 0; p < 16; ++p) {
          __m512 d = _mm512_setzero_ps();
          if (p < cnt)
            for (int c = 0; c < C; ++c) d = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kp + (j0 + p) * hd + 16 * c), d);
          dots[p] = d;
        }
        const __mmask16 valid = static_cast<__mmask16>(cnt == 16 ? 0xffff : (1u << cnt) - 1u);
        const __m512 sv = _mm512_mask_blend_ps(valid, neg_inf, _mm512_add_ps(shared, hsum16(dots)));
        _mm512_storeu_ps(s + j0, sv);
        mx = _mm512_max_ps(mx, sv);
      }
      const float mb = std::fmax(m[i], _mm512_reduce_max_ps(mx));
      const float correction = std::exp(m[i] - mb);  // 0 on the first page (m = -inf)
      m[i] = mb;
      __m512 sum = _mm512_setzero_ps();
      const __m512 vmb = _mm512_set1_ps(mb);
      for (int64_t j0 = 0; j0 < n; j0 += 16) {
        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j0), vmb));
        _mm512_storeu_ps(s + j0, e);
        sum = _mm512_add_ps(sum, e);
      }
      l[i] = l[i] * correction + _mm512_reduce_add_ps(sum);
      __m512 av[C];
      const __m512 corr = _mm512_set1_ps(correction);
      for (int c = 0; c < C; ++c) av[c] = _mm512_mul_ps(corr, _mm512_loadu_ps(acc + i * hd + 16 * c));
      for (int64_t p = 0; p < n; ++p) {
        const __m512 w = _mm512_set1_ps(s[p]);
        for (int c = 0; c < C; ++c) av[c] = _mm512_fmadd_ps(w, _mm512_loadu_ps(vp + p * hd + 16 * c), av[c]);
      }
      for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + i * hd + 16 * c, av[c]);
    }
    p0 += n;
  }
  write_attention_output(acc, l, g, group, hd, rotated, out);
}

void attend_group_avx512(const AttentionArgs& a, int64_t g, const float* q, int64_t begin, int64_t end, float* out,
                         float* scratch) {
  const int64_t group = a.n_heads / a.n_kv_heads;
  if (group <= 64) {
    switch (a.head_dim) {
      case 64: attend_group_fast<4>(a, g, q, begin, end, out, scratch); return;
      case 128: attend_group_fast<8>(a, g, q, begin, end, out, scratch); return;
      default: break;
    }
  }
  attend_group_impl<Avx512Ops>(a, g, q, begin, end, out, scratch);
}

}  // namespace

AttendFn attend_avx512() { return attend_group_avx512; }

}  // namespace kvant::cpu::detail
