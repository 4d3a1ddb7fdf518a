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

void matmul(const MatmulArgs& a, int64_t r0, int64_t r1, SimdLevel level) {
  if (r0 >= r1 || a.n_tokens == 0) return;
  kernels_for(level).by_dtype[static_cast<uint32_t>(a.w.dtype)](a, r0, r1);
}

}  // namespace kvant::cpu
