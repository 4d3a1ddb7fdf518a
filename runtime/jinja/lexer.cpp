#include "runtime/jinja/lexer.h"

#include <fmt/format.h>

#include "runtime/jinja/value.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant::jinja {

namespace {

constexpr std::string_view kOperators2[] = {"//", "**", "==", "!=", ">=", "<="};
constexpr std::string_view kOperators1 = "+-/*%~[](){}><=.:|,;";

bool is_space_at(std::string_view s, size_t pos, size_t* len) {
  if (pos >= s.size()) return false;
  size_t p = pos;
  const char32_t c = tok::next_code_point(s, p);
  if (!python_is_space(c)) return false;
  *len = p - pos;
  return true;
}

// Python's str.rstrip().
std::string_view rstrip(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t p = end;
    if (!python_is_space(tok::previous_code_point(s, p))) break;
    end = p;
  }
  return s.substr(0, end);
}

bool all_space(std::string_view s) {
  if (s.empty()) return false;  // Jinja's whitespace_re is \s+: at least one character
  for (size_t pos = 0; pos < s.size();) {
    size_t n = 0;
    if (!is_space_at(s, pos, &n)) return false;
    pos += n;
  }
  return true;
}

size_t skip_space(std::string_view s, size_t pos) {
  size_t n = 0;
  while (is_space_at(s, pos, &n)) pos += n;
  return pos;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A string literal's body, decoded as Jinja does: Python's "unicode-escape" codec
// applied after non-ASCII characters were turned into \x/\u/\U escapes.
std::string decode_string(std::string_view body, int line) {
  std::string ascii;
  for (size_t pos = 0; pos < body.size();) {
    const size_t start = pos;
    const char32_t c = tok::next_code_point(body, pos);
    if (c < 0x80) ascii.append(body, start, pos - start);
    else if (c < 0x100) ascii += fmt::format("\\x{:02x}", static_cast<uint32_t>(c));
    else if (c < 0x10000) ascii += fmt::format("\\u{:04x}", static_cast<uint32_t>(c));
    else ascii += fmt::format("\\U{:08x}", static_cast<uint32_t>(c));
  }
  std::string out;
  const auto code_point = [&](uint32_t cp) {
    if (cp > 0x10ffff) throw Error(fmt::format("line {}: illegal Unicode character in a string", line));
    tok::append_utf8(out, (cp >= 0xd800 && cp < 0xe000) ? 0xfffd : cp);  // lone surrogates: U+FFFD
  };
  for (size_t i = 0; i < ascii.size(); ++i) {
    const char c = ascii[i];
    if (c != '\\') {
      out += c;
      continue;
    }
    if (++i >= ascii.size()) throw Error(fmt::format("line {}: \\ at end of string", line));
    const char e = ascii[i];
    switch (e) {
      case '\n': break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': case 'u': case 'U': {
        const size_t digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        uint32_t v = 0;
        for (size_t k = 0; k < digits; ++k) {
          const int h = i + 1 + k < ascii.size() ? hex_digit(ascii[i + 1 + k]) : -1;
          if (h < 0) throw Error(fmt::format("line {}: truncated \\{} escape in a string", line, e));
          v = v * 16 + static_cast<uint32_t>(h);
        }
        i += digits;
        code_point(v);
        break;
      }
      case 'N': throw Error(fmt::format("line {}: \\N{{...}} escapes are not supported in strings", line));
      default:
        if (e >= '0' && e <= '7') {
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < ascii.size() && ascii[i + 1] >= '0' && ascii[i + 1] <= '7'; ++k)
            v = v * 8 + static_cast<uint32_t>(ascii[++i] - '0');
          code_point(v);
        } else {
          out += '\\';  // unknown escapes stay as written
          out += e;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string_view source) {
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();  // keep_trailing_newline=False
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      const size_t tag = find_tag(pos_);
      if (tag == std::string::npos) {
        emit_text(std::string_view(src_).substr(pos_));
        pos_ = src_.size();
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = 0;
      if (tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+')) sign = src_[tag + 2];
      std::string_view text = std::string_view(src_).substr(pos_, tag - pos_);
      const size_t raw_end = kind == '%' ? match_raw_begin(tag) : std::string::npos;
      text = strip_before_tag(text, sign, kind != '{');
      emit_text(text);
      line_ += static_cast<int>(count_newlines(std::string_view(src_).substr(pos_ + text.size(), tag - pos_ - text.size())));
      pos_ = tag + 2 + (sign ? 1 : 0);
      line_starting_ = false;
      if (raw_end != std::string::npos) {
        raw_block(raw_end);
      } else if (kind == '#') {
        comment();
      } else {
        tag_contents(kind == '%');
      }
    }
    tokens_.push_back({Token::Type::eof, "", line_});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1))
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  static size_t count_newlines(std::string_view s) {
    size_t n = 0;
    for (char c : s) n += c == '\n';
    return n;
  }

  // "-" strips all whitespace before the tag; otherwise lstrip_blocks strips the
  // spaces between the line start and a block or comment tag.
  std::string_view strip_before_tag(std::string_view text, char sign, bool block_or_comment) const {
    if (sign == '-') return rstrip(text);
    if (sign == '+' || !block_or_comment) return text;
    const size_t newline = text.rfind('\n');
    const size_t line_start = newline == std::string_view::npos ? 0 : newline + 1;
    if ((line_start > 0 || line_starting_) && all_space(text.substr(line_start))) return text.substr(0, line_start);
    return text;
  }

  void emit_text(std::string_view text) {
    if (text.empty()) return;
    tokens_.push_back({Token::Type::text, std::string(text), line_});
    line_ += static_cast<int>(count_newlines(text));
  }

  // `{% raw %}` (with optional - or + and spaces): returns the end of the tag, or npos.
  size_t match_raw_begin(size_t tag) const {
    size_t p = tag + 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    p = skip_space(src_, p);
    if (src_.compare(p, 3, "raw") != 0) return std::string::npos;
    p = skip_space(src_, p + 3);
    if (src_.compare(p, 3, "-%}") == 0) return skip_space(src_, p + 3);
    if (src_.compare(p, 2, "%}") == 0) return p + 2;
    return std::string::npos;
  }

  void raw_block(size_t body_start) {
    line_starting_ = body_start > 0 && src_[body_start - 1] == '\n';
    for (size_t i = src_.find("{%", body_start); i != std::string::npos; i = src_.find("{%", i + 1)) {
      size_t p = i + 2;
      char sign = 0;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      p = skip_space(src_, p);
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p = skip_space(src_, p + 6);
      size_t end = std::string::npos;
      if (src_.compare(p, 3, "+%}") == 0) end = p + 3;
      else if (src_.compare(p, 3, "-%}") == 0) end = skip_space(src_, p + 3);
      else if (src_.compare(p, 2, "%}") == 0) end = p + 2 + (p + 2 < src_.size() && src_[p + 2] == '\n' ? 1 : 0);
      if (end == std::string::npos) continue;
      emit_text(strip_before_tag(std::string_view(src_).substr(body_start, i - body_start), sign, true));
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    throw Error(fmt::format("line {}: missing end of raw directive", line_));
  }

  void comment() {
    for (size_t i = pos_; i < src_.size(); ++i) {
      size_t end = std::string::npos;
      if (src_.compare(i, 3, "+#}") == 0) end = i + 3;
      else if (src_.compare(i, 3, "-#}") == 0) end = skip_space(src_, i + 3);
      else if (src_.compare(i, 2, "#}") == 0) end = i + 2 + (i + 2 < src_.size() && src_[i + 2] == '\n' ? 1 : 0);
      if (end == std::string::npos) continue;
      line_ += static_cast<int>(count_newlines(std::string_view(src_).substr(pos_, end - pos_)));
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return;
    }
    throw Error(fmt::format("line {}: missing end of comment tag", line_));
  }

  // Tokens inside {{ }} or {% %}, through the closing tag.
  void tag_contents(bool block) {
    tokens_.push_back({block ? Token::Type::block_begin : Token::Type::variable_begin, "", line_});
    std::vector<char> balance;
    while (true) {
      if (pos_ >= src_.size())
        throw Error(fmt::format("line {}: unexpected end of template, expected the end of a {}", line_,
                                block ? "block ('%}')" : "print statement ('}}')"));
      if (balance.empty() && end_tag(block)) return;
      size_t n = 0;
      if (is_space_at(src_, pos_, &n)) {
        line_ += src_[pos_] == '\n';
        pos_ += n;
        continue;
      }
      const char c = src_[pos_];
      if (c >= '0' && c <= '9') {
        number();
        continue;
      }
      if (c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || static_cast<uint8_t>(c) >= 0x80) {
        size_t end = pos_;
        while (end < src_.size() && (src_[end] == '_' || std::isalnum(static_cast<unsigned char>(src_[end])) ||
                                     static_cast<uint8_t>(src_[end]) >= 0x80))
          ++end;
        tokens_.push_back({Token::Type::name, src_.substr(pos_, end - pos_), line_});
        pos_ = end;
        continue;
      }
      if (c == '\'' || c == '"') {
        string_literal(c);
        continue;
      }
      std::string op;
      for (std::string_view two : kOperators2)
        if (src_.compare(pos_, 2, two) == 0) op = two;
      if (op.empty() && kOperators1.find(c) != std::string_view::npos) op = std::string(1, c);
      if (op.empty()) throw Error(fmt::format("line {}: unexpected character '{}' in a tag", line_, c));
      if (op == "(" || op == "[" || op == "{") {
        balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
      } else if (op == ")" || op == "]" || op == "}") {
        if (balance.empty()) throw Error(fmt::format("line {}: unexpected '{}'", line_, op));
        if (balance.back() != op[0])
          throw Error(fmt::format("line {}: unexpected '{}', expected '{}'", line_, op, balance.back()));
        balance.pop_back();
      }
      tokens_.push_back({Token::Type::op, op, line_});
      pos_ += op.size();
    }
  }

  bool end_tag(bool block) {
    size_t end = std::string::npos;
    if (block) {
      if (src_.compare(pos_, 3, "+%}") == 0) end = pos_ + 3;
      else if (src_.compare(pos_, 3, "-%}") == 0) end = skip_space(src_, pos_ + 3);
      else if (src_.compare(pos_, 2, "%}") == 0)
        end = pos_ + 2 + (pos_ + 2 < src_.size() && src_[pos_ + 2] == '\n' ? 1 : 0);  // trim_blocks
    } else {
      if (src_.compare(pos_, 3, "-}}") == 0) end = skip_space(src_, pos_ + 3);
      else if (src_.compare(pos_, 2, "}}") == 0) end = pos_ + 2;
    }
    if (end == std::string::npos) return false;
    tokens_.push_back({block ? Token::Type::block_end : Token::Type::variable_end, "", line_});
    line_ += static_cast<int>(count_newlines(std::string_view(src_).substr(pos_, end - pos_)));
    line_starting_ = src_[end - 1] == '\n';
    pos_ = end;
    return true;
  }

  // Integers (decimal, 0b, 0o, 0x, with _ separators) and floats (1.5, 1e3, 1.5e-3).
  void number() {
    const auto digits = [&](size_t p, auto&& is_digit) {
      const size_t start = p;
      while (p < src_.size() && (is_digit(src_[p]) || (src_[p] == '_' && p > start && p + 1 < src_.size() &&
                                                       is_digit(src_[p + 1]))))
        ++p;
      return p;
    };
    const auto dec = [](char ch) { return ch >= '0' && ch <= '9'; };
    // Float: digits, then a fraction and/or an exponent.
    size_t p = digits(pos_, dec);
    size_t float_end = std::string::npos;
    size_t q = p;
    if (q + 1 < src_.size() && src_[q] == '.' && dec(src_[q + 1])) q = digits(q + 1, dec);
    if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
      size_t r = q + 1;
      if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
      if (r < src_.size() && dec(src_[r])) float_end = digits(r, dec);
    }
    if (float_end == std::string::npos && q != p) float_end = q;
    std::string text;
    if (float_end != std::string::npos) {
      for (size_t i = pos_; i < float_end; ++i)
        if (src_[i] != '_') text += src_[i];
      tokens_.push_back({Token::Type::floating, text, line_});
      pos_ = float_end;
      return;
    }
    const char prefix = pos_ + 1 < src_.size() ? static_cast<char>(std::tolower(src_[pos_ + 1])) : 0;
    if (src_[pos_] == '0' && (prefix == 'b' || prefix == 'o' || prefix == 'x')) {
      const int base = prefix == 'b' ? 2 : prefix == 'o' ? 8 : 16;
      size_t e = pos_ + 2;
      uint64_t v = 0;
      while (e < src_.size()) {
        if (src_[e] == '_') {
          ++e;
          continue;
        }
        const int d = hex_digit(src_[e]);
        if (d < 0 || d >= base) break;
        if (v > (UINT64_MAX >> 4)) throw Error(fmt::format("line {}: integer literal too large", line_));
        v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
        ++e;
      }
      if (e == pos_ + 2) throw Error(fmt::format("line {}: invalid integer literal", line_));
      tokens_.push_back({Token::Type::integer, std::to_string(v), line_});
      pos_ = e;
      return;
    }
    // Decimal: "0" (and 0_0...) stands alone; others start with 1-9.
    size_t e = src_[pos_] == '0' ? pos_ + 1 : p;
    if (src_[pos_] == '0')
      while (e < src_.size() && (src_[e] == '0' || (src_[e] == '_' && e + 1 < src_.size() && src_[e + 1] == '0')))
        e += src_[e] == '_' ? 2 : 1;
    for (size_t i = pos_; i < e; ++i)
      if (src_[i] != '_') text += src_[i];
    tokens_.push_back({Token::Type::integer, text, line_});
    pos_ = e;
  }

  void string_literal(char quote) {
    size_t i = pos_ + 1;
    while (i < src_.size() && src_[i] != quote) {
      if (src_[i] == '\\') ++i;
      ++i;
    }
    if (i >= src_.size()) throw Error(fmt::format("line {}: unterminated string literal", line_));
    const std::string_view body = std::string_view(src_).substr(pos_ + 1, i - pos_ - 1);
    tokens_.push_back({Token::Type::string, decode_string(body, line_), line_});
    line_ += static_cast<int>(count_newlines(body));
    pos_ = i + 1;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(std::string_view source) { return Lexer(source).run(); }

}  // namespace kvant::jinja
