// Hugging Face side of an architecture: config.json -> ModelConfig, and where each
// kvant tensor comes from in the checkpoint (name, transpose, slice).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/model_config.h"
#include "format/status.h"

namespace kvant::convert {

// Parses config.json (already loaded as JSON). Errors name the key at fault.
Result<ModelConfig> parse_hf_config(const nlohmann::json& config, const std::string& file_label);

// Where one kvant tensor's values come from.
struct TensorSource {
  std::string hf_name;
  // GPT-2's Conv1D weights are stored [in, out]; kvant matrices are [out, in].
  bool transpose = false;
  // A slice of the (transposed) source: rows [row_begin, row_begin + row_count) of a
  // matrix, or elements of a vector (GPT-2's fused c_attn is split into q, k, v).
  uint64_t row_begin = 0;
  uint64_t row_count = 0;  // 0: the whole source
  // The source's own shape as the checkpoint must store it.
  std::vector<uint64_t> source_shape;
};

// The source of kvant tensor `spec` for this architecture.
TensorSource hf_tensor_source(const ModelConfig& config, const ModelConfig::TensorSpec& spec);

// Checkpoint tensors that carry no weights (cached buffers) and are skipped quietly.
bool hf_tensor_is_ignorable(const std::string& hf_name);

}  // namespace kvant::convert
