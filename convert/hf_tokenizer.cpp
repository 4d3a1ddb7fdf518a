#include "convert/hf_tokenizer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "format/utf8.h"
#include "format/writer.h"

namespace kvant::convert {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kMaxTokenId = (1u << 24) - 1;

Status bad(const std::string& file, const std::string& msg) {
  return Status(ErrorCode::format, fmt::format("{}: {}", file, msg));
}

std::string dump_or_null(const json& j, const char* key) {
  if (!j.contains(key)) return "null";
  return j[key].dump();
}

// A token given as "text" or as {"content": "text", ...} (tokenizer_config.json).
std::optional<std::string> token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

Result<json> load_json(const std::string& path) {
  KVANT_ASSIGN_OR_RETURN(const std::string text, read_text_file(path));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded()) return bad(path, "not valid JSON");
  return j;
}

// Ids from an int or a list of ints (eos_token_id may be either).
Result<std::vector<uint32_t>> id_list(const json& v, const std::string& where) {
  std::vector<uint32_t> ids;
  auto one = [&](const json& x) -> Status {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > kMaxTokenId)
      return Status(ErrorCode::invalid_argument, fmt::format("{} is not a valid token id: {}", where, x.dump()));
    ids.push_back(static_cast<uint32_t>(x.get<int64_t>()));
    return Status::ok();
  };
  if (v.is_null()) return ids;
  if (v.is_array()) {
    for (const auto& x : v) KVANT_TRY(one(x));
  } else {
    KVANT_TRY(one(v));
  }
  return ids;
}

}  // namespace

Result<std::string> read_text_file(const std::string& path, uint64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return Status::error(ErrorCode::io, "cannot open '{}': {}", path, std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return Status::error(ErrorCode::io, "'{}' is a directory, not a file", path);
  if (static_cast<uint64_t>(st.st_size) > max_bytes)
    return Status::error(ErrorCode::format, "'{}' is {} bytes, larger than the {} byte limit", path, st.st_size,
                         max_bytes);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error(ErrorCode::io, "cannot open '{}': {}", path, std::strerror(errno));
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t r = ::read(fd, text.data() + got, text.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      ::close(fd);
      return Status::error(ErrorCode::io, "cannot read '{}': {}", path, r == 0 ? "file shrank" : std::strerror(err));
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  return text;
}

Result<TokenizerImport> parse_tokenizer_json(std::string_view text, const std::string& file) {
  const json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded()) return bad(file, "not valid JSON");
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) return bad(file, "has no 'model' object");
  const json& model = j["model"];
  std::string type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>() : "";
  if (type.empty() && model.contains("merges")) type = "BPE";
  if (type != "BPE")
    return Status(ErrorCode::unsupported,
                  fmt::format("{}: tokenizer model '{}' is not supported (kvant supports BPE tokenizers)", file, type));
  if (!model.contains("vocab") || !model["vocab"].is_object()) return bad(file, "model has no 'vocab' object");

  TokenizerImport t;
  t.model_type = "bpe";
  std::unordered_map<std::string, uint32_t> vocab;
  vocab.reserve(model["vocab"].size());
  uint32_t max_id = 0;
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxTokenId)
      return bad(file, fmt::format("vocab entry '{}' has invalid id {}", token, id.dump()));
    vocab.emplace(token, static_cast<uint32_t>(id.get<int64_t>()));
    max_id = std::max(max_id, static_cast<uint32_t>(id.get<int64_t>()));
  }
  if (vocab.empty()) return bad(file, "vocab is empty");

  const json added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"] : json::array();
  for (const auto& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      return bad(file, fmt::format("added token {} needs an integer 'id' and a string 'content'", a.dump()));
    const int64_t id = a["id"].get<int64_t>();
    if (id < 0 || id > kMaxTokenId) return bad(file, fmt::format("added token has invalid id {}", id));
    if (a["content"].get<std::string>().empty()) return bad(file, fmt::format("added token {} is empty", id));
    for (const char* flag : {"special", "normalized", "lstrip", "rstrip", "single_word"})
      if (a.contains(flag) && !a[flag].is_boolean())
        return bad(file, fmt::format("added token {} has a non-boolean '{}'", id, flag));
    max_id = std::max(max_id, static_cast<uint32_t>(id));
  }

  t.tokens.assign(size_t{max_id} + 1, std::string());
  for (const auto& [token, id] : vocab) {
    if (!t.tokens[id].empty())
      return bad(file, fmt::format("vocab maps both '{}' and '{}' to id {}", t.tokens[id], token, id));
    t.tokens[id] = token;
  }
  for (const auto& a : added) t.tokens[a["id"].get<size_t>()] = a["content"].get<std::string>();

  // Merges: "left right" strings or [left, right] pairs, stored as id pairs by rank.
  const std::string prefix = model.contains("continuing_subword_prefix") && model["continuing_subword_prefix"].is_string()
                                 ? model["continuing_subword_prefix"].get<std::string>()
                                 : "";
  if (model.contains("merges")) {
    if (!model["merges"].is_array()) return bad(file, "model 'merges' is not an array");
    const json& merges = model["merges"];
    t.merges.reserve(merges.size() * 2);
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          return bad(file, fmt::format("merge {} ('{}') is not two tokens separated by one space", i, s));
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        return bad(file, fmt::format("merge {} is neither a string nor a pair of strings", i));
      }
      const auto l = vocab.find(left), r = vocab.find(right);
      if (l == vocab.end()) return bad(file, fmt::format("merge {} names unknown token '{}'", i, left));
      if (r == vocab.end()) return bad(file, fmt::format("merge {} names unknown token '{}'", i, right));
      const std::string merged =
          left + (!prefix.empty() && right.rfind(prefix, 0) == 0 ? right.substr(prefix.size()) : right);
      if (!vocab.contains(merged))
        return bad(file, fmt::format("merge {} ('{}' + '{}') makes '{}', which is not in the vocab", i, left, right,
                                     merged));
      t.merges.push_back(l->second);
      t.merges.push_back(r->second);
    }
  }
  json options = model;
  options.erase("vocab");
  options.erase("merges");
  t.bpe_options_json = options.dump();
  t.added_tokens_json = added.dump();
  t.normalizer_json = dump_or_null(j, "normalizer");
  t.pre_tokenizer_json = dump_or_null(j, "pre_tokenizer");
  t.post_processor_json = dump_or_null(j, "post_processor");
  t.decoder_json = dump_or_null(j, "decoder");
  for (const auto& token : t.tokens)
    if (!is_valid_utf8(token)) return bad(file, "a token is not valid UTF-8");

  // Whether the post-processor prepends a special token (Llama-2's "<s> $A").
  if (j.contains("post_processor") && j["post_processor"].is_object()) {
    const json& pp = j["post_processor"];
    if (pp.contains("type") && pp["type"] == "TemplateProcessing" && pp.contains("single") && pp["single"].is_array() &&
        !pp["single"].empty() && pp["single"][0].is_object() && pp["single"][0].contains("SpecialToken"))
      t.add_bos = true;
  }
  return t;
}

