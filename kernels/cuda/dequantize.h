// CUDA dequantization of .kvant tensors (FORMAT.md section 6) to f32, on the device.
// Used to check the layouts on the GPU and, later, to feed tensor-core GEMMs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "format/dtype.h"

namespace kvant::cuda {

// `tensor` points at a whole tensor's bytes in device memory, `out` at rows*cols floats.
cudaError_t dequantize_to_f32(DType dtype, const void* tensor, int64_t rows, int64_t cols, float* out,
                              cudaStream_t stream = nullptr);

}  // namespace kvant::cuda
