// Scalar reference of the matmul kernels: the definition the SIMD versions are tested
// against. Quantized weights use exactly the integer arithmetic of the SIMD kernels
// (int8 activations plus their int8 residual; per-block integer dot products); only
// the order of the float additions differs.
#include <cmath>
#include <cstring>

#include "format/half.h"
#include "kernels/cpu/matmul.h"

namespace kvant::cpu::detail {

namespace {

inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

void quantize_acts_reference(const float* x, int64_t k, uint8_t* record) {
  auto* q = reinterpret_cast<int8_t*>(record);
  uint8_t* qu = record + k;
  auto* lo = reinterpret_cast<int8_t*>(record + 2 * k);
  auto* scale = reinterpret_cast<float*>(record + 3 * k);
  float* corr = scale + k / 32;
  for (int64_t b = 0; b < k / 32; ++b) {
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < 32; ++j) {
      finite = finite && std::isfinite(x[b * 32 + j]);
      amax = std::fmax(amax, std::fabs(x[b * 32 + j]));
    }
    if (!finite) {
      write_nonfinite_block(record, k, b);
      continue;
    }
    const float d = act_block_scale(amax);
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      const float t = x[b * 32 + j] * id;
      const float r = round_even(t);
      const auto v = static_cast<int8_t>(r);
      q[b * 32 + j] = v;
      qu[b * 32 + j] = static_cast<uint8_t>(v + 128);
      lo[b * 32 + j] = static_cast<int8_t>(std::fmin(std::fmax(round_even((t - r) * 256.0f), -127.0f), 127.0f));
      sum += 256 * v + lo[b * 32 + j];
    }
    scale[b] = d;
    corr[b] = 8.0f * d * static_cast<float>(sum) * (1.0f / 256.0f);
  }
}

template <class Load>
void matmul_float(const MatmulArgs& a, int64_t r0, int64_t r1, Load load) {
  const int64_t k = a.w.cols;
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const float* x = a.x + t * a.ldx;
    for (int64_t r = r0; r < r1; ++r) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) acc += load(r * k + j) * x[j];
      float& y = a.y[t * a.ldy + r - a.y_row0];
      y = a.accumulate ? y + acc : acc;
    }
  }
}

void matmul_f32(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const auto* w = reinterpret_cast<const float*>(a.w.data);
  matmul_float(a, r0, r1, [w](int64_t i) { return w[i]; });
}

void matmul_f16(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const auto* w = reinterpret_cast<const uint16_t*>(a.w.data);
  matmul_float(a, r0, r1, [w](int64_t i) { return f16_to_f32(w[i]); });
}

void matmul_bf16(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const auto* w = reinterpret_cast<const uint16_t*>(a.w.data);
  matmul_float(a, r0, r1, [w](int64_t i) { return bf16_to_f32(w[i]); });
}

// Σ_b w_scale_b · x_scale_b · Σ_{j in b} wq_j · xq_j, with the block sums in int32;
// q8 weights also take the activations' residual byte: xq_j = q_j + lo_j / 256.
template <bool kResidual, class Quant>
void matmul_quantized(const MatmulArgs& a, int64_t r0, int64_t r1, Quant quant) {
  const int64_t k = a.w.cols, blocks = k / 32;
  const uint16_t* scales = a.w.scales();
  const size_t record = act_record_bytes(k);
  for (int64_t t = 0; t < a.n_tokens; ++t) {
    const ActRecord x(a.xq + t * record, k);
    for (int64_t r = r0; r < r1; ++r) {
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = 0, dot_lo = 0;
        for (int j = 0; j < 32; ++j) {
          dot += quant(r, b * 32 + j) * x.q[b * 32 + j];
          if constexpr (kResidual) dot_lo += quant(r, b * 32 + j) * x.lo[b * 32 + j];
        }
        const float sum = static_cast<float>(dot) + static_cast<float>(dot_lo) * (1.0f / 256.0f);
        acc += f16_to_f32(scales[r * blocks + b]) * x.scale[b] * sum;
      }
      float& y = a.y[t * a.ldy + r - a.y_row0];
      y = a.accumulate ? y + acc : acc;
    }
  }
}

void matmul_q8(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const auto* q = reinterpret_cast<const int8_t*>(a.w.data);
  const int64_t k = a.w.cols;
  matmul_quantized<true>(a, r0, r1, [q, k](int64_t r, int64_t j) { return static_cast<int32_t>(q[r * k + j]); });
}

void matmul_q4(const MatmulArgs& a, int64_t r0, int64_t r1) {
  const uint8_t* q = a.w.data;
  const int64_t k = a.w.cols;
  matmul_quantized<true>(a, r0, r1, [q, k](int64_t r, int64_t j) {
    const uint8_t byte = q[r * k / 2 + (j / 64) * 32 + (j % 32)];
    return static_cast<int32_t>((j % 64) < 32 ? (byte & 0x0f) : (byte >> 4)) - 8;
  });
}

}  // namespace

const MatmulKernels& matmul_kernels_reference() {
  static const MatmulKernels k = {quantize_acts_reference, pack_acts_portable, /*reads_packed_acts=*/false, {matmul_f32, matmul_f16, matmul_bf16, matmul_q8, matmul_q4}};
  return k;
}

}  // namespace kvant::cpu::detail
