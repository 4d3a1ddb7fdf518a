#include "kernels/cpu/matmul.h"

#include <cstring>
#include <limits>

namespace kvant::cpu {

size_t act_record_bytes(int64_t k) {
  const auto bytes = static_cast<size_t>(3 * k + 2 * (k / 32) * 4);
  return (bytes + 63) / 64 * 64;
}

void detail::write_nonfinite_block(uint8_t* record, int64_t k, int64_t b) {
  std::memset(record + b * 32, 0, 32);          // q
  std::memset(record + k + b * 32, 128, 32);    // qu = q + 128
  std::memset(record + 2 * k + b * 32, 0, 32);  // lo
  auto* scale = reinterpret_cast<float*>(record + 3 * k);
  scale[b] = scale[k / 32 + b] = std::numeric_limits<float>::quiet_NaN();  // scale, corr
}

size_t packed_acts_bytes(int64_t k) {
  const int64_t groups = (k / 32 + kPackedGroupBlocks - 1) / kPackedGroupBlocks;
  return static_cast<size_t>(groups) * kPackedGroupBytes;
}

size_t act_buffer_bytes(int64_t tokens, int64_t k) {
  const size_t per_token = act_record_bytes(k) + (tokens >= kPackedMinTokens ? packed_acts_bytes(k) : 0);
  return static_cast<size_t>(tokens) * per_token;
}

void detail::pack_acts_portable(const uint8_t* record, int64_t k, uint8_t* packed) {
  const ActRecord x(record, k);
  const int64_t blocks = k / 32, groups = (blocks + kPackedGroupBlocks - 1) / kPackedGroupBlocks;
  for (int64_t g = 0; g < groups; ++g) {
    uint8_t* hi = packed + static_cast<size_t>(g) * kPackedGroupBytes;
    uint8_t* lo = hi + 8 * 64;
    auto* scale = reinterpret_cast<float*>(lo + 8 * 64);
    for (int64_t b = 0; b < kPackedGroupBlocks; ++b) {
      const int64_t block = g * kPackedGroupBlocks + b;
      for (int64_t v = 0; v < 32; ++v) {  // value v of the block -> vector v / 4, lane b
        const int64_t at = (v / 4) * 64 + b * 4 + v % 4;
        hi[at] = block < blocks ? x.qu[block * 32 + v] : 128;
        lo[at] = block < blocks ? static_cast<uint8_t>(x.lo[block * 32 + v] + 128) : 128;
      }
      scale[b] = block < blocks ? x.scale[block] * (1.0f / 256.0f) : 0.0f;
    }
  }
}

namespace {
const detail::MatmulKernels& kernels_for(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return detail::matmul_kernels_avx512();
    case SimdLevel::avx2: return detail::matmul_kernels_avx2();
    case SimdLevel::scalar: break;
  }
  return detail::matmul_kernels_reference();
}
}  // namespace

void quantize_acts(const float* x, int64_t k, uint8_t* record, SimdLevel level) {
  kernels_for(level).quantize_acts(x, k, record);
}

void pack_acts(const uint8_t* record, int64_t k, uint8_t* packed, SimdLevel level) {
  kernels_for(level).pack_acts(record, k, packed);
}

bool reads_packed_acts(SimdLevel level) { return kernels_for(level).reads_packed_acts; }

void quantize_token(const float* x, int64_t k, int64_t tokens, int64_t t, uint8_t* buffer, bool pack, SimdLevel level) {
  uint8_t* record = buffer + static_cast<size_t>(t) * act_record_bytes(k);
  quantize_acts(x, k, record, level);
  if (pack) pack_acts(record, k, buffer + static_cast<size_t>(tokens) * act_record_bytes(k) + t * packed_acts_bytes(k), level);
}

const uint8_t* packed_acts_in(const uint8_t* buffer, int64_t tokens, int64_t k) {
  return tokens >= kPackedMinTokens ? buffer + static_cast<size_t>(tokens) * act_record_bytes(k) : nullptr;
}

void matmul(const MatmulArgs& a, int64_t r0, int64_t r1, SimdLevel level) {
  if (r0 >= r1 || a.n_tokens == 0) return;
  kernels_for(level).by_dtype[static_cast<uint32_t>(a.w.dtype)](a, r0, r1);
}

}  // namespace kvant::cpu
