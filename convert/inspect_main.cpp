// kvant-inspect: what is in a .kvant file, and whether its bytes are intact.
#include <CLI/CLI.hpp>
#include <chrono>
#include <map>

#include "format/model_config.h"
#include "format/reader.h"
#include "runtime/progress.h"

namespace {

using namespace kvant;

std::string count(uint64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f} B", static_cast<double>(n) / 1e9);
  if (n >= 1000000) return fmt::format("{:.2f} M", static_cast<double>(n) / 1e6);
  if (n >= 1000) return fmt::format("{:.1f} K", static_cast<double>(n) / 1e3);
  return fmt::format("{}", n);
}

void print_tokenizer(const Metadata& m) {
  const auto model = m.get_string_or("tokenizer.model", "none");
  if (!model || *model == "none") {
    fmt::print("tokenizer:     none (synthetic model: token ids only)\n");
    return;
  }
  const auto tokens = m.get_string_array("tokenizer.tokens");
  const MetaEntry* merges = m.find("tokenizer.merges");
  fmt::print("tokenizer:     {} , {} tokens, {} merges\n", *model, tokens ? tokens->size() : 0,
             merges ? merges->count / 2 : 0);
  auto token_name = [&](const char* key) -> std::string {
    const MetaEntry* e = m.find(key);
    if (!e || e->type != ValueType::i32) return "-";
    int32_t id;
    std::memcpy(&id, e->data, 4);
    if (id < 0 || !tokens || static_cast<size_t>(id) >= tokens->size()) return "-";
    return fmt::format("{} ({})", id, (*tokens)[static_cast<size_t>(id)]);
  };
  fmt::print("  bos: {}   eos: {}   unk: {}   pad: {}\n", token_name("tokenizer.bos_id"), token_name("tokenizer.eos_id"),
             token_name("tokenizer.unk_id"), token_name("tokenizer.pad_id"));
  for (const char* key : {"tokenizer.normalizer_json", "tokenizer.pre_tokenizer_json", "tokenizer.decoder_json"}) {
    const MetaEntry* e = m.find(key);
    if (e) fmt::print("  {}: {}\n", std::string_view(key).substr(10), Metadata::describe(*e, 90));
  }
  if (const MetaEntry* e = m.find("generation.eos_ids")) fmt::print("  generation eos ids: {}\n", Metadata::describe(*e));
  const auto tmpl = m.get_string_or("chat.template", "");
  if (tmpl && !tmpl->empty()) {
    const MetaEntry* e = m.find("chat.template");
    fmt::print("chat template: {} bytes: {}\n", tmpl->size(), Metadata::describe(*e, 90));
  } else {
    fmt::print("chat template: none\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvant-inspect: show the header, hyperparameters, parameter counts, KV-cache cost per\n"
               "token, tokenizer and tensors of a .kvant file; --verify checks every checksum."};
  std::string path;
  bool verify = false, show_tensors = false, show_metadata = false;
  app.add_option("file", path, "the .kvant file")->required();
  app.add_flag("--verify", verify, "check the XXH3-64 checksum of every tensor (exit 1 on any mismatch)");
  app.add_flag("--tensors", show_tensors, "list every tensor with dtype, shape, offset and size");
  app.add_flag("--metadata", show_metadata, "list every metadata key (long values abbreviated)");
  CLI11_PARSE(app, argc, argv);

  auto opened = KvantFile::open(path);
  if (!opened) {
    fmt::print(stderr, "kvant-inspect: error: {}\n", opened.status().message());
    return 1;
  }
  const KvantFile& f = **opened;
  const Metadata& m = f.metadata();
  fmt::print("file:          {} ({})\n", path, format_bytes(static_cast<double>(f.file_size())));
  fmt::print("format:        kvant {}.{}, header {} bytes, {} metadata keys, {} tensors, alignment {}\n",
             f.version_major(), f.version_minor(), f.header_size(), m.entries().size(), f.tensors().size(),
             f.alignment());
  for (const char* key : {"general.name", "general.source", "general.converter", "general.dtype"})
    if (const MetaEntry* e = m.find(key)) fmt::print("{:<15}{}\n", std::string(key).substr(8) + ":", Metadata::describe(*e));

  auto config = ModelConfig::from_metadata(m);
  std::map<std::string, ModelConfig::TensorSpec::Role> roles;
  if (config) {
    const ModelConfig& c = *config;
    fmt::print("architecture:  {}\n", arch_name(c.arch));
    fmt::print("  layers {}, dim {}, heads {} (KV heads {}, head dim {}), FFN {}, vocab {}, context {}\n", c.n_layers,
               c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size, c.max_seq_len);
    fmt::print("  {} eps {:g}, {} {} FFN, {}", c.norm == NormType::rmsnorm ? "RMSNorm" : "LayerNorm", c.norm_eps,
               c.gated_ffn ? "gated" : "plain",
               c.act == Activation::silu ? "SiLU" : (c.act == Activation::gelu_tanh ? "GELU(tanh)" : "GELU"),
               c.learned_pos ? "learned positions" : fmt::format("RoPE theta {:g}", c.rope_theta));
    if (c.rope_scaling == RopeScaling::llama3)
      fmt::print(" (llama3 scaling: factor {:g}, low {:g}, high {:g}, original context {})", c.rope_factor,
                 c.rope_low_freq_factor, c.rope_high_freq_factor, c.rope_original_max_seq_len);
    if (c.rope_scaling == RopeScaling::linear) fmt::print(" (linear scaling: factor {:g})", c.rope_factor);
    fmt::print("\n");
    if (c.sliding_window) fmt::print("  sliding window {}\n", c.sliding_window);
    fmt::print("  tied embeddings: {}, QKV bias: {}\n", c.tie_embeddings ? "yes" : "no", c.qkv_bias ? "yes" : "no");
    for (const auto& s : c.tensor_specs()) roles[s.name] = s.role;
    fmt::print("KV cache per token: f16 {}, q8 {}, q4 {}  (at full context {}: {}, {}, {})\n",
               format_bytes(static_cast<double>(c.kv_bytes_per_token(KvType::f16))),
               format_bytes(static_cast<double>(c.kv_bytes_per_token(KvType::q8))),
               format_bytes(static_cast<double>(c.kv_bytes_per_token(KvType::q4))), c.max_seq_len,
               format_bytes(static_cast<double>(c.kv_bytes_per_token(KvType::f16) * c.max_seq_len)),
               format_bytes(static_cast<double>(c.kv_bytes_per_token(KvType::q8) * c.max_seq_len)),
               format_bytes(static_cast<double>(c.kv_bytes_per_token(KvType::q4) * c.max_seq_len)));
  } else {
    fmt::print("architecture:  unreadable: {}\n", config.status().message());
  }

  uint64_t by_role[5] = {}, other = 0, total = 0, bytes = 0;
  for (const auto& t : f.tensors()) {
    total += t.n_elements();
    bytes += t.size;
    const auto it = roles.find(std::string(t.name));
    if (it == roles.end()) other += t.n_elements();
    else by_role[static_cast<int>(it->second)] += t.n_elements();
  }
  using R = ModelConfig::TensorSpec::Role;
  auto of = [&](R role) { return count(by_role[static_cast<int>(role)]); };
  fmt::print("parameters:    {} total: embeddings {}, attention {}, FFN {}, norms {}, output {}{}\n", count(total),
             of(R::embedding), of(R::attention), of(R::ffn), of(R::norm), of(R::output),
             other ? fmt::format(", other {}", count(other)) : "");
  fmt::print("weights:       {} ({:.3f} bits per parameter)\n", format_bytes(static_cast<double>(bytes)),
             total ? 8.0 * static_cast<double>(bytes) / static_cast<double>(total) : 0.0);
  print_tokenizer(m);

  if (show_metadata) {
    fmt::print("\nmetadata:\n");
    for (const auto& e : m.entries()) fmt::print("  {:<36} {}\n", e.key, Metadata::describe(e, 100));
  }
  if (show_tensors) {
    fmt::print("\n{:<32} {:>5} {:>18} {:>14} {:>12}  {}\n", "tensor", "dtype", "shape", "offset", "bytes", "xxh3");
    for (const auto& t : f.tensors())
      fmt::print("{:<32} {:>5} {:>18} {:>14} {:>12}  {:016x}\n", t.name, dtype_name(t.dtype), t.shape_string(),
                 f.data_offset() + t.offset, t.size, t.checksum);
  }
  if (verify) {
    const auto start = std::chrono::steady_clock::now();
    const auto failed = f.verify_all();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!failed.empty()) {
      for (const auto& name : failed) fmt::print(stderr, "verify: checksum mismatch in tensor '{}'\n", name);
      fmt::print(stderr, "verify: FAILED: {} of {} tensors are corrupted\n", failed.size(), f.tensors().size());
      return 1;
    }
    fmt::print("verify:        OK, {} tensors, {} checked in {:.2f} s\n", f.tensors().size(),
               format_bytes(static_cast<double>(bytes)), s);
  }
  return 0;
}
