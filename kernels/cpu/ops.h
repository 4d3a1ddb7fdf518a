// Elementwise and per-row CPU kernels of the transformer: norms, RoPE, activations,
// embedding rows. One row at a time; the executor splits rows between threads.
#pragma once

#include <cstdint>

#include "format/dtype.h"
#include "kernels/cpu/cpu_features.h"

namespace kvant::cpu {

// out = x / sqrt(mean(x²) + eps) * w          (n)
void rms_norm(const float* x, const float* w, int64_t n, float eps, float* out, SimdLevel level = active_simd_level());
// out = (x - mean) / sqrt(var + eps) * w + b  (n)
void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* out);

// Rotates each head of x (n_heads × head_dim) in place, pairing element i with
// i + head_dim/2 (Hugging Face "rotate half"); cos/sin hold head_dim/2 values.
void rope(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin);

// out = silu(gate) * up  (n)
void silu_mul(const float* gate, const float* up, int64_t n, float* out, SimdLevel level = active_simd_level());
// GELU with the tanh approximation (GPT-2's gelu_new) and the exact erf form, in place.
void gelu_tanh(float* x, int64_t n);
void gelu_erf(float* x, int64_t n);

// One row of a [rows, cols] tensor in a .kvant layout, as f32 (embedding lookup).
void dequantize_row(DType dtype, const uint8_t* tensor, int64_t rows, int64_t cols, int64_t row, float* out);

}  // namespace kvant::cpu
