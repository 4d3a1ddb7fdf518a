#include "runtime/tokenizer.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/tokenizer/added_tokens.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/decoder.h"
#include "runtime/tokenizer/normalizer.h"
#include "runtime/tokenizer/post_processor.h"
#include "runtime/tokenizer/pre_tokenizer.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant {

using nlohmann::json;

namespace {

constexpr size_t kMaxTokens = size_t{1} << 24;     // FORMAT.md: vocab_size ≤ 2^24
constexpr size_t kMaxInputBytes = size_t{1} << 30;  // piece offsets are 32-bit

Result<json> parse_json_key(const Metadata& m, std::string_view key, std::string_view fallback) {
  KVANT_ASSIGN_OR_RETURN(const std::string_view text, m.get_string_or(key, fallback));
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::error(ErrorCode::format, "{} is not valid JSON", key);
  return j;
}

Result<int32_t> optional_id(const Metadata& m, std::string_view key, size_t n_tokens) {
  if (!m.has(key)) return -1;
  KVANT_ASSIGN_OR_RETURN(const int64_t v, m.get_i64(key));
  if (v < -1 || v >= static_cast<int64_t>(n_tokens))
    return Status::error(ErrorCode::format, "{} is {}, not a token id below {} (or -1)", key, v, n_tokens);
  return static_cast<int32_t>(v);
}

Result<std::vector<tok::AddedToken>> parse_added_tokens(const json& list, const std::vector<std::string>& tokens) {
  if (!list.is_array()) return Status(ErrorCode::format, "tokenizer.added_tokens_json is not a JSON array");
  std::vector<tok::AddedToken> added;
  for (const json& a : list) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      return Status::error(ErrorCode::format, "tokenizer.added_tokens_json: entry {:.80} needs an integer 'id' and a "
                           "string 'content'", a.dump());
    tok::AddedToken t;
    const int64_t id = a["id"].get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(tokens.size()))
      return Status::error(ErrorCode::format, "tokenizer.added_tokens_json: id {} is not below the token count {}", id,
                           tokens.size());
    t.id = static_cast<int32_t>(id);
    t.content = a["content"].get<std::string>();
    const auto flag = [&](const char* key, bool fallback) {
      return a.contains(key) && a[key].is_boolean() ? a[key].get<bool>() : fallback;
    };
    t.special = flag("special", false);
    t.normalized = flag("normalized", !t.special);  // tokenizers' default
    t.lstrip = flag("lstrip", false);
    t.rstrip = flag("rstrip", false);
    t.single_word = flag("single_word", false);
    if (!t.content.empty()) added.push_back(std::move(t));
  }
  // tokenizers looks special tokens up before the others (ties between equal patterns).
  std::stable_partition(added.begin(), added.end(), [](const tok::AddedToken& t) { return t.special; });
  return added;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_metadata(const Metadata& m) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  KVANT_ASSIGN_OR_RETURN(const std::string_view model, m.get_string_or("tokenizer.model", "none"));
  if (model == "none")
    return Status(ErrorCode::unsupported, "this file has no tokenizer (tokenizer.model is 'none': token ids only)");
  if (model != "bpe")
    return Status::error(ErrorCode::unsupported, "tokenizer.model '{}' is not supported (kvant supports 'bpe')", model);

  KVANT_ASSIGN_OR_RETURN(const auto tokens, m.get_string_array("tokenizer.tokens"));
  if (tokens.empty() || tokens.size() > kMaxTokens)
    return Status::error(ErrorCode::format, "tokenizer.tokens has {} entries (1 to {} allowed)", tokens.size(),
                         kMaxTokens);
  t->tokens_.assign(tokens.begin(), tokens.end());
  const size_t n = t->tokens_.size();
  std::vector<uint32_t> merges;
  if (m.has("tokenizer.merges")) {
    KVANT_ASSIGN_OR_RETURN(merges, m.get_u32_array("tokenizer.merges"));
  }

  try {
    KVANT_ASSIGN_OR_RETURN(const json added_json, parse_json_key(m, "tokenizer.added_tokens_json", "[]"));
    KVANT_ASSIGN_OR_RETURN(t->added_, parse_added_tokens(added_json, t->tokens_));
    KVANT_ASSIGN_OR_RETURN(const json options, parse_json_key(m, "tokenizer.bpe_options_json", "{}"));
    KVANT_ASSIGN_OR_RETURN(const json normalizer, parse_json_key(m, "tokenizer.normalizer_json", "null"));
    KVANT_ASSIGN_OR_RETURN(const json pre_tokenizer, parse_json_key(m, "tokenizer.pre_tokenizer_json", "null"));
    KVANT_ASSIGN_OR_RETURN(const json post_processor, parse_json_key(m, "tokenizer.post_processor_json", "null"));
    KVANT_ASSIGN_OR_RETURN(const json decoder, parse_json_key(m, "tokenizer.decoder_json", "null"));

    std::vector<int32_t> added_ids;
    for (const auto& a : t->added_) added_ids.push_back(a.id);
    KVANT_ASSIGN_OR_RETURN(t->model_, tok::BpeModel::create(t->tokens_, merges, added_ids, options));
    KVANT_ASSIGN_OR_RETURN(t->normalizer_, tok::Normalizer::from_json(normalizer));
    KVANT_ASSIGN_OR_RETURN(t->pre_tokenizer_, tok::PreTokenizer::from_json(pre_tokenizer));
    KVANT_ASSIGN_OR_RETURN(t->post_processor_,
                           tok::PostProcessor::from_json(post_processor, static_cast<int32_t>(n)));
    KVANT_ASSIGN_OR_RETURN(t->decoder_, tok::Decoder::from_json(decoder));
  } catch (const json::exception& e) {  // a malformed component that slipped past the checks
    return Status::error(ErrorCode::format, "tokenizer metadata: {}", e.what());
  }

  // Added tokens: the raw-text matcher takes those that are not normalized; the
  // normalized-text matcher takes the others, in normalized form.
  t->special_.assign(n, 0);
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const tok::AddedToken& a : t->added_) {
    if (a.special) t->special_[a.id] = 1;
    t->added_ids_.emplace(a.content, a.id);
    std::string normalized;
    if (a.normalized) {
      normalized = a.content;
      bool lost_start = false;
      if (t->normalizer_) KVANT_TRY(t->normalizer_->normalize(normalized, lost_start));
    }
    raw_patterns.push_back(a.normalized ? std::string() : a.content);
    normalized_patterns.push_back(std::move(normalized));
  }
  t->raw_matcher_ = std::make_unique<tok::AddedTokenMatcher>();
  t->raw_matcher_->build(&t->added_, raw_patterns);
  t->normalized_matcher_ = std::make_unique<tok::AddedTokenMatcher>();
  t->normalized_matcher_->build(&t->added_, normalized_patterns);

  t->raw_byte_pieces_ =
      t->pre_tokenizer_ && t->model_->accepts_raw_bytes() && t->pre_tokenizer_->defer_byte_mapping();

  KVANT_ASSIGN_OR_RETURN(t->bos_id_, optional_id(m, "tokenizer.bos_id", n));
  KVANT_ASSIGN_OR_RETURN(t->eos_id_, optional_id(m, "tokenizer.eos_id", n));
  KVANT_ASSIGN_OR_RETURN(t->unk_id_, optional_id(m, "tokenizer.unk_id", n));
  KVANT_ASSIGN_OR_RETURN(t->pad_id_, optional_id(m, "tokenizer.pad_id", n));
  if (m.has("generation.eos_ids")) {
    KVANT_ASSIGN_OR_RETURN(const auto eos, m.get_u32_array("generation.eos_ids"));
    for (uint32_t id : eos) {
      if (id >= kMaxTokens)
        return Status::error(ErrorCode::format, "generation.eos_ids: {} is not a token id", id);
      t->eos_ids_.push_back(static_cast<int32_t>(id));
    }
  }
  if (t->eos_ids_.empty() && t->eos_id_ >= 0) t->eos_ids_.push_back(t->eos_id_);
  return t;
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  if (const size_t bad = tok::find_invalid_utf8(text); bad != std::string_view::npos)
    return Status::error(ErrorCode::invalid_argument, "the text is not valid UTF-8: byte 0x{:02x} at offset {}",
                         static_cast<uint8_t>(text[bad]), bad);
  if (text.size() > kMaxInputBytes)
    return Status::error(ErrorCode::invalid_argument, "the text is {} bytes; encode at most {} at a time",
                         text.size(), kMaxInputBytes);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<tok::Segment> segments;
  if (raw_matcher_->empty()) segments.push_back({0, text.size(), -1});
  else raw_matcher_->split(text, segments);
  for (const tok::Segment& s : segments) {
    if (s.id >= 0) ids.push_back(s.id);
    else KVANT_TRY(encode_text(text.substr(s.start, s.end - s.start), s.start == 0, ids));
  }
  if (post_processor_) post_processor_->process(ids, add_special_tokens);
  return ids;
}