Status apply_tokenizer_files(TokenizerImport& t, const TokenizerSideFiles& files, const json& config,
                             uint32_t vocab_size) {
  const fs::path dir(files.dir);
  if (t.tokens.size() > vocab_size)
    return Status::error(ErrorCode::invalid_argument,
                         "{}: the tokenizer defines token id {} but the model's vocab_size is {}",
                         (dir / "tokenizer.json").string(), t.tokens.size() - 1, vocab_size);

  std::unordered_map<std::string_view, uint32_t> ids;
  for (uint32_t i = 0; i < t.tokens.size(); ++i)
    if (!t.tokens[i].empty()) ids.emplace(t.tokens[i], i);
  auto id_of = [&](const std::optional<std::string>& content) -> int32_t {
    if (!content) return -1;
    const auto it = ids.find(*content);
    return it == ids.end() ? -1 : static_cast<int32_t>(it->second);
  };

  // tokenizer_config.json: special tokens, BOS/EOS flags, chat templates.
  if (files.tokenizer_config) {
    const std::string tc_path = (dir / "tokenizer_config.json").string();
    const json& tc = *files.tokenizer_config;
    if (!tc.is_object()) return bad(tc_path, "not a JSON object");
    auto special = [&](const char* key) { return tc.contains(key) ? token_content(tc[key]) : std::nullopt; };
    t.bos_id = id_of(special("bos_token"));
    t.eos_id = id_of(special("eos_token"));
    t.unk_id = id_of(special("unk_token"));
    t.pad_id = id_of(special("pad_token"));
    // The named special tokens that transformers hands to chat templates (its
    // special_tokens_map): tokenizer_config.json's, overridden by a legacy
    // special_tokens_map.json when the config has no added_tokens_decoder.
    json named = json::object();
    for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
      if (const auto content = special(key)) named[key] = *content;
    if (!tc.contains("added_tokens_decoder") && files.special_tokens_map) {
      const json& stm = *files.special_tokens_map;
      if (stm.is_object())
        for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
          if (stm.contains(key))
            if (const auto content = token_content(stm[key])) named[key] = *content;
    }
    t.special_tokens_json = named.dump();
    if (tc.contains("add_bos_token") && tc["add_bos_token"].is_boolean()) t.add_bos = tc["add_bos_token"].get<bool>();
    if (tc.contains("add_eos_token") && tc["add_eos_token"].is_boolean()) t.add_eos = tc["add_eos_token"].get<bool>();
    if (tc.contains("chat_template")) {
      const json& ct = tc["chat_template"];
      if (ct.is_string()) {
        t.chat_template = ct.get<std::string>();
      } else if (ct.is_array()) {
        for (const auto& e : ct) {
          if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("template") ||
              !e["template"].is_string())
            return bad(tc_path, "chat_template list entries need a string 'name' and 'template'");
          const std::string name = e["name"].get<std::string>();
          if (name == "default") t.chat_template = e["template"].get<std::string>();
          else t.named_templates.emplace_back(name, e["template"].get<std::string>());
        }
      } else if (!ct.is_null()) {
        return bad(tc_path, "chat_template is neither a string nor a list");
      }
    }
  }
  // Newer transformers save the template beside the config.
  if (files.chat_template_jinja) {
    t.chat_template = *files.chat_template_jinja;
  } else if (files.chat_template_json) {
    const json& c = *files.chat_template_json;
    if (c.is_object() && c.contains("chat_template") && c["chat_template"].is_string())
      t.chat_template = c["chat_template"].get<std::string>();
  }
  if (!is_valid_utf8(t.chat_template)) return bad(files.dir, "the chat template is not valid UTF-8");

  // EOS ids: generation_config.json first, then config.json, then the tokenizer's eos token.
  auto add_eos = [&](const std::vector<uint32_t>& list) {
    for (uint32_t id : list)
      if (std::find(t.eos_ids.begin(), t.eos_ids.end(), id) == t.eos_ids.end()) t.eos_ids.push_back(id);
  };
  if (files.generation_config) {
    const std::string gc_path = (dir / "generation_config.json").string();
    const json& gc = *files.generation_config;
    if (!gc.is_object()) return bad(gc_path, "not a JSON object");
    if (gc.contains("eos_token_id")) {
      KVANT_ASSIGN_OR_RETURN(const auto list, id_list(gc["eos_token_id"], gc_path + " eos_token_id"));
      add_eos(list);
    }
    if (gc.contains("bos_token_id") && t.bos_id < 0) {
      KVANT_ASSIGN_OR_RETURN(const auto list, id_list(gc["bos_token_id"], gc_path + " bos_token_id"));
      if (!list.empty()) t.bos_id = static_cast<int32_t>(list[0]);
    }
    auto number = [&](const char* key, float& out) {
      if (gc.contains(key) && gc[key].is_number()) out = gc[key].get<float>();
    };
    number("temperature", t.temperature);
    number("top_p", t.top_p);
    number("repetition_penalty", t.repetition_penalty);
    if (gc.contains("top_k") && gc["top_k"].is_number_integer()) t.top_k = gc["top_k"].get<int32_t>();
    if (gc.contains("do_sample") && gc["do_sample"].is_boolean()) t.do_sample = gc["do_sample"].get<bool>() ? 1 : 0;
  }
  if (config.contains("eos_token_id")) {
    KVANT_ASSIGN_OR_RETURN(const auto list, id_list(config["eos_token_id"], "config.json eos_token_id"));
    add_eos(list);
  }
  if (t.eos_id >= 0) add_eos({static_cast<uint32_t>(t.eos_id)});
  if (t.bos_id < 0 && config.contains("bos_token_id")) {
    KVANT_ASSIGN_OR_RETURN(const auto list, id_list(config["bos_token_id"], "config.json bos_token_id"));
    if (!list.empty()) t.bos_id = static_cast<int32_t>(list[0]);
  }
  for (uint32_t id : t.eos_ids)
    if (id >= vocab_size)
      return Status::error(ErrorCode::invalid_argument, "eos token id {} is not below the model's vocab_size {}", id,
                           vocab_size);
  if (t.bos_id >= static_cast<int64_t>(vocab_size))
    return Status::error(ErrorCode::invalid_argument, "bos token id {} is not below the model's vocab_size {}",
                         t.bos_id, vocab_size);
  return Status::ok();
}

