#include "runtime/tokenizer/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <utility>
#include <nlohmann/json.hpp>
#include <vector>

#include "runtime/tokenizer/json_util.h"
#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

using nlohmann::json;

namespace {

constexpr std::string_view kWhere = "tokenizer.normalizer_json";

// Characters whose normalization mappings utf8proc (Unicode 15) has but `tokenizers`
// does not: its unicode-normalization tables are Unicode 12.0. Found by comparing the
// two on every code point (NFC: none; NFD: U+11938; NFKC/NFKD: the compatibility
// decompositions below). tokenizers leaves them as they are; so does kvant. All are
// starters that compose with nothing, so the text around them normalizes on its own.
bool newer_than_tokenizers_tables(char32_t c) {
  static constexpr std::pair<char32_t, char32_t> kRanges[] = {
      {0x32FF, 0x32FF},   {0xA7F2, 0xA7F4},   {0xAB69, 0xAB69},   {0x10781, 0x10785}, {0x10787, 0x107B0},
      {0x107B2, 0x107BA}, {0x11938, 0x11938}, {0x1E030, 0x1E06D}, {0x1F16C, 0x1F16C}, {0x1FBF0, 0x1FBF9}};
  if (c < 0x32FF) return false;
  for (const auto& [lo, hi] : kRanges)
    if (c >= lo && c <= hi) return true;
  return false;
}

class UnicodeForm final : public Normalizer {
 public:
  explicit UnicodeForm(int options) : options_(options) {}
  Status normalize(std::string& text, bool&) const override {
    bool ascii = true;
    for (char c : text) ascii = ascii && static_cast<uint8_t>(c) < 0x80;
    if (ascii) return Status::ok();  // every normalization form leaves ASCII alone
    std::string out;
    size_t segment = 0;
    for (size_t pos = 0; pos < text.size();) {
      const size_t start = pos;
      if (!newer_than_tokenizers_tables(next_code_point(text, pos))) continue;
      KVANT_TRY(map(std::string_view(text).substr(segment, start - segment), out));
      out.append(text, start, pos - start);
      segment = pos;
    }
    KVANT_TRY(map(std::string_view(text).substr(segment), out));
    text = std::move(out);
    return Status::ok();
  }

 private:
  Status map(std::string_view s, std::string& out) const {
    if (s.empty()) return Status::ok();
    utf8proc_uint8_t* result = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                static_cast<utf8proc_ssize_t>(s.size()), &result,
                                static_cast<utf8proc_option_t>(options_ | UTF8PROC_STABLE));
    if (n < 0) return Status::error(ErrorCode::invalid_argument, "Unicode normalization failed: {}", utf8proc_errmsg(n));
    out.append(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
    std::free(result);
    return Status::ok();
  }
  int options_;
};

class Lowercase final : public Normalizer {
 public:
  Status normalize(std::string& text, bool&) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) append_lowercase(out, next_code_point(text, pos));
    text = std::move(out);
    return Status::ok();
  }
};

class StripAccents final : public Normalizer {
 public:
  Status normalize(std::string& text, bool&) const override {
    std::string out;
    out.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
      const size_t start = pos;
      const char32_t c = next_code_point(text, pos);
      if (c >= 0x80) {  // combining marks: Mn, Mc and Me, as tokenizers' is_combining_mark
        const auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
        if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_MC || cat == UTF8PROC_CATEGORY_ME) continue;
      }
      out.append(text, start, pos - start);
    }
    text = std::move(out);
    return Status::ok();
  }
};

class Strip final : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  Status normalize(std::string& text, bool& lost_start) const override {
    size_t begin = 0, end = text.size();
    if (right_) {
      while (end > 0) {
        size_t p = end;
        if (!is_white_space(previous_code_point(text, p))) break;
        end = p;
      }
    }
    if (left_) {
      while (begin < end) {
        size_t p = begin;
        if (!is_white_space(next_code_point(text, p))) break;
        begin = p;
      }
    }
    if (begin > 0 && begin < end) lost_start = true;
    text = text.substr(begin, end - begin);
    return Status::ok();
  }

 private:
  bool left_, right_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  Status normalize(std::string& text, bool&) const override {
    if (!text.empty()) text.insert(0, prefix_);
    return Status::ok();
  }

 private:
  std::string prefix_;
};