// Text between raw-matched added tokens: normalize, find normalized added tokens,
// pre-tokenize, BPE.
Status Tokenizer::encode_text(std::string_view text, bool at_start, std::vector<int32_t>& ids) const {
  if (text.empty()) return Status::ok();
  thread_local std::string normalized;
  thread_local std::vector<tok::Segment> segments;
  thread_local tok::PieceList pieces, scratch;
  std::string_view current = text;
  if (normalizer_) {
    normalized.assign(text);
    bool lost_start = false;
    KVANT_TRY(normalizer_->normalize(normalized, lost_start));
    at_start = at_start && !lost_start;
    current = normalized;
  }
  segments.clear();
  if (normalized_matcher_->empty()) {
    if (!current.empty()) segments.push_back({0, current.size(), -1});
  } else {
    normalized_matcher_->split(current, segments);
  }
  for (const tok::Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      continue;
    }
    pieces.clear();
    pieces.add(current.substr(s.start, s.end - s.start), at_start && s.start == 0);
    if (pre_tokenizer_) KVANT_TRY(pre_tokenizer_->apply(pieces, scratch));
    for (const tok::Piece& p : pieces.pieces) model_->tokenize(pieces.view(p), raw_byte_pieces_, ids);
  }
  return Status::ok();
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || tokens_[id].empty()) continue;
    if (skip_special_tokens && special_[id]) continue;
    pieces.push_back(tokens_[id]);
  }
  if (!decoder_) {  // tokenizers joins the tokens with spaces when there is no decoder
    std::string out;
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (i > 0) out += ' ';
      out += pieces[i];
    }
    return out;
  }
  decoder_->decode_chain(pieces);
  std::string out;
  for (const std::string& p : pieces) out += p;
  return out;
}

bool Tokenizer::is_eos(int32_t id) const { return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end(); }

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id] != 0; }

std::string_view Tokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return tokens_[id];
}

int32_t Tokenizer::token_id(std::string_view text) const {
  if (const auto it = added_ids_.find(text); it != added_ids_.end()) return it->second;
  return model_->token_id(text);
}

}  // namespace kvant