Result<TokenizerImport> import_tokenizer(const std::string& dir, const json& config, uint32_t vocab_size) {
  const std::string tokenizer_path = (fs::path(dir) / "tokenizer.json").string();
  std::error_code ec;
  if (!fs::exists(tokenizer_path, ec))
    return Status::error(ErrorCode::io, "'{}' has no tokenizer.json (kvant needs the Hugging Face fast tokenizer file)",
                         dir);
  KVANT_ASSIGN_OR_RETURN(const std::string text, read_text_file(tokenizer_path));
  KVANT_ASSIGN_OR_RETURN(TokenizerImport t, parse_tokenizer_json(text, tokenizer_path));

  // The side files that exist, read and parsed; apply_tokenizer_files interprets them.
  auto path = [&](const char* name) { return (fs::path(dir) / name).string(); };
  TokenizerSideFiles files;
  files.dir = dir;
  json tc, stm, gc, ctj;
  std::string jinja;
  if (fs::exists(path("tokenizer_config.json"), ec)) {
    KVANT_ASSIGN_OR_RETURN(tc, load_json(path("tokenizer_config.json")));
    files.tokenizer_config = &tc;
    if (tc.is_object() && !tc.contains("added_tokens_decoder") && fs::exists(path("special_tokens_map.json"), ec)) {
      KVANT_ASSIGN_OR_RETURN(stm, load_json(path("special_tokens_map.json")));
      files.special_tokens_map = &stm;
    }
  }
  if (fs::exists(path("chat_template.jinja"), ec)) {
    KVANT_ASSIGN_OR_RETURN(jinja, read_text_file(path("chat_template.jinja")));
    files.chat_template_jinja = &jinja;
  } else if (fs::exists(path("chat_template.json"), ec)) {
    KVANT_ASSIGN_OR_RETURN(ctj, load_json(path("chat_template.json")));
    files.chat_template_json = &ctj;
  }
  if (fs::exists(path("generation_config.json"), ec)) {
    KVANT_ASSIGN_OR_RETURN(gc, load_json(path("generation_config.json")));
    files.generation_config = &gc;
  }
  KVANT_TRY(apply_tokenizer_files(t, files, config, vocab_size));
  return t;
}