class Replace final : public Normalizer {
 public:
  Replace(Regex pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  Status normalize(std::string& text, bool& lost_start) const override {
    std::string out;
    size_t last = 0;
    KVANT_TRY(pattern_.for_each_match(text, [&](size_t start, size_t end) {
      if (start == 0 && end > 0 && content_.empty()) lost_start = true;
      out.append(text, last, start - last);
      out += content_;
      last = end;
    }));
    out.append(text, last);
    text = std::move(out);
    return Status::ok();
  }

 private:
  Regex pattern_;
  std::string content_;
};

class ByteLevelChars final : public Normalizer {
 public:
  Status normalize(std::string& text, bool&) const override {
    const ByteLevelTable& table = byte_level_table();
    std::string out;
    out.reserve(text.size() * 2);
    for (char c : text) out += table.byte_char[static_cast<uint8_t>(c)];
    text = std::move(out);
    return Status::ok();
  }
};

class Sequence final : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  Status normalize(std::string& text, bool& lost_start) const override {
    for (const auto& step : steps_) KVANT_TRY(step->normalize(text, lost_start));
    return Status::ok();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

Result<std::unique_ptr<Normalizer>> build(const json& j, int depth) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  if (depth > kMaxComponentDepth) return Status::error(ErrorCode::format, "{}: Sequences nest too deeply", kWhere);
  KVANT_ASSIGN_OR_RETURN(const std::string type, component_type(j, kWhere));
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeForm(UTF8PROC_COMPOSE));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeForm(UTF8PROC_DECOMPOSE));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeForm(UTF8PROC_COMPOSE | UTF8PROC_COMPAT));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeForm(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT));
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new Lowercase());
  if (type == "StripAccents") return std::unique_ptr<Normalizer>(new StripAccents());
  if (type == "ByteLevel") return std::unique_ptr<Normalizer>(new ByteLevelChars());
  if (type == "Strip") {
    KVANT_ASSIGN_OR_RETURN(const bool left, json_bool(j, "strip_left", true, kWhere));
    KVANT_ASSIGN_OR_RETURN(const bool right, json_bool(j, "strip_right", true, kWhere));
    return std::unique_ptr<Normalizer>(new Strip(left, right));
  }
  if (type == "Prepend") {
    KVANT_ASSIGN_OR_RETURN(std::string prefix, json_string(j, "prepend", kWhere));
    return std::unique_ptr<Normalizer>(new Prepend(std::move(prefix)));
  }
  if (type == "Replace") {
    KVANT_ASSIGN_OR_RETURN(Regex pattern, json_pattern(j, kWhere));
    KVANT_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", kWhere));
    return std::unique_ptr<Normalizer>(new Replace(std::move(pattern), std::move(content)));
  }
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      return Status::error(ErrorCode::format, "{}: Sequence has no 'normalizers' list", kWhere);
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const json& step : j["normalizers"]) {
      KVANT_ASSIGN_OR_RETURN(auto n, build(step, depth + 1));
      if (n) steps.push_back(std::move(n));
    }
    return std::unique_ptr<Normalizer>(new Sequence(std::move(steps)));
  }
  return Status::error(ErrorCode::unsupported,
                       "{}: normalizer type '{}' is not supported (kvant supports NFC, NFD, NFKC, NFKD, Lowercase, "
                       "Strip, StripAccents, Prepend, Replace, ByteLevel, Sequence)",
                       kWhere, type);
}

}  // namespace

Result<std::unique_ptr<Normalizer>> Normalizer::from_json(const json& j) { return build(j, 0); }

}  // namespace kvant::tok
