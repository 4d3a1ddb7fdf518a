#include "convert/hf_model.h"

#include <cmath>
#include <nlohmann/json.hpp>

namespace kvant::convert {

using nlohmann::json;

namespace {

class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& file) : j_(j), file_(file) {}

  Status error(std::string_view msg) const {
    return Status(ErrorCode::invalid_argument, fmt::format("{}: {}", file_, msg));
  }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  Result<uint32_t> u32(const char* key) const {
    if (!has(key)) return error(fmt::format("missing key '{}'", key));
    return u32_of(key, j_[key]);
  }
  Result<uint32_t> u32_or(const char* key, uint32_t fallback) const {
    return has(key) ? u32(key) : Result<uint32_t>(fallback);
  }
  Result<float> f32_or(const char* key, float fallback) const { return has(key) ? f32_of(key, j_[key]) : fallback; }
  Result<float> f32(const char* key) const {
    if (!has(key)) return error(fmt::format("missing key '{}'", key));
    return f32_of(key, j_[key]);
  }
  Result<bool> boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_boolean()) return error(fmt::format("key '{}' must be true or false", key));
    return j_[key].get<bool>();
  }
  Result<std::string> string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_[key].is_string()) return error(fmt::format("key '{}' must be a string", key));
    return j_[key].get<std::string>();
  }

  Result<uint32_t> u32_of(std::string_view key, const json& v) const {
    // Integers may be spelled as floats ("4096.0"); the range is checked on the double,
    // before any conversion (a float-to-integer conversion out of range is undefined).
    if (!v.is_number()) return error(fmt::format("key '{}' must be an integer", key));
    const double d = v.get<double>();
    if (v.is_number_float() && d != std::floor(d)) return error(fmt::format("key '{}' must be an integer", key));
    if (!(d >= 0 && d <= 4294967295.0)) return error(fmt::format("key '{}' = {} is out of range", key, v.dump()));
    return static_cast<uint32_t>(d);
  }
  Result<float> f32_of(std::string_view key, const json& v) const {
    if (!v.is_number()) return error(fmt::format("key '{}' must be a number", key));
    return static_cast<float>(v.get<double>());
  }
  const json& raw() const { return j_; }

 private:
  const json& j_;
  std::string file_;  // a copy: readers of nested objects are given temporary labels
};

// RoPE settings: transformers 4.x keeps rope_theta and rope_scaling at the top level,
// 5.x nests them in rope_parameters.
Status parse_rope(const ConfigReader& r, ModelConfig& c) {
  const json& j = r.raw();
  const json* params = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) params = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) params = &j["rope_scaling"];
  KVANT_ASSIGN_OR_RETURN(c.rope_theta, r.f32_or("rope_theta", 10000.0f));
  if (!params) return Status::ok();
  const ConfigReader p(*params, std::string("config.json rope parameters"));
  if (p.has("rope_theta")) {
    KVANT_ASSIGN_OR_RETURN(c.rope_theta, p.f32("rope_theta"));
  }
  KVANT_ASSIGN_OR_RETURN(std::string type, p.string_or("rope_type", "default"));
  if (type == "default") {
    KVANT_ASSIGN_OR_RETURN(type, p.string_or("type", "default"));
  }
  if (type == "default") return Status::ok();
  if (type == "linear") {
    c.rope_scaling = RopeScaling::linear;
    KVANT_ASSIGN_OR_RETURN(c.rope_factor, p.f32("factor"));
    return Status::ok();
  }
  if (type == "llama3") {
    c.rope_scaling = RopeScaling::llama3;
    KVANT_ASSIGN_OR_RETURN(c.rope_factor, p.f32("factor"));
    KVANT_ASSIGN_OR_RETURN(c.rope_low_freq_factor, p.f32("low_freq_factor"));
    KVANT_ASSIGN_OR_RETURN(c.rope_high_freq_factor, p.f32("high_freq_factor"));
    KVANT_ASSIGN_OR_RETURN(c.rope_original_max_seq_len, p.u32("original_max_position_embeddings"));
    return Status::ok();
  }
  return Status(ErrorCode::unsupported,
                fmt::format("config.json: rope scaling type '{}' is not supported (supported: default, linear, llama3)",
                            type));
}

