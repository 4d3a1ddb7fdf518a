// AVX-512 versions of elementwise kernels in ops.h (compiled with KVANT_AVX512_FLAGS).
#include <cmath>

#include "kernels/cpu/avx512_common.h"
#include "kernels/cpu/ops.h"

namespace kvant::cpu::detail {

// silu(g) · u = g · σ(g) · u with σ(g) = 1 / (1 + e^-g) for g ≥ 0 and e^g / (1 + e^g)
// below, so the exponential's argument is never positive (exp_nonpositive, relative
// error ~2e-7); ±Inf and NaN give what the scalar formula gives.
void silu_mul_avx512(const float* gate, const float* up, int64_t n, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const auto m = static_cast<__mmask16>(n - i >= 16 ? 0xffff : (1u << (n - i)) - 1u);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 t = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));  // e^-|g|
    const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 sigmoid = _mm512_div_ps(_mm512_mask_blend_ps(negative, one, t), _mm512_add_ps(one, t));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), _mm512_maskz_loadu_ps(m, up + i)));
  }
}

}  // namespace kvant::cpu::detail
