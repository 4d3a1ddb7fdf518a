#include "format/dtype.h"

namespace kvant {

namespace {
struct DTypeInfo {
  std::string_view name;
  bool quantized;
  double bits_per_weight;
};
constexpr DTypeInfo kInfo[kDTypeCount] = {
    {"f32", false, 32.0}, {"f16", false, 16.0}, {"bf16", false, 16.0},
    {"q8", true, 8.0 + 16.0 / kQuantBlock}, {"q4", true, 4.0 + 16.0 / kQuantBlock},
};

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }
}  // namespace

bool dtype_is_quantized(DType t) { return kInfo[static_cast<uint32_t>(t)].quantized; }
std::string_view dtype_name(DType t) { return kInfo[static_cast<uint32_t>(t)].name; }
double dtype_bits_per_weight(DType t) { return kInfo[static_cast<uint32_t>(t)].bits_per_weight; }

std::optional<DType> dtype_from_u32(uint32_t code) {
  if (code >= kDTypeCount) return std::nullopt;
  return static_cast<DType>(code);
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (uint32_t i = 0; i < kDTypeCount; ++i)
    if (kInfo[i].name == name) return static_cast<DType>(i);
  return std::nullopt;
}

std::optional<uint64_t> tensor_bytes(DType t, uint64_t rows, uint64_t cols) {
  uint64_t n = 0;
  if (mul_overflows(rows, cols, &n)) return std::nullopt;
  uint64_t bytes = 0;
  switch (t) {
    case DType::f32:
      if (mul_overflows(n, 4, &bytes)) return std::nullopt;
      return bytes;
    case DType::f16:
    case DType::bf16:
      if (mul_overflows(n, 2, &bytes)) return std::nullopt;
      return bytes;
    case DType::q8:
    case DType::q4: {
      if (cols % kQuantGroup != 0) return std::nullopt;
      const uint64_t quants = t == DType::q8 ? n : n / 2;
      const uint64_t scales = n / kQuantBlock * 2;  // n < 2^64 so no overflow
      if (__builtin_add_overflow(quants, scales, &bytes)) return std::nullopt;
      return bytes;
    }
  }
  return std::nullopt;
}

uint64_t quant_region_bytes(DType t, uint64_t rows, uint64_t cols) {
  return t == DType::q4 ? rows * cols / 2 : rows * cols;
}

}  // namespace kvant
