#include "format/model_config.h"

#include "format/writer.h"

namespace kvant {

namespace {

template <class E, size_t N>
Result<E> enum_from(std::string_view key, std::string_view value, const std::pair<std::string_view, E> (&names)[N]) {
  std::string list;
  for (const auto& [name, e] : names) {
    if (name == value) return e;
    list += fmt::format("{}{}", list.empty() ? "" : ", ", name);
  }
  return Status::error(ErrorCode::unsupported, "metadata key '{}' is '{}'; supported: {}", key, value, list);
}

template <class E, size_t N>
std::string_view enum_name(E e, const std::pair<std::string_view, E> (&names)[N]) {
  for (const auto& [name, v] : names)
    if (v == e) return name;
  return "?";
}

constexpr std::pair<std::string_view, Arch> kArchNames[] = {
    {"llama", Arch::llama}, {"mistral", Arch::mistral}, {"qwen2", Arch::qwen2}, {"gpt2", Arch::gpt2}};
constexpr std::pair<std::string_view, NormType> kNormNames[] = {{"rmsnorm", NormType::rmsnorm},
                                                                 {"layernorm", NormType::layernorm}};
constexpr std::pair<std::string_view, Activation> kActNames[] = {
    {"silu", Activation::silu}, {"gelu_tanh", Activation::gelu_tanh}, {"gelu", Activation::gelu}};
constexpr std::pair<std::string_view, RopeScaling> kRopeNames[] = {
    {"none", RopeScaling::none}, {"linear", RopeScaling::linear}, {"llama3", RopeScaling::llama3}};
constexpr std::pair<std::string_view, KvType> kKvNames[] = {
    {"f16", KvType::f16}, {"q8", KvType::q8}, {"q4", KvType::q4}, {"f32", KvType::f32}};

Status field_error(std::string_view field, uint64_t value, std::string_view why) {
  return Status::error(ErrorCode::invalid_argument, "model {} = {} is invalid: {}", field, value, why);
}

}  // namespace

std::string_view arch_name(Arch a) { return enum_name(a, kArchNames); }
std::string_view kv_type_name(KvType t) { return enum_name(t, kKvNames); }
Result<KvType> kv_type_from_name(std::string_view name) { return enum_from("kv type", name, kKvNames); }

Status ModelConfig::validate() const {
  if (n_layers == 0 || n_layers > 4096) return field_error("n_layers", n_layers, "must be in [1, 4096]");
  if (dim == 0 || dim > (1u << 17)) return field_error("dim", dim, "must be in [1, 131072]");
  if (n_heads == 0 || n_heads > 4096) return field_error("n_heads", n_heads, "must be in [1, 4096]");
  if (n_kv_heads == 0 || n_kv_heads > n_heads) return field_error("n_kv_heads", n_kv_heads, "must be in [1, n_heads]");
  if (n_heads % n_kv_heads != 0)
    return field_error("n_kv_heads", n_kv_heads, fmt::format("must divide n_heads ({})", n_heads));
  if (head_dim == 0 || head_dim > 1024 || head_dim % 2 != 0)
    return field_error("head_dim", head_dim, "must be even and in [2, 1024]");
  if (ffn_dim == 0 || ffn_dim > (1u << 20)) return field_error("ffn_dim", ffn_dim, "must be in [1, 1048576]");
  if (vocab_size == 0 || vocab_size > (1u << 24)) return field_error("vocab_size", vocab_size, "must be in [1, 2^24]");
  if (max_seq_len == 0 || max_seq_len > (1u << 24))
    return field_error("max_seq_len", max_seq_len, "must be in [1, 2^24]");
  if (!(norm_eps > 0.0f) || !(norm_eps < 1.0f))
    return Status::error(ErrorCode::invalid_argument, "model norm_eps = {} is invalid: must be in (0, 1)", norm_eps);
  if (!learned_pos && !(rope_theta > 0.0f))
    return Status::error(ErrorCode::invalid_argument, "model rope_theta = {} is invalid: must be > 0", rope_theta);
  if (rope_scaling != RopeScaling::none && !(rope_factor >= 1.0f))
    return Status::error(ErrorCode::invalid_argument, "model rope scaling factor = {} is invalid: must be >= 1",
                         rope_factor);
  if (rope_scaling == RopeScaling::llama3 &&
      (rope_original_max_seq_len == 0 || !(rope_high_freq_factor > rope_low_freq_factor)))
    return Status::error(ErrorCode::invalid_argument,
                         "model llama3 rope scaling needs original_max_position_embeddings > 0 and "
                         "high_freq_factor > low_freq_factor");
  return Status::ok();
}

void ModelConfig::to_metadata(KvantWriter& w) const {
  w.set("model.arch", std::string(arch_name(arch)));
  w.set("model.n_layers", n_layers);
  w.set("model.dim", dim);
  w.set("model.n_heads", n_heads);
  w.set("model.n_kv_heads", n_kv_heads);
  w.set("model.head_dim", head_dim);
  w.set("model.ffn_dim", ffn_dim);
  w.set("model.vocab_size", vocab_size);
  w.set("model.max_seq_len", max_seq_len);
  w.set("model.norm", std::string(enum_name(norm, kNormNames)));
  w.set("model.norm_eps", norm_eps);
  w.set("model.act", std::string(enum_name(act, kActNames)));
  w.set("model.gated_ffn", gated_ffn);
  w.set("model.learned_pos", learned_pos);
  w.set("model.rope_theta", rope_theta);
  w.set("model.rope_scaling", std::string(enum_name(rope_scaling, kRopeNames)));
  w.set("model.rope_factor", rope_factor);
  w.set("model.rope_low_freq_factor", rope_low_freq_factor);
  w.set("model.rope_high_freq_factor", rope_high_freq_factor);
  w.set("model.rope_original_max_seq_len", rope_original_max_seq_len);
  w.set("model.sliding_window", sliding_window);
  w.set("model.tie_embeddings", tie_embeddings);
  w.set("model.qkv_bias", qkv_bias);
  w.set("model.out_bias", out_bias);
  w.set("model.ffn_bias", ffn_bias);
  w.set("model.norm_bias", norm_bias);
}

Result<ModelConfig> ModelConfig::from_metadata(const Metadata& m) {
  ModelConfig c;
  KVANT_ASSIGN_OR_RETURN(const std::string_view arch, m.get_string("model.arch"));
  KVANT_ASSIGN_OR_RETURN(c.arch, enum_from("model.arch", arch, kArchNames));
  KVANT_ASSIGN_OR_RETURN(c.n_layers, m.get_u32("model.n_layers"));
  KVANT_ASSIGN_OR_RETURN(c.dim, m.get_u32("model.dim"));
  KVANT_ASSIGN_OR_RETURN(c.n_heads, m.get_u32("model.n_heads"));
  KVANT_ASSIGN_OR_RETURN(c.n_kv_heads, m.get_u32("model.n_kv_heads"));
  KVANT_ASSIGN_OR_RETURN(c.head_dim, m.get_u32("model.head_dim"));
  KVANT_ASSIGN_OR_RETURN(c.ffn_dim, m.get_u32("model.ffn_dim"));
  KVANT_ASSIGN_OR_RETURN(c.vocab_size, m.get_u32("model.vocab_size"));
  KVANT_ASSIGN_OR_RETURN(c.max_seq_len, m.get_u32("model.max_seq_len"));
  KVANT_ASSIGN_OR_RETURN(const std::string_view norm, m.get_string("model.norm"));
  KVANT_ASSIGN_OR_RETURN(c.norm, enum_from("model.norm", norm, kNormNames));
  KVANT_ASSIGN_OR_RETURN(c.norm_eps, m.get_f32("model.norm_eps"));
  KVANT_ASSIGN_OR_RETURN(const std::string_view act, m.get_string("model.act"));
  KVANT_ASSIGN_OR_RETURN(c.act, enum_from("model.act", act, kActNames));
  KVANT_ASSIGN_OR_RETURN(c.gated_ffn, m.get_bool("model.gated_ffn"));
  KVANT_ASSIGN_OR_RETURN(c.learned_pos, m.get_bool("model.learned_pos"));
  KVANT_ASSIGN_OR_RETURN(c.rope_theta, m.get_f32("model.rope_theta"));
  KVANT_ASSIGN_OR_RETURN(const std::string_view rope, m.get_string("model.rope_scaling"));
  KVANT_ASSIGN_OR_RETURN(c.rope_scaling, enum_from("model.rope_scaling", rope, kRopeNames));
  KVANT_ASSIGN_OR_RETURN(c.rope_factor, m.get_f32("model.rope_factor"));
  KVANT_ASSIGN_OR_RETURN(c.rope_low_freq_factor, m.get_f32("model.rope_low_freq_factor"));
  KVANT_ASSIGN_OR_RETURN(c.rope_high_freq_factor, m.get_f32("model.rope_high_freq_factor"));
  KVANT_ASSIGN_OR_RETURN(c.rope_original_max_seq_len, m.get_u32("model.rope_original_max_seq_len"));
  KVANT_ASSIGN_OR_RETURN(c.sliding_window, m.get_u32("model.sliding_window"));
  KVANT_ASSIGN_OR_RETURN(c.tie_embeddings, m.get_bool("model.tie_embeddings"));
  KVANT_ASSIGN_OR_RETURN(c.qkv_bias, m.get_bool("model.qkv_bias"));
  KVANT_ASSIGN_OR_RETURN(c.out_bias, m.get_bool("model.out_bias"));
  KVANT_ASSIGN_OR_RETURN(c.ffn_bias, m.get_bool("model.ffn_bias"));
  KVANT_ASSIGN_OR_RETURN(c.norm_bias, m.get_bool("model.norm_bias"));
  KVANT_TRY(c.validate());
  return c;
}

std::vector<ModelConfig::TensorSpec> ModelConfig::tensor_specs() const {
  using S = TensorSpec;
  const uint64_t q_dim = uint64_t{n_heads} * head_dim, kv_dim = uint64_t{n_kv_heads} * head_dim;
  std::vector<S> specs;
  specs.push_back({"token_embd", {vocab_size, dim}, S::Role::embedding});
  if (learned_pos) specs.push_back({"pos_embd", {max_seq_len, dim}, S::Role::embedding});
  for (uint32_t i = 0; i < n_layers; ++i) {
    const std::string p = fmt::format("layers.{}.", i);
    specs.push_back({p + "attn_norm", {dim}, S::Role::norm});
    if (norm_bias) specs.push_back({p + "attn_norm_bias", {dim}, S::Role::norm});
    specs.push_back({p + "attn_q", {q_dim, dim}, S::Role::attention});
    specs.push_back({p + "attn_k", {kv_dim, dim}, S::Role::attention});
    specs.push_back({p + "attn_v", {kv_dim, dim}, S::Role::attention});
    if (qkv_bias) {
      specs.push_back({p + "attn_q_bias", {q_dim}, S::Role::attention});
      specs.push_back({p + "attn_k_bias", {kv_dim}, S::Role::attention});
      specs.push_back({p + "attn_v_bias", {kv_dim}, S::Role::attention});
    }
    specs.push_back({p + "attn_out", {dim, q_dim}, S::Role::attention});
    if (out_bias) specs.push_back({p + "attn_out_bias", {dim}, S::Role::attention});
    specs.push_back({p + "ffn_norm", {dim}, S::Role::norm});
    if (norm_bias) specs.push_back({p + "ffn_norm_bias", {dim}, S::Role::norm});
    if (gated_ffn) specs.push_back({p + "ffn_gate", {ffn_dim, dim}, S::Role::ffn});
    specs.push_back({p + "ffn_up", {ffn_dim, dim}, S::Role::ffn});
    if (ffn_bias) specs.push_back({p + "ffn_up_bias", {ffn_dim}, S::Role::ffn});
    specs.push_back({p + "ffn_down", {dim, ffn_dim}, S::Role::ffn});
    if (ffn_bias) specs.push_back({p + "ffn_down_bias", {dim}, S::Role::ffn});
  }
  specs.push_back({"output_norm", {dim}, S::Role::norm});
  if (norm_bias) specs.push_back({"output_norm_bias", {dim}, S::Role::norm});
  if (!tie_embeddings) specs.push_back({"output", {vocab_size, dim}, S::Role::output});
  return specs;
}

uint64_t ModelConfig::kv_bytes_per_token(KvType t) const {
  // Per layer, per KV head, keys and values each: head_dim elements, plus one f16
  // scale for the quantized types (kernels/layout.h, "KV pages").
  uint64_t per_head = 0;
  switch (t) {
    case KvType::f32: per_head = 4ull * head_dim; break;
    case KvType::f16: per_head = 2ull * head_dim; break;
    case KvType::q8: per_head = head_dim + 2ull; break;
    case KvType::q4: per_head = head_dim / 2 + 2ull; break;
  }
  return 2ull * n_layers * n_kv_heads * per_head;
}

}  // namespace kvant
