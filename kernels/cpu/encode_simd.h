// The search quantizer of format/quant.cpp, written once for any SIMD width: each lane
// quantizes its own block of 32, so every per-block sum is accumulated in index
// order exactly as in the scalar reference, and the results are bit-identical.
// Included by encode_avx2.cpp and encode_avx512.cpp, each with its own `Simd`
// traits (vector type, masks, gathers, f16 conversion), compiled for its ISA.
//
// Requires IEEE arithmetic without contraction (-ffp-contract=off, no -ffast-math).
#pragma once

#include <cstdint>

#include "format/quant.h"
#include "kernels/cpu/encode.h"

namespace kvant::cpu::detail {

template <class S>
SearchResult quantize_search_simd(const float* x, int64_t cols, QuantSearch search, int8_t* q_out, uint16_t* scales) {
  using V = typename S::V;
  constexpr int kLanes = S::kLanes;
  constexpr int kBlock = 32;
  const int64_t n_blocks = cols / kBlock;
  const V qmin = S::set1(search.qmin), qmax = S::set1(search.qmax);
  const V zero = S::set1(0.0f), one = S::set1(1.0f), inf = S::set1(__builtin_inff());
  auto round_clamp = [&](V v) { return S::min(S::max(S::round_even(v), qmin), qmax); };
  double sse = 0.0, total_sq = 0.0;
  for (int64_t g0 = 0; g0 < n_blocks; g0 += kLanes) {
    const int valid = static_cast<int>(n_blocks - g0 < kLanes ? n_blocks - g0 : kLanes);
    const float* base = x + g0 * kBlock;
    V xs[kBlock];
    for (int j = 0; j < kBlock; ++j) xs[j] = S::gather_blocks(base + j, valid);  // lane b: element j of block b

    V amax = zero, sum_sq = zero;
    for (int j = 0; j < kBlock; ++j) amax = S::max(amax, S::abs(xs[j]));
    for (int j = 0; j < kBlock; ++j) sum_sq = S::add(sum_sq, S::mul(xs[j], xs[j]));
    const V amax_safe = S::select(S::gt(amax, zero), amax, one);
    V best_sse = sum_sq, best_d = zero;  // all-zero quants unless a candidate does better

    for (int c = 0; c < search.n_candidates; ++c) {
      const V inv0 = S::div(S::set1(search.candidates[c]), amax_safe);
      V sum_xq = zero, sum_qq = zero;
      for (int j = 0; j < kBlock; ++j) {
        const V q = round_clamp(S::mul(xs[j], inv0));
        sum_xq = S::add(sum_xq, S::mul(xs[j], q));
        sum_qq = S::add(sum_qq, S::mul(q, q));
      }
      const V d = S::f16_round_trip(S::div(sum_xq, sum_qq));
      const auto ok = S::mask_and(S::mask_and(S::gt(sum_qq, zero), S::gt(sum_xq, zero)),
                                  S::mask_and(S::gt(d, zero), S::lt(d, inf)));
      const V inv = S::div(one, d);
      V err = zero;
      for (int j = 0; j < kBlock; ++j) {
        const V q = round_clamp(S::mul(xs[j], inv));
        const V e = S::sub(xs[j], S::mul(d, q));
        err = S::add(err, S::mul(e, e));
      }
      const auto better = S::mask_and(ok, S::lt(err, best_sse));
      best_sse = S::select(better, err, best_sse);
      best_d = S::select(better, d, best_d);
    }

    // Quants for the chosen scale (the same values the winning candidate measured).
    const V inv = S::select(S::gt(best_d, zero), S::div(one, best_d), zero);
    alignas(64) int32_t q[kBlock][kLanes];
    for (int j = 0; j < kBlock; ++j) S::store_int(q[j], round_clamp(S::mul(xs[j], inv)));
    alignas(64) float lane_sse[kLanes], lane_sq[kLanes];
    S::store(lane_sse, best_sse);
    S::store(lane_sq, sum_sq);
    alignas(64) uint16_t lane_scale[kLanes];
    S::store_f16(lane_scale, best_d);
    for (int b = 0; b < valid; ++b) {
      int8_t* dst = q_out + (g0 + b) * kBlock;
      for (int j = 0; j < kBlock; ++j) dst[j] = static_cast<int8_t>(q[j][b]);
      scales[g0 + b] = lane_scale[b];
      sse += lane_sse[b];
      total_sq += lane_sq[b];
    }
  }
  return {total_sq, sse};
}

// f32 -> f16 with the hardware's round-to-nearest-even (the same bits as
// format/half.h), with the error statistics.
template <class S>
EncodeStats f32_to_f16_simd(const float* x, int64_t n, uint16_t* out) {
  using V = typename S::V;
  constexpr int kLanes = S::kLanes;
  const V zero = S::set1(0.0f), f16_max = S::set1(65504.0f);
  V sq = zero, err = zero;
  bool overflow = false;
  for (int64_t i = 0; i < n; i += kLanes) {
    const int valid = static_cast<int>(n - i < kLanes ? n - i : kLanes);
    const V v = S::load_partial(x + i, valid);
    const V back = S::store_f16_partial(out + i, v, valid);
    const V e = S::sub(v, back);
    sq = S::add(sq, S::mul(v, v));
    err = S::add(err, S::mul(e, e));
    overflow |= S::any(S::gt(S::abs(back), f16_max));  // became infinite
  }
  alignas(64) float lanes_sq[kLanes], lanes_err[kLanes];
  S::store(lanes_sq, sq);
  S::store(lanes_err, err);
  EncodeStats stats;
  for (int l = 0; l < kLanes; ++l) {
    stats.sum_sq += lanes_sq[l];
    stats.sum_sq_err += lanes_err[l];
  }
  stats.overflow = overflow;
  return stats;
}

}  // namespace kvant::cpu::detail
