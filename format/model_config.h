// Model hyperparameters as stored in a .kvant file ("model.*" metadata keys) and the
// tensor names and shapes each architecture needs. This is part of the file format:
// FORMAT.md, "Model metadata" and "Tensor names", describes the same contract.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "format/kv_type.h"
#include "format/metadata.h"
#include "format/status.h"

namespace kvant {

class KvantWriter;

enum class Arch { llama, mistral, qwen2, gpt2 };
enum class NormType { rmsnorm, layernorm };
enum class Activation { silu, gelu_tanh, gelu };
enum class RopeScaling { none, linear, llama3 };

std::string_view arch_name(Arch a);
std::string_view kv_type_name(KvType t);
Result<KvType> kv_type_from_name(std::string_view name);  // "f16", "q8", "q4", "f32"

struct ModelConfig {
  Arch arch = Arch::llama;
  uint32_t n_layers = 0;
  uint32_t dim = 0;          // residual stream width
  uint32_t n_heads = 0;      // query heads
  uint32_t n_kv_heads = 0;   // key/value heads (GQA when < n_heads)
  uint32_t head_dim = 0;
  uint32_t ffn_dim = 0;      // hidden width of the feed-forward block
  uint32_t vocab_size = 0;
  uint32_t max_seq_len = 0;  // context length the model was trained for
  NormType norm = NormType::rmsnorm;
  float norm_eps = 1e-5f;
  Activation act = Activation::silu;
  bool gated_ffn = true;     // down(act(gate(x)) * up(x)); else down(act(up(x)))
  bool learned_pos = false;  // GPT-2 position embeddings instead of RoPE
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling = RopeScaling::none;
  float rope_factor = 1.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  uint32_t rope_original_max_seq_len = 0;
  uint32_t sliding_window = 0;  // 0: full attention
  bool tie_embeddings = false;  // output projection reuses token_embd
  bool qkv_bias = false;
  bool out_bias = false;        // attention output projection bias
  bool ffn_bias = false;
  bool norm_bias = false;       // LayerNorm beta

  // Rejects absurd or inconsistent values with a message naming the field.
  Status validate() const;

  void to_metadata(KvantWriter& writer) const;
  static Result<ModelConfig> from_metadata(const Metadata& meta);

  struct TensorSpec {
    std::string name;
    std::vector<uint64_t> shape;  // outermost first; matrices are [out_features, in_features]
    enum class Role { embedding, attention, ffn, norm, output } role;
  };
  // Every tensor the architecture needs, in file order.
  std::vector<TensorSpec> tensor_specs() const;

  // KV-cache bytes one token occupies across all layers (keys and values).
  uint64_t kv_bytes_per_token(KvType t) const;
};

}  // namespace kvant
