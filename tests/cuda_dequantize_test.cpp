// CUDA dequantization against the scalar reference, on awkward shapes. Skips when no
// GPU is present (CI compiles it; the GPU machine runs it).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>

#include "format/dtype.h"
#include "format/half.h"
#include "format/quant.h"
#include "kernels/cuda/dequantize.h"
#include "tests/test_util.h"

namespace kvant {
namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA GPU present: GPU test skipped"

TEST(CudaDequantize, MatchesReferenceForEveryType) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    int64_t rows, cols;
  };
  for (Shape s : {Shape{1, 64}, Shape{3, 576}, Shape{17, 4160}, Shape{256, 2048}}) {
    const auto x = test::gaussian(static_cast<size_t>(s.rows * s.cols), 99 + static_cast<uint64_t>(s.cols), 0.1f);
    for (DType dtype : {DType::f32, DType::f16, DType::bf16, DType::q8, DType::q4}) {
      const uint64_t bytes = *tensor_bytes(dtype, static_cast<uint64_t>(s.rows), static_cast<uint64_t>(s.cols));
      std::vector<uint8_t> tensor(bytes);
      std::vector<float> expected(x.size());
      const uint64_t qbytes = quant_region_bytes(dtype, static_cast<uint64_t>(s.rows), static_cast<uint64_t>(s.cols));
      auto* scales = reinterpret_cast<uint16_t*>(tensor.data() + qbytes);
      for (int64_t r = 0; r < s.rows; ++r) {
        const float* row = x.data() + r * s.cols;
        float* want = expected.data() + r * s.cols;
        switch (dtype) {
          case DType::f32: std::memcpy(tensor.data() + r * s.cols * 4, row, static_cast<size_t>(s.cols) * 4);
            std::memcpy(want, row, static_cast<size_t>(s.cols) * 4); break;
          case DType::f16: case DType::bf16:
            for (int64_t k = 0; k < s.cols; ++k) {
              const uint16_t h = dtype == DType::f16 ? f32_to_f16(row[k]) : f32_to_bf16(row[k]);
              std::memcpy(tensor.data() + (r * s.cols + k) * 2, &h, 2);
              want[k] = dtype == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
            }
            break;
          case DType::q8: {
            auto* q = reinterpret_cast<int8_t*>(tensor.data()) + r * s.cols;
            quantize_row_q8(row, s.cols, q, scales + r * s.cols / 32);
            dequantize_row_q8(q, scales + r * s.cols / 32, s.cols, want);
            break;
          }
          case DType::q4: {
            uint8_t* q = tensor.data() + r * s.cols / 2;
            quantize_row_q4(row, s.cols, q, scales + r * s.cols / 32);
            dequantize_row_q4(q, scales + r * s.cols / 32, s.cols, want);
            break;
          }
        }
      }
      void* d_tensor = nullptr;
      float* d_out = nullptr;
      ASSERT_EQ(cudaMalloc(&d_tensor, bytes), cudaSuccess);
      ASSERT_EQ(cudaMalloc(&d_out, x.size() * 4), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(d_tensor, tensor.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
      ASSERT_EQ(cuda::dequantize_to_f32(dtype, d_tensor, s.rows, s.cols, d_out), cudaSuccess);
      std::vector<float> got(x.size());
      ASSERT_EQ(cudaMemcpy(got.data(), d_out, x.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      cudaFree(d_tensor);
      cudaFree(d_out);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], expected[i]) << dtype_name(dtype) << " [" << s.rows << "x" << s.cols << "] element " << i;
    }
  }
}

}  // namespace
}  // namespace kvant
