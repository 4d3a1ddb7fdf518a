#include "format/quant.h"

#include <cmath>

#include "format/dtype.h"
#include "format/half.h"

namespace kvant {

namespace {

constexpr int kB = static_cast<int>(kQuantBlock);

// Round to nearest, ties to even, for |v| < 2^22: vectorizes on every x86-64 level,
// unlike nearbyintf which is a libm call without SSE4.1.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Sum of the 32 terms in index order. The order is part of the reference: the SIMD
// quantizers (kernels/cpu/quantize_*.cpp) process 8 or 16 blocks at once, one block per
// lane, and accumulate each lane in this same order, so they match bit for bit.
template <class Term>
inline float block_sum(Term term) {
  float acc = 0.0f;
  for (int j = 0; j < kB; ++j) acc += term(j);
  return acc;
}

struct BlockChoice {
  uint16_t scale;  // f16 bits
  float sse;
};

// Quantizes one block of 32 with quants in [qmin, qmax]; writes q (as floats) and
// returns the f16 scale and squared error.
//
// search: for each candidate m, take d0 = amax / m, round, refit the scale by least
// squares (d = Σxq / Σq²), round d to f16, re-round the quants with that exact f16 d,
// and measure the error. The candidate range covers scales that clip the extreme
// value slightly (m above qmax) and ones that leave headroom (m below qmax). See
// FORMAT.md, "How the quantizers choose scales".
BlockChoice quantize_block(const float* x, float qmin, float qmax, const float* candidates,
                           int n_candidates, float* q_out) {
  float amax = 0.0f;
  for (int j = 0; j < kB; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  if (!(amax > 0.0f)) {
    for (int j = 0; j < kB; ++j) q_out[j] = 0.0f;
    return {0, 0.0f};
  }
  BlockChoice best{0, block_sum([&](int j) { return x[j] * x[j]; })};  // all-zero quants
  for (int j = 0; j < kB; ++j) q_out[j] = 0.0f;
  float q[kB];
  for (int c = 0; c < n_candidates; ++c) {
    const float inv0 = candidates[c] / amax;
    for (int j = 0; j < kB; ++j) q[j] = clampf(round_even(x[j] * inv0), qmin, qmax);
    const float sum_xq = block_sum([&](int j) { return x[j] * q[j]; });
    const float sum_qq = block_sum([&](int j) { return q[j] * q[j]; });
    if (!(sum_qq > 0.0f) || !(sum_xq > 0.0f)) continue;
    const uint16_t scale = f32_to_f16(sum_xq / sum_qq);
    const float d = f16_to_f32(scale);
    if (!(d > 0.0f) || std::isinf(d)) continue;
    const float inv = 1.0f / d;
    for (int j = 0; j < kB; ++j) q[j] = clampf(round_even(x[j] * inv), qmin, qmax);
    const float sse = block_sum([&](int j) {
      const float e = x[j] - d * q[j];
      return e * e;
    });
    if (sse < best.sse) {
      best = {scale, sse};
      for (int j = 0; j < kB; ++j) q_out[j] = q[j];
    }
  }
  return best;
}

BlockChoice quantize_block_absmax(const float* x, float qmax, float* q_out) {
  float amax = 0.0f;
  for (int j = 0; j < kB; ++j) amax = std::fmax(amax, std::fabs(x[j]));
  const uint16_t scale = f32_to_f16(amax / qmax);
  const float d = f16_to_f32(scale);
  const float inv = d > 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kB; ++j) q_out[j] = clampf(round_even(x[j] * inv), -qmax, qmax);
  const float sse = block_sum([&](int j) {
    const float e = x[j] - d * q_out[j];
    return e * e;
  });
  return {scale, sse};
}

// Candidate values of m (the quant that the block's largest magnitude maps to).
template <int N>
struct Candidates {
  float m[N];
  constexpr Candidates(float lo, float hi) : m{} {
    for (int i = 0; i < N; ++i) m[i] = lo + (hi - lo) * static_cast<float>(i) / static_cast<float>(N - 1);
  }
};
constexpr Candidates<24> kQ8Candidates(110.0f, 128.5f);
constexpr Candidates<20> kQ4Candidates(6.5f, 8.5f);

template <class Store>
double quantize_row(const float* x, int64_t cols, uint16_t* scales, QuantMethod method, float qmin, float qmax,
                    const float* candidates, int n_candidates, Store store) {
  double sse = 0.0;
  float q[kB];
  for (int64_t b = 0; b < cols / kB; ++b) {
    const float* xb = x + b * kB;
    const BlockChoice choice = method == QuantMethod::search
                                   ? quantize_block(xb, qmin, qmax, candidates, n_candidates, q)
                                   : quantize_block_absmax(xb, qmax, q);
    scales[b] = choice.scale;
    sse += choice.sse;
    store(b, q);
  }
  return sse;
}

}  // namespace

QuantSearch q8_search() { return {-128.0f, 127.0f, kQ8Candidates.m, 24}; }
QuantSearch q4_search() { return {-8.0f, 7.0f, kQ4Candidates.m, 20}; }

double quantize_row_q8(const float* x, int64_t cols, int8_t* quants, uint16_t* scales, QuantMethod method) {
  return quantize_row(x, cols, scales, method, -128.0f, 127.0f, kQ8Candidates.m, 24,
                      [&](int64_t b, const float* q) {
                        for (int j = 0; j < kB; ++j) quants[b * kB + j] = static_cast<int8_t>(q[j]);
                      });
}

void dequantize_row_q8(const int8_t* quants, const uint16_t* scales, int64_t cols, float* out) {
  for (int64_t b = 0; b < cols / kB; ++b) {
    const float d = f16_to_f32(scales[b]);
    for (int j = 0; j < kB; ++j) out[b * kB + j] = d * static_cast<float>(quants[b * kB + j]);
  }
}

double quantize_row_q4(const float* x, int64_t cols, uint8_t* packed, uint16_t* scales, QuantMethod method) {
  // Block b covers weights [32b, 32b+32): within its group of 64 it is the low half
  // (b even, low nibbles) or the high half (b odd, high nibbles).
  return quantize_row(x, cols, scales, method, -8.0f, 7.0f, kQ4Candidates.m, 20, [&](int64_t b, const float* q) {
    uint8_t* group = packed + (b / 2) * 32;
    for (int j = 0; j < kB; ++j) {
      const auto nibble = static_cast<uint8_t>(static_cast<int>(q[j]) + 8);
      // The even block of a group is always stored first, so it sets the byte.
      group[j] = (b % 2 == 0) ? nibble : static_cast<uint8_t>(group[j] | (nibble << 4));
    }
  });
}

void dequantize_row_q4(const uint8_t* packed, const uint16_t* scales, int64_t cols, float* out) {
  for (int64_t g = 0; g < cols / 64; ++g) {
    const float d_lo = f16_to_f32(scales[2 * g]);
    const float d_hi = f16_to_f32(scales[2 * g + 1]);
    const uint8_t* group = packed + g * 32;
    for (int j = 0; j < 32; ++j) {
      out[g * 64 + j] = d_lo * static_cast<float>((group[j] & 0x0f) - 8);
      out[g * 64 + 32 + j] = d_hi * static_cast<float>((group[j] >> 4) - 8);
    }
  }
}

}  // namespace kvant
