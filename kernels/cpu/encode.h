// Weight encoding for the converter: f32 rows -> a .kvant dtype, with the statistics
// the converter reports. Results equal format/'s scalar reference bit for bit (tested)
// on every SIMD level; only the speed differs. Dispatched on active_simd_level().
#pragma once

#include <cstdint>

#include "format/dtype.h"
#include "format/quant.h"
#include "kernels/cpu/cpu_features.h"

namespace kvant::cpu {

struct EncodeStats {
  double sum_sq = 0;      // Σ x²
  double sum_sq_err = 0;  // Σ (x - stored)²
  bool overflow = false;  // a value became infinite (outside the f16 / bf16 range)
};

// Encodes one row of `cols` floats. For q8/q4, `out` receives the row's quants and
// `scales` its cols/32 scales (the tensor's two regions, FORMAT.md).
EncodeStats encode_row(DType dtype, const float* x, int64_t cols, uint8_t* out, uint16_t* scales, QuantMethod method,
                       SimdLevel level = active_simd_level());

namespace detail {
struct SearchResult {
  double sum_sq, sum_sq_err;
};
// Search quantization of one row into int8 values (natural order) and f16 scales.
SearchResult quantize_search_avx2(const float* x, int64_t cols, QuantSearch search, int8_t* q, uint16_t* scales);
SearchResult quantize_search_avx512(const float* x, int64_t cols, QuantSearch search, int8_t* q, uint16_t* scales);
// f32 -> f16 (round to nearest even).
EncodeStats f32_to_f16_avx2(const float* x, int64_t n, uint16_t* out);
EncodeStats f32_to_f16_avx512(const float* x, int64_t n, uint16_t* out);
}  // namespace detail

}  // namespace kvant::cpu
