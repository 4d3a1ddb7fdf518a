// kvant-convert's engine: Hugging Face checkpoint (or a named synthetic shape) -> .kvant.
//
// Precision rule (also in README and `kvant-convert --help`):
//   * 1-D tensors (norm weights, biases) are stored as F32;
//   * the output projection (lm_head, or the token embedding when tied) is stored as
//     q8 when --dtype q4 (override with --head-dtype); otherwise it follows --dtype;
//   * every other matrix is stored as --dtype; a quantized type needs rows whose
//     length is a multiple of 64, and a matrix that does not fit falls back to F16.
// Source values that are NaN or infinite are refused, not converted: the error names the
// checkpoint tensor, the kvant tensor it feeds and the index of the first bad element
// (row-major in the source). A finite value outside the target type's range (f16, or
// a quantized type's scale) is refused the same way, naming the rows.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "format/dtype.h"
#include "format/model_config.h"
#include "format/quant.h"
#include "format/status.h"

namespace kvant::convert {

struct ConvertOptions {
  std::string output_path;
  DType dtype = DType::f16;
  std::optional<DType> head_dtype;  // default: q8 for q4, else dtype
  int threads = 0;                  // 0: all cores
  bool progress = true;             // draw a progress bar when stderr is a terminal
  std::string name;                 // general.name (default: the input directory's name)
  QuantMethod quant_method = QuantMethod::search;
};

struct TensorReport {
  std::string name;
  DType dtype = DType::f32;
  std::vector<uint64_t> shape;
  uint64_t n_elements = 0;
  uint64_t bytes = 0;
  ModelConfig::TensorSpec::Role role = ModelConfig::TensorSpec::Role::norm;
  double sum_sq = 0;     // Σ w² of the source values
  double sum_sq_err = 0; // Σ (w - stored)² after conversion
  double relative_rms_error() const { return sum_sq > 0 ? std::sqrt(sum_sq_err / sum_sq) : 0.0; }
};

struct ConvertReport {
  std::vector<TensorReport> tensors;
  uint64_t bytes_read = 0;     // source tensor bytes
  uint64_t bytes_written = 0;  // output file size
  double seconds = 0;
  ModelConfig config;
};

// Which dtype a tensor is stored in (the precision rule above).
DType choose_dtype(const ModelConfig& config, const ModelConfig::TensorSpec& spec, DType requested,
                   std::optional<DType> head_dtype);

Result<ConvertReport> convert_checkpoint(const std::string& model_dir, const ConvertOptions& options);

// Names of the synthetic shapes (llama2-7b, llama-1b, smollm2-135m, ...).
std::vector<std::string> synthetic_shape_names();
Result<ModelConfig> synthetic_shape(const std::string& name);
// Random-weight file of a named shape, written directly (no checkpoint).
Result<ConvertReport> write_synthetic(const std::string& shape, uint64_t seed, const ConvertOptions& options);

}  // namespace kvant::convert
