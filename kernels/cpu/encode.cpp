#include "kernels/cpu/encode.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "format/half.h"

namespace kvant::cpu {

namespace {

double sum_of_squares(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

// The scalar reference for f16 / bf16 rows.
template <uint16_t (*Encode)(float), float (*Decode)(uint16_t)>
EncodeStats encode_half_reference(const float* x, int64_t n, uint16_t* out) {
  EncodeStats s;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = Encode(x[i]);
    const float back = Decode(out[i]);
    s.overflow |= std::isinf(back);
    const double e = static_cast<double>(x[i]) - back;
    s.sum_sq += static_cast<double>(x[i]) * x[i];
    s.sum_sq_err += e * e;
  }
  return s;
}

bool search_simd(const float* x, int64_t cols, QuantSearch search, int8_t* q, uint16_t* scales, SimdLevel level,
                 EncodeStats* stats) {
  detail::SearchResult r{};
  if (level == SimdLevel::avx512) r = detail::quantize_search_avx512(x, cols, search, q, scales);
  else if (level == SimdLevel::avx2) r = detail::quantize_search_avx2(x, cols, search, q, scales);
  else return false;
  stats->sum_sq = r.sum_sq;
  stats->sum_sq_err = r.sum_sq_err;
  return true;
}

}  // namespace

EncodeStats encode_row(DType dtype, const float* x, int64_t cols, uint8_t* out, uint16_t* scales, QuantMethod method,
                       SimdLevel level) {
  EncodeStats stats;
  switch (dtype) {
    case DType::f32:
      std::memcpy(out, x, static_cast<size_t>(cols) * 4);
      stats.sum_sq = sum_of_squares(x, cols);
      return stats;
    case DType::f16: {
      auto* o = reinterpret_cast<uint16_t*>(out);
      if (level == SimdLevel::avx512) return detail::f32_to_f16_avx512(x, cols, o);
      if (level == SimdLevel::avx2) return detail::f32_to_f16_avx2(x, cols, o);
      return encode_half_reference<f32_to_f16, f16_to_f32>(x, cols, o);
    }
    case DType::bf16:
      return encode_half_reference<f32_to_bf16, bf16_to_f32>(x, cols, reinterpret_cast<uint16_t*>(out));
    case DType::q8:
      if (method == QuantMethod::search &&
          search_simd(x, cols, q8_search(), reinterpret_cast<int8_t*>(out), scales, level, &stats))
        return stats;
      stats.sum_sq_err = quantize_row_q8(x, cols, reinterpret_cast<int8_t*>(out), scales, method);
      stats.sum_sq = sum_of_squares(x, cols);
      return stats;
    case DType::q4: {
      thread_local std::vector<int8_t> q;
      q.resize(static_cast<size_t>(cols));
      if (method != QuantMethod::search || !search_simd(x, cols, q4_search(), q.data(), scales, level, &stats)) {
        stats.sum_sq_err = quantize_row_q4(x, cols, out, scales, method);
        stats.sum_sq = sum_of_squares(x, cols);
        return stats;
      }
      // Pack per FORMAT.md: in each group of 64, byte j = (q[j] + 8) | (q[j + 32] + 8) << 4.
      for (int64_t g = 0; g < cols / 64; ++g)
        for (int j = 0; j < 32; ++j)
          out[g * 32 + j] = static_cast<uint8_t>((q[g * 64 + j] + 8) | ((q[g * 64 + 32 + j] + 8) << 4));
      return stats;
    }
  }
  return stats;
}

}  // namespace kvant::cpu
