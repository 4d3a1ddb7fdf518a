#include "runtime/model.h"

#include <cmath>

namespace kvant {

namespace {

// Llama-3 frequency scaling (transformers' _compute_llama3_parameters), in float32.
void apply_llama3_scaling(const ModelConfig& c, std::vector<float>& inv_freq) {
  const float factor = c.rope_factor, low = c.rope_low_freq_factor, high = c.rope_high_freq_factor;
  const auto old_len = static_cast<float>(c.rope_original_max_seq_len);
  const float low_wavelen = old_len / low, high_wavelen = old_len / high;
  constexpr float kPi = 3.14159265358979323846f;
  for (float& f : inv_freq) {
    const float wavelen = 2.0f * kPi / f;
    if (wavelen > low_wavelen) {
      f = f / factor;
    } else if (wavelen >= high_wavelen) {  // medium frequencies: smooth interpolation
      const float smooth = (old_len / wavelen - low) / (high - low);
      f = (1.0f - smooth) * f / factor + smooth * f;
    }
  }
}

}  // namespace

uint64_t Model::decode_weight_bytes() const {
  uint64_t bytes = 0;
  auto add = [&](const cpu::WeightMatrix& w) {
    if (w.data) bytes += *tensor_bytes(w.dtype, static_cast<uint64_t>(w.rows), static_cast<uint64_t>(w.cols));
  };
  for (const auto& l : weights_.layers) {
    for (const auto* w : {&l.attn_q, &l.attn_k, &l.attn_v, &l.attn_out, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) add(*w);
  }
  add(weights_.output);
  return bytes;
}

Result<std::shared_ptr<const Model>> Model::load(const std::string& path, bool verify_checksums) {
  KVANT_ASSIGN_OR_RETURN(auto file, KvantFile::open(path, verify_checksums));
  return from_file(std::move(file));
}

Result<std::shared_ptr<const Model>> Model::from_file(std::unique_ptr<KvantFile> file) {
  std::shared_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  const std::string& path = m->file_->path();
  auto config = ModelConfig::from_metadata(m->file_->metadata());
  if (!config) return config.status().with_context(path);
  m->config_ = *config;
  const ModelConfig& c = m->config_;
  const KvantFile& f = *m->file_;

  // Every tensor the architecture names, present, with the right shape and a dtype
  // the kernels read: vectors in f32, matrices in any weight type.
  for (const auto& spec : c.tensor_specs()) {
    const TensorInfo* t = f.find_tensor(spec.name);
    if (!t) return Status::error(ErrorCode::format, "{}: missing tensor '{}'", path, spec.name);
    if (std::vector<uint64_t>(t->shape.begin(), t->shape.begin() + t->n_dims) != spec.shape) {
      std::string want;
      for (size_t i = 0; i < spec.shape.size(); ++i) want += fmt::format("{}{}", i ? ", " : "", spec.shape[i]);
      return Status::error(ErrorCode::format, "{}: tensor '{}' has shape {} but the model needs [{}]", path,
                           spec.name, t->shape_string(), want);
    }
    if (spec.shape.size() == 1 && t->dtype != DType::f32)
      return Status::error(ErrorCode::format, "{}: tensor '{}' is {}, vectors must be f32", path, spec.name,
                           dtype_name(t->dtype));
  }
  auto matrix = [&](const std::string& name) {
    const TensorInfo* t = f.find_tensor(name);
    return cpu::WeightMatrix{t->dtype, static_cast<int64_t>(t->rows()), static_cast<int64_t>(t->cols()),
                             f.data(*t).data()};
  };
  auto vec = [&](const std::string& name) -> const float* {
    const TensorInfo* t = f.find_tensor(name);
    return t ? reinterpret_cast<const float*>(f.data(*t).data()) : nullptr;
  };
  ModelWeights& w = m->weights_;
  w.token_embd = matrix("token_embd");
  if (c.learned_pos) w.pos_embd = matrix("pos_embd");
  w.output = c.tie_embeddings ? w.token_embd : matrix("output");
  w.output_norm = vec("output_norm");
  w.output_norm_bias = vec("output_norm_bias");
  for (uint32_t i = 0; i < c.n_layers; ++i) {
    const std::string p = fmt::format("layers.{}.", i);
    LayerWeights l;
    l.attn_q = matrix(p + "attn_q");
    l.attn_k = matrix(p + "attn_k");
    l.attn_v = matrix(p + "attn_v");
    l.attn_out = matrix(p + "attn_out");
    if (c.gated_ffn) l.ffn_gate = matrix(p + "ffn_gate");
    l.ffn_up = matrix(p + "ffn_up");
    l.ffn_down = matrix(p + "ffn_down");
    l.attn_norm = vec(p + "attn_norm");
    l.attn_norm_bias = vec(p + "attn_norm_bias");
    l.ffn_norm = vec(p + "ffn_norm");
    l.ffn_norm_bias = vec(p + "ffn_norm_bias");
    l.q_bias = vec(p + "attn_q_bias");
    l.k_bias = vec(p + "attn_k_bias");
    l.v_bias = vec(p + "attn_v_bias");
    l.out_bias = vec(p + "attn_out_bias");
    l.up_bias = vec(p + "ffn_up_bias");
    l.down_bias = vec(p + "ffn_down_bias");
    w.layers.push_back(l);
  }

  // inv_freq[i] = 1 / theta^(2i / head_dim), in float32 like transformers.
  const uint32_t half = c.head_dim / 2;
  m->inv_freq_.resize(half);
  for (uint32_t i = 0; i < half; ++i)
    m->inv_freq_[i] =
        1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
  if (c.rope_scaling == RopeScaling::llama3) apply_llama3_scaling(c, m->inv_freq_);
  if (c.rope_scaling == RopeScaling::linear)
    for (float& v : m->inv_freq_) v /= c.rope_factor;
  return std::shared_ptr<const Model>(std::move(m));
}

}  // namespace kvant