void TokenizerImport::to_metadata(KvantWriter& w) const {
  w.set("tokenizer.model", model_type);
  w.set("tokenizer.tokens", tokens);
  w.set("tokenizer.merges", merges);
  w.set("tokenizer.bpe_options_json", bpe_options_json);
  w.set("tokenizer.added_tokens_json", added_tokens_json);
  w.set("tokenizer.normalizer_json", normalizer_json);
  w.set("tokenizer.pre_tokenizer_json", pre_tokenizer_json);
  w.set("tokenizer.post_processor_json", post_processor_json);
  w.set("tokenizer.decoder_json", decoder_json);
  w.set("tokenizer.bos_id", bos_id);
  w.set("tokenizer.eos_id", eos_id);
  w.set("tokenizer.unk_id", unk_id);
  w.set("tokenizer.pad_id", pad_id);
  w.set("tokenizer.add_bos", add_bos);
  w.set("tokenizer.add_eos", add_eos);
  if (!chat_template.empty()) w.set("chat.template", chat_template);
  w.set("chat.special_tokens_json", special_tokens_json);
  for (const auto& [name, text] : named_templates) {
    std::string key = "chat.template.";
    for (char c : name) key += (std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '_');
    w.set(key, text);
  }
  w.set("generation.eos_ids", eos_ids);
  if (temperature >= 0) w.set("generation.temperature", temperature);
  if (top_p >= 0) w.set("generation.top_p", top_p);
  if (top_k >= 0) w.set("generation.top_k", top_k);
  if (repetition_penalty >= 0) w.set("generation.repetition_penalty", repetition_penalty);
  if (do_sample >= 0) w.set("generation.do_sample", do_sample == 1);
}

}  // namespace kvant::convert