Result<ModelConfig> parse_llama_like(const ConfigReader& r, Arch arch) {
  ModelConfig c;
  c.arch = arch;
  KVANT_ASSIGN_OR_RETURN(c.dim, r.u32("hidden_size"));
  KVANT_ASSIGN_OR_RETURN(c.n_layers, r.u32("num_hidden_layers"));
  KVANT_ASSIGN_OR_RETURN(c.n_heads, r.u32("num_attention_heads"));
  KVANT_ASSIGN_OR_RETURN(c.n_kv_heads, r.u32_or("num_key_value_heads", c.n_heads));
  KVANT_ASSIGN_OR_RETURN(c.ffn_dim, r.u32("intermediate_size"));
  KVANT_ASSIGN_OR_RETURN(c.vocab_size, r.u32("vocab_size"));
  KVANT_ASSIGN_OR_RETURN(c.max_seq_len, r.u32_or("max_position_embeddings", 2048));
  KVANT_ASSIGN_OR_RETURN(c.norm_eps, r.f32_or("rms_norm_eps", 1e-6f));
  if (c.n_heads == 0) return r.error("num_attention_heads is 0");
  if (r.has("head_dim")) {
    KVANT_ASSIGN_OR_RETURN(c.head_dim, r.u32("head_dim"));
  } else {
    if (c.dim % c.n_heads != 0)
      return r.error(fmt::format("hidden_size {} is not divisible by num_attention_heads {}", c.dim, c.n_heads));
    c.head_dim = c.dim / c.n_heads;
  }
  KVANT_ASSIGN_OR_RETURN(const std::string act, r.string_or("hidden_act", "silu"));
  if (act != "silu" && act != "swish")
    return Status(ErrorCode::unsupported, fmt::format("config.json: hidden_act '{}' is not supported for {} (silu)",
                                                      act, arch_name(arch)));
  KVANT_ASSIGN_OR_RETURN(c.tie_embeddings, r.boolean_or("tie_word_embeddings", false));
  KVANT_TRY(parse_rope(r, c));
  if (arch == Arch::qwen2) {
    c.qkv_bias = true;
    KVANT_ASSIGN_OR_RETURN(const bool sliding, r.boolean_or("use_sliding_window", false));
    if (sliding)
      return Status(ErrorCode::unsupported, "config.json: Qwen2 use_sliding_window = true is not supported");
  } else {
    KVANT_ASSIGN_OR_RETURN(const bool bias, r.boolean_or("attention_bias", false));
    c.qkv_bias = c.out_bias = bias;
    KVANT_ASSIGN_OR_RETURN(const bool mlp_bias, r.boolean_or("mlp_bias", false));
    if (mlp_bias) return Status(ErrorCode::unsupported, "config.json: mlp_bias = true is not supported");
  }
  if (arch == Arch::mistral) {
    KVANT_ASSIGN_OR_RETURN(c.sliding_window, r.u32_or("sliding_window", 0));
  }
  return c;
}

