// Imports a Hugging Face tokenizer (tokenizer.json, tokenizer_config.json, optional
// chat_template.jinja and generation_config.json) into the "tokenizer.*", "chat.*" and
// "generation.*" metadata of a .kvant file (FORMAT.md, "Tokenizer metadata").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/status.h"

namespace kvant {
class KvantWriter;
}

namespace kvant::convert {

struct TokenizerImport {
  std::string model_type;               // "bpe"
  std::vector<std::string> tokens;      // by id; "" for ids the tokenizer does not define
  std::vector<uint32_t> merges;         // flattened (left id, right id) pairs, by rank
  std::string bpe_options_json;         // tokenizer.json "model" without vocab and merges
  std::string added_tokens_json;        // tokenizer.json "added_tokens"
  std::string normalizer_json, pre_tokenizer_json, post_processor_json, decoder_json;
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false;
  std::string chat_template;                                     // the default template ("" if none)
  std::string special_tokens_json = "{}";  // tokenizer_config.json's named special tokens, as templates see them
  std::vector<std::pair<std::string, std::string>> named_templates;  // other named templates
  std::vector<uint32_t> eos_ids;        // every id that ends generation
  // generation_config.json defaults (NaN / -1 when absent)
  float temperature = -1, top_p = -1, repetition_penalty = -1;
  int32_t top_k = -1;
  int32_t do_sample = -1;  // -1 absent, 0 false, 1 true

  void to_metadata(KvantWriter& writer) const;
};

// Parses tokenizer.json text (exposed for tests and fuzzing).
Result<TokenizerImport> parse_tokenizer_json(std::string_view text, const std::string& file_label);

// The files beside tokenizer.json, already read and parsed (null: the file is absent).
struct TokenizerSideFiles {
  std::string dir;                                     // the model directory, for messages
  const nlohmann::json* tokenizer_config = nullptr;    // tokenizer_config.json
  const nlohmann::json* special_tokens_map = nullptr;  // special_tokens_map.json (legacy)
  const nlohmann::json* generation_config = nullptr;   // generation_config.json
  const nlohmann::json* chat_template_json = nullptr;  // chat_template.json
  const std::string* chat_template_jinja = nullptr;    // chat_template.jinja (wins over the others)
};

// Completes an import from parse_tokenizer_json with the side files and config.json:
// special tokens, chat templates, EOS/BOS ids, generation defaults. No file access
// (import_tokenizer reads the files; tests and fuzzing call this directly).
Status apply_tokenizer_files(TokenizerImport& t, const TokenizerSideFiles& files, const nlohmann::json& config,
                             uint32_t vocab_size);

// Reads the tokenizer files of a model directory. `config` is config.json (for its
// eos/bos ids); `vocab_size` is the model's embedding rows (token ids must be below it).
Result<TokenizerImport> import_tokenizer(const std::string& dir, const nlohmann::json& config, uint32_t vocab_size);

// Reads a whole small text file (JSON, templates) with a size limit and clear errors.
Result<std::string> read_text_file(const std::string& path, uint64_t max_bytes = 256ull << 20);

}  // namespace kvant::convert
