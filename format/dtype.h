// Tensor element types of the .kvant format and their byte layouts (format/FORMAT.md,
// "Tensor data types"). Quantized types store a tensor of R rows by K columns as two
// regions: all quants first (row-major), then all scales (row-major, one f16 per block).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace kvant {

enum class DType : uint32_t {
  f32 = 0,
  f16 = 1,
  bf16 = 2,
  q8 = 3,  // int8 quants, one f16 scale per 32 weights: 8.5 bits per weight
  q4 = 4,  // int4 quants (nibble-packed in groups of 64), one f16 scale per 32 weights: 4.5 bits per weight
};

inline constexpr uint32_t kDTypeCount = 5;
inline constexpr int64_t kQuantBlock = 32;  // weights that share one scale
inline constexpr int64_t kQuantGroup = 64;  // row length of q8/q4 tensors must be a multiple of this

bool dtype_is_quantized(DType t);
std::string_view dtype_name(DType t);
std::optional<DType> dtype_from_u32(uint32_t code);
std::optional<DType> dtype_from_name(std::string_view name);  // "f32", "f16", "bf16", "q8", "q4"
double dtype_bits_per_weight(DType t);

// Bytes of a tensor with `rows` rows of `cols` elements; nullopt when the product
// overflows 64 bits or `cols` is not a multiple of kQuantGroup for a quantized type.
std::optional<uint64_t> tensor_bytes(DType t, uint64_t rows, uint64_t cols);

// For quantized types: bytes of the quants region that precedes the scales
// (rows * cols for q8, rows * cols / 2 for q4). Assumes tensor_bytes() succeeded.
uint64_t quant_region_bytes(DType t, uint64_t rows, uint64_t cols);

}  // namespace kvant
