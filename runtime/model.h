// A loaded model: the .kvant mapping, its hyperparameters and typed views of its
// weights (pointers into the mapping; nothing is copied or repacked).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "format/model_config.h"
#include "format/reader.h"
#include "format/status.h"
#include "kernels/cpu/matmul.h"

namespace kvant {

struct LayerWeights {
  cpu::WeightMatrix attn_q, attn_k, attn_v, attn_out;  // [q_dim, dim], [kv_dim, dim] ×2, [dim, q_dim]
  cpu::WeightMatrix ffn_gate, ffn_up, ffn_down;        // [ffn, dim] ×2, [dim, ffn]
  const float* attn_norm = nullptr;                    // (dim)
  const float* attn_norm_bias = nullptr;
  const float* ffn_norm = nullptr;
  const float* ffn_norm_bias = nullptr;
  const float* q_bias = nullptr;                       // (q_dim)
  const float* k_bias = nullptr;                       // (kv_dim)
  const float* v_bias = nullptr;
  const float* out_bias = nullptr;                     // (dim)
  const float* up_bias = nullptr;                      // (ffn)
  const float* down_bias = nullptr;                    // (dim)
};

struct ModelWeights {
  cpu::WeightMatrix token_embd;  // [vocab, dim]
  cpu::WeightMatrix pos_embd;    // [max_seq, dim] (learned positions only)
  cpu::WeightMatrix output;      // [vocab, dim]: token_embd itself when tied
  const float* output_norm = nullptr;
  const float* output_norm_bias = nullptr;
  std::vector<LayerWeights> layers;
};

class Model {
 public:
  // Opens and validates the file (header always; tensor checksums if asked), checks
  // that every tensor the architecture needs is present with the right shape and a
  // usable dtype, and builds the weight views. Errors name the file and tensor.
  static Result<std::shared_ptr<const Model>> load(const std::string& path, bool verify_checksums = false);
  // The same checks and views on a file already open (KvantFile::from_memory in fuzzing).
  static Result<std::shared_ptr<const Model>> from_file(std::unique_ptr<KvantFile> file);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const KvantFile& file() const { return *file_; }
  // RoPE inverse frequencies (head_dim/2), with the file's scaling applied, as
  // Hugging Face computes them (float32).
  const std::vector<float>& rope_inv_freq() const { return inv_freq_; }
  // Bytes of weights one decode step reads (every layer matrix and the output head).
  uint64_t decode_weight_bytes() const;

 private:
  Model() = default;
  std::unique_ptr<KvantFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
  std::vector<float> inv_freq_;
};

}  // namespace kvant