Result<ModelConfig> parse_gpt2(const ConfigReader& r) {
  ModelConfig c;
  c.arch = Arch::gpt2;
  KVANT_ASSIGN_OR_RETURN(c.dim, r.u32("n_embd"));
  KVANT_ASSIGN_OR_RETURN(c.n_layers, r.u32("n_layer"));
  KVANT_ASSIGN_OR_RETURN(c.n_heads, r.u32("n_head"));
  c.n_kv_heads = c.n_heads;
  if (c.n_heads == 0) return r.error("n_head is 0");
  if (c.dim % c.n_heads != 0)
    return r.error(fmt::format("n_embd {} is not divisible by n_head {}", c.dim, c.n_heads));
  c.head_dim = c.dim / c.n_heads;
  KVANT_ASSIGN_OR_RETURN(c.ffn_dim, r.u32_or("n_inner", 4 * c.dim));
  KVANT_ASSIGN_OR_RETURN(c.vocab_size, r.u32("vocab_size"));
  KVANT_ASSIGN_OR_RETURN(c.max_seq_len, r.u32("n_positions"));
  KVANT_ASSIGN_OR_RETURN(c.norm_eps, r.f32_or("layer_norm_epsilon", 1e-5f));
  KVANT_ASSIGN_OR_RETURN(const std::string act, r.string_or("activation_function", "gelu_new"));
  if (act == "gelu_new" || act == "gelu_pytorch_tanh") c.act = Activation::gelu_tanh;
  else if (act == "gelu") c.act = Activation::gelu;
  else
    return Status(ErrorCode::unsupported,
                  fmt::format("config.json: activation_function '{}' is not supported (gelu_new, gelu)", act));
  for (const char* key : {"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"}) {
    KVANT_ASSIGN_OR_RETURN(const bool on, r.boolean_or(key, false));
    if (on) return Status(ErrorCode::unsupported, fmt::format("config.json: {} = true is not supported", key));
  }
  KVANT_ASSIGN_OR_RETURN(const bool scale_attn, r.boolean_or("scale_attn_weights", true));
  if (!scale_attn) return Status(ErrorCode::unsupported, "config.json: scale_attn_weights = false is not supported");
  KVANT_ASSIGN_OR_RETURN(c.tie_embeddings, r.boolean_or("tie_word_embeddings", true));
  c.norm = NormType::layernorm;
  c.gated_ffn = false;
  c.learned_pos = true;
  c.qkv_bias = c.out_bias = c.ffn_bias = c.norm_bias = true;
  return c;
}

}  // namespace

Result<ModelConfig> parse_hf_config(const json& j, const std::string& file) {
  if (!j.is_object()) return Status(ErrorCode::format, fmt::format("{}: not a JSON object", file));
  const ConfigReader r(j, file);
  KVANT_ASSIGN_OR_RETURN(const std::string model_type, r.string_or("model_type", ""));
  std::string architecture;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string())
    architecture = j["architectures"][0].get<std::string>();
  Result<ModelConfig> c = Status(ErrorCode::unsupported, "");
  if (model_type == "llama") c = parse_llama_like(r, Arch::llama);
  else if (model_type == "mistral") c = parse_llama_like(r, Arch::mistral);
  else if (model_type == "qwen2") c = parse_llama_like(r, Arch::qwen2);
  else if (model_type == "gpt2") c = parse_gpt2(r);
  else
    return Status(ErrorCode::unsupported,
                  fmt::format("{}: unsupported architecture (model_type '{}'{}); kvant converts llama (Llama-2, "
                              "Llama-3, TinyLlama, SmolLM), mistral, qwen2 and gpt2",
                              file, model_type, architecture.empty() ? "" : ", " + architecture));
  if (!c) return c;
  const Status valid = c->validate();
  if (!valid) return Status(valid.code(), fmt::format("{}: {}", file, valid.message()));
  return c;
}

namespace {

// "layers.12.ffn_up" -> (12, "ffn_up"); top-level names -> (-1, name).
std::pair<int64_t, std::string> split_layer(const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return {-1, name};
  const size_t dot = name.find('.', 7);
  return {std::stoll(name.substr(7, dot - 7)), name.substr(dot + 1)};
}

}  // namespace

