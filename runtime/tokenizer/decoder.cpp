#include "runtime/tokenizer/decoder.h"

#include <nlohmann/json.hpp>

#include "runtime/tokenizer/json_util.h"
#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

using nlohmann::json;

namespace {

constexpr std::string_view kWhere = "tokenizer.decoder_json";

// Byte-level characters back to bytes; a token with any other character is taken as
// its own UTF-8. The joined bytes are decoded lossily: one string results.
class ByteLevel final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    const ByteLevelTable& table = byte_level_table();
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      bool all_mapped = true;
      for (size_t pos = 0; pos < t.size();) {
        const int b = table.char_to_byte(next_code_point(t, pos));
        if (b < 0) {
          all_mapped = false;
          break;
        }
        bytes += static_cast<char>(b);
      }
      if (!all_mapped) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, lossy_utf8(bytes));
  }
};

class Replace final : public Decoder {
 public:
  Replace(Regex pattern, std::string content) : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::string out;
      size_t last = 0;
      const Status s = pattern_.for_each_match(t, [&](size_t start, size_t end) {
        out.append(t, last, start - last);
        out += content_;
        last = end;
      });
      if (!s) continue;  // a regex runtime failure leaves the token as it was
      out.append(t, last);
      t = std::move(out);
    }
  }

 private:
  Regex pattern_;
  std::string content_;
};

// Runs of "<0xXX>" tokens become their bytes: the text when they form valid UTF-8,
// else one U+FFFD per byte.
class ByteFallback final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    size_t n_bytes = 0;
    const auto flush = [&] {
      if (n_bytes == 0) return;
      if (find_invalid_utf8(bytes) == std::string::npos) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < n_bytes; ++i) out.emplace_back("\xef\xbf\xbd");
      }
      bytes.clear();
      n_bytes = 0;
    };
    for (std::string& t : tokens) {
      if (const int b = byte_of(t); b >= 0) {
        bytes += static_cast<char>(b);
        ++n_bytes;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens = std::move(out);
  }

 private:
  // Rust's u8::from_str_radix(&t[3..5], 16) on "<0x??>": two hex digits, or '+' and one.
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    const auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (t[3] == '+') return hex(t[4]);
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class Fuse final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string joined;
    for (const std::string& t : tokens) joined += t;
    tokens.assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing copies of one character per token.
class Strip final : public Decoder {
 public:
  Strip(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      size_t begin = 0, end = t.size();
      for (size_t i = 0; i < start_ && begin < end; ++i) {
        size_t p = begin;
        if (next_code_point(t, p) != content_) break;
        begin = p;
      }
      for (size_t i = 0; i < stop_ && end > begin; ++i) {
        size_t p = end;
        if (previous_code_point(t, p) != content_) break;
        end = p;
      }
      t = t.substr(begin, end - begin);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

// The replacement character becomes a space, except in the first token, where it is
// dropped (unless the prepend scheme is "never").
class Metaspace final : public Decoder {
 public:
  Metaspace(char32_t replacement, bool drop_in_first) : replacement_(replacement), drop_in_first_(drop_in_first) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t pos = 0; pos < t.size();) {
        const size_t start = pos;
        if (next_code_point(t, pos) != replacement_) {
          out.append(t, start, pos - start);
        } else if (!(i == 0 && drop_in_first_)) {
          out += ' ';
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  char32_t replacement_;
  bool drop_in_first_;
};

// The end-of-word suffix becomes a space (nothing after the last token).
class BpeSuffix final : public Decoder {
 public:
  explicit BpeSuffix(std::string suffix) : suffix_(std::move(suffix)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (suffix_.empty()) return;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string replacement = i + 1 == tokens.size() ? "" : " ";
      std::string out;
      const std::string& t = tokens[i];
      size_t last = 0;
      for (size_t at = t.find(suffix_); at != std::string::npos; at = t.find(suffix_, last)) {
        out.append(t, last, at - last);
        out += replacement;
        last = at + suffix_.size();
      }
      out.append(t, last);
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

class Sequence final : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

char32_t first_char(const std::string& s) {
  size_t pos = 0;
  return next_code_point(s, pos);
}

Result<std::unique_ptr<Decoder>> build(const json& j, int depth) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  if (depth > kMaxComponentDepth) return Status::error(ErrorCode::format, "{}: Sequences nest too deeply", kWhere);
  KVANT_ASSIGN_OR_RETURN(const std::string type, component_type(j, kWhere));
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevel());
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallback());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new Fuse());
  if (type == "Replace") {
    KVANT_ASSIGN_OR_RETURN(Regex pattern, json_pattern(j, kWhere));
    KVANT_ASSIGN_OR_RETURN(std::string content, json_string(j, "content", kWhere));
    return std::unique_ptr<Decoder>(new Replace(std::move(pattern), std::move(content)));
  }
  if (type == "Strip") {
    KVANT_ASSIGN_OR_RETURN(const std::string content, json_char(j, "content", kWhere));
    KVANT_ASSIGN_OR_RETURN(const size_t start, json_count(j, "start", 0, kWhere));
    KVANT_ASSIGN_OR_RETURN(const size_t stop, json_count(j, "stop", 0, kWhere));
    return std::unique_ptr<Decoder>(new Strip(first_char(content), start, stop));
  }
  if (type == "Metaspace") {
    KVANT_ASSIGN_OR_RETURN(const std::string replacement, json_char(j, "replacement", kWhere));
    bool drop_in_first = true;
    if (j.contains("prepend_scheme") && j["prepend_scheme"] == "never") drop_in_first = false;
    if (j.contains("add_prefix_space") && j["add_prefix_space"] == false) drop_in_first = false;
    return std::unique_ptr<Decoder>(new Metaspace(first_char(replacement), drop_in_first));
  }
  if (type == "BPEDecoder") {
    std::string suffix = "</w>";
    if (j.contains("suffix")) {
      KVANT_ASSIGN_OR_RETURN(suffix, json_string(j, "suffix", kWhere));
    }
    return std::unique_ptr<Decoder>(new BpeSuffix(std::move(suffix)));
  }
  if (type == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array())
      return Status::error(ErrorCode::format, "{}: Sequence has no 'decoders' list", kWhere);
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const json& step : j["decoders"]) {
      KVANT_ASSIGN_OR_RETURN(auto d, build(step, depth + 1));
      if (d) steps.push_back(std::move(d));
    }
    return std::unique_ptr<Decoder>(new Sequence(std::move(steps)));
  }
  return Status::error(ErrorCode::unsupported,
                       "{}: decoder type '{}' is not supported (kvant supports ByteLevel, Replace, ByteFallback, Fuse, "
                       "Strip, Metaspace, BPEDecoder, Sequence)",
                       kWhere, type);
}

}  // namespace

Result<std::unique_ptr<Decoder>> Decoder::from_json(const json& j) { return build(j, 0); }

}  // namespace kvant::tok
