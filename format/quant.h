// Reference (scalar) quantization of one row into the q8 / q4 layouts of FORMAT.md.
//
// A row of K weights (K % 64 == 0) is cut into blocks of 32; each block gets one f16
// scale d and integer quants q with w ≈ d·q: q8 uses q ∈ [-128, 127], q4 uses
// q ∈ [-8, 7] stored as the nibble q + 8. The quants of a row are contiguous; the
// scales of a row are contiguous in the tensor's scale region.
//
// q4 packing, per group of 64 weights (32 bytes): byte j holds weight j in its low
// nibble and weight j + 32 in its high nibble. One 32-byte load therefore yields 32
// consecutive weights from the low nibbles and the next 32 from the high nibbles.
#pragma once

#include <cstdint>

namespace kvant {

enum class QuantMethod {
  search,  // per block, try candidate scales and keep the one with least squared error
  absmax,  // plain round-to-nearest with d = absmax / qmax (the baseline, and for synthetic models)
};

// The search's settings, shared with the SIMD quantizers that must match it bit for bit:
// quants are clamped to [qmin, qmax], and candidate m maps the block's largest
// magnitude to the quant m (d0 = amax / m).
struct QuantSearch {
  float qmin, qmax;
  const float* candidates;
  int n_candidates;
};
QuantSearch q8_search();
QuantSearch q4_search();

// Quantize `cols` floats; writes cols quants and cols/32 scales. Returns the sum of
// squared errors of the row after dequantization (with the stored f16 scales).
double quantize_row_q8(const float* x, int64_t cols, int8_t* quants, uint16_t* scales,
                       QuantMethod method = QuantMethod::search);
void dequantize_row_q8(const int8_t* quants, const uint16_t* scales, int64_t cols, float* out);

double quantize_row_q4(const float* x, int64_t cols, uint8_t* packed, uint16_t* scales,
                       QuantMethod method = QuantMethod::search);
void dequantize_row_q4(const uint8_t* packed, const uint16_t* scales, int64_t cols, float* out);

// The signed value (-8..7) of element j of a q4 row.
inline int q4_element(const uint8_t* packed, int64_t j) {
  const int64_t within = j % 64;
  const uint8_t byte = packed[(j / 64) * 32 + within % 32];
  return (within < 32 ? (byte & 0x0f) : (byte >> 4)) - 8;
}

}  // namespace kvant
