#include "kernels/cpu/matmul.h"

namespace kvant::cpu {

size_t act_record_bytes(int64_t k) {
  const auto bytes = static_cast<size_t>(3 * k + 2 * (k / 32) * 4);
  return (bytes + 63) / 64 * 64;
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