TensorSource hf_tensor_source(const ModelConfig& c, const ModelConfig::TensorSpec& spec) {
  const auto [layer, local] = split_layer(spec.name);
  TensorSource s;
  s.source_shape = spec.shape;
  if (c.arch != Arch::gpt2) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    static const std::pair<const char*, const char*> kLayer[] = {
        {"attn_norm", "input_layernorm.weight"},   {"attn_q", "self_attn.q_proj.weight"},
        {"attn_k", "self_attn.k_proj.weight"},     {"attn_v", "self_attn.v_proj.weight"},
        {"attn_q_bias", "self_attn.q_proj.bias"},  {"attn_k_bias", "self_attn.k_proj.bias"},
        {"attn_v_bias", "self_attn.v_proj.bias"},  {"attn_out", "self_attn.o_proj.weight"},
        {"attn_out_bias", "self_attn.o_proj.bias"}, {"ffn_norm", "post_attention_layernorm.weight"},
        {"ffn_gate", "mlp.gate_proj.weight"},      {"ffn_up", "mlp.up_proj.weight"},
        {"ffn_down", "mlp.down_proj.weight"},
    };
    if (layer >= 0) {
      for (const auto& [k, hf] : kLayer)
        if (local == k) s.hf_name = p + hf;
    } else if (local == "token_embd") {
      s.hf_name = "model.embed_tokens.weight";
    } else if (local == "output_norm") {
      s.hf_name = "model.norm.weight";
    } else if (local == "output") {
      s.hf_name = "lm_head.weight";
    }
    return s;
  }
  // GPT-2: Conv1D weights [in, out] are transposed; c_attn holds q, k, v side by side.
  const uint64_t d = c.dim;
  const std::string p = fmt::format("h.{}.", layer);
  auto set = [&](std::string name, bool transpose, std::vector<uint64_t> source_shape, uint64_t begin = 0,
                 uint64_t count = 0) {
    s.hf_name = std::move(name);
    s.transpose = transpose;
    s.source_shape = std::move(source_shape);
    s.row_begin = begin;
    s.row_count = count;
  };
  if (layer < 0) {
    if (local == "token_embd") set("wte.weight", false, spec.shape);
    else if (local == "pos_embd") set("wpe.weight", false, spec.shape);
    else if (local == "output_norm") set("ln_f.weight", false, spec.shape);
    else if (local == "output_norm_bias") set("ln_f.bias", false, spec.shape);
    else if (local == "output") set("lm_head.weight", false, spec.shape);  // untied head (tie_word_embeddings false)
    return s;
  }
  const uint64_t f = c.ffn_dim;
  if (local == "attn_norm") set(p + "ln_1.weight", false, {d});
  else if (local == "attn_norm_bias") set(p + "ln_1.bias", false, {d});
  else if (local == "attn_q") set(p + "attn.c_attn.weight", true, {d, 3 * d}, 0, d);
  else if (local == "attn_k") set(p + "attn.c_attn.weight", true, {d, 3 * d}, d, d);
  else if (local == "attn_v") set(p + "attn.c_attn.weight", true, {d, 3 * d}, 2 * d, d);
  else if (local == "attn_q_bias") set(p + "attn.c_attn.bias", false, {3 * d}, 0, d);
  else if (local == "attn_k_bias") set(p + "attn.c_attn.bias", false, {3 * d}, d, d);
  else if (local == "attn_v_bias") set(p + "attn.c_attn.bias", false, {3 * d}, 2 * d, d);
  else if (local == "attn_out") set(p + "attn.c_proj.weight", true, {d, d});
  else if (local == "attn_out_bias") set(p + "attn.c_proj.bias", false, {d});
  else if (local == "ffn_norm") set(p + "ln_2.weight", false, {d});
  else if (local == "ffn_norm_bias") set(p + "ln_2.bias", false, {d});
  else if (local == "ffn_up") set(p + "mlp.c_fc.weight", true, {d, f});
  else if (local == "ffn_up_bias") set(p + "mlp.c_fc.bias", false, {f});
  else if (local == "ffn_down") set(p + "mlp.c_proj.weight", true, {f, d});
  else if (local == "ffn_down_bias") set(p + "mlp.c_proj.bias", false, {d});
  return s;
}

bool hf_tensor_is_ignorable(const std::string& name) {
  auto ends_with = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with("rotary_emb.inv_freq") || ends_with(".attn.bias") || ends_with(".attn.masked_bias");
}

}  // namespace kvant::convert
