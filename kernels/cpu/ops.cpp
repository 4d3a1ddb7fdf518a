#include "kernels/cpu/ops.h"

// GCC 12 warns inside its own avx512fintrin.h (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "format/half.h"
#include "format/quant.h"

namespace kvant::cpu {

namespace {

float sum_squares_reference(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return static_cast<float>(s);
}

__attribute__((target("avx512f"))) float sum_squares_avx512(const float* x, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(x + i), acc);
  const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
  const __m512 t = _mm512_maskz_loadu_ps(m, x + i);
  acc = _mm512_fmadd_ps(t, t, acc);
  return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx2,fma"))) float sum_squares_avx2(const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i), acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float s = 0;
  for (float v : lanes) s += v;
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

inline float silu(float g) { return g / (1.0f + std::exp(-g)); }

}  // namespace

void rms_norm(const float* x, const float* w, int64_t n, float eps, float* out, SimdLevel level) {
  float ss = level == SimdLevel::avx512 ? sum_squares_avx512(x, n)
             : level == SimdLevel::avx2 ? sum_squares_avx2(x, n)
                                        : sum_squares_reference(x, n);
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* out) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += x[i];
  mean /= static_cast<double>(n);
  double var = 0;
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  var /= static_cast<double>(n);
  const auto inv = static_cast<float>(1.0 / std::sqrt(var + eps));
  const auto m = static_cast<float>(mean);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - m) * inv * w[i] + (b ? b[i] : 0.0f);
}

void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

namespace detail {
void silu_mul_avx512(const float* gate, const float* up, int64_t n, float* out);  // ops_avx512.cpp
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out, SimdLevel level) {
  if (level == SimdLevel::avx512) return detail::silu_mul_avx512(gate, up, n, out);
  for (int64_t i = 0; i < n; ++i) out[i] = silu(gate[i]) * up[i];
}

void gelu_tanh(float* x, int64_t n) {
  constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    x[i] = 0.5f * v * (1.0f + std::tanh(kC * (v + 0.044715f * v * v * v)));
  }
}

void gelu_erf(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.7071067811865476f));
}

void dequantize_row(DType dtype, const uint8_t* tensor, int64_t rows, int64_t cols, int64_t row, float* out) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(out, tensor + row * cols * 4, static_cast<size_t>(cols) * 4);
      return;
    case DType::f16:
    case DType::bf16: {
      const auto* p = reinterpret_cast<const uint16_t*>(tensor) + row * cols;
      for (int64_t i = 0; i < cols; ++i) out[i] = dtype == DType::f16 ? f16_to_f32(p[i]) : bf16_to_f32(p[i]);
      return;
    }
    case DType::q8:
    case DType::q4: {
      const auto* scales = reinterpret_cast<const uint16_t*>(
          tensor + quant_region_bytes(dtype, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols)));
      if (dtype == DType::q8)
        dequantize_row_q8(reinterpret_cast<const int8_t*>(tensor) + row * cols, scales + row * cols / 32, cols, out);
      else
        dequantize_row_q4(tensor + row * cols / 2, scales + row * cols / 32, cols, out);
      return;
    }
  }
}

}  // namespace kvant::cpu
