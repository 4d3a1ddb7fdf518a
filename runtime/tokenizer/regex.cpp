#include "runtime/tokenizer/regex.h"

#include <cctype>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

namespace {

// Unicode White_Space, as Oniguruma's \s (PCRE2's \s also has U+180E).
constexpr std::string_view kSpaceClass =
    R"(\t\n\x0B\f\r\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
// Oniguruma's Unicode \w: letters (with the Other_Alphabetic symbols), marks, numbers,
// connector punctuation.
constexpr std::string_view kWordClass =
    R"(\p{L}\p{M}\p{N}\p{Pc}\x{24B6}-\x{24E9}\x{1F130}-\x{1F149}\x{1F150}-\x{1F169}\x{1F170}-\x{1F189})";
constexpr std::string_view kHexClass = "0-9a-fA-F";

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof buffer) < 0) return fmt::format("PCRE2 error {}", code);
  return std::string(reinterpret_cast<const char*>(buffer));
}

// Per-thread match state: PCRE2 match data and a JIT stack that can grow to 8 MiB
// (the 32 KiB default overflows on long runs of whitespace with lookahead patterns).
struct MatchState {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;
  MatchState() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && jit_stack) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchState() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(context);
    pcre2_jit_stack_free(jit_stack);
  }
  MatchState(const MatchState&) = delete;
  MatchState& operator=(const MatchState&) = delete;
};

MatchState& match_state() {
  thread_local MatchState state;
  return state;
}

}  // namespace

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

std::string translate_oniguruma_pattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      std::string_view cls;
      bool negated = false;
      switch (e) {
        case 's': cls = kSpaceClass; break;
        case 'S': cls = kSpaceClass; negated = true; break;
        case 'w': cls = kWordClass; break;
        case 'W': cls = kWordClass; negated = true; break;
        case 'h': cls = kHexClass; break;
        case 'H': cls = kHexClass; negated = true; break;
        default: break;
      }
      if (cls.empty()) {
        out += c;
        out += e;
      } else if (class_depth == 0) {
        out += negated ? "[^" : "[";
        out += cls;
        out += ']';
      } else if (!negated) {
        out += cls;
      } else {
        out += c;  // a negated class escape inside [...]: PCRE2's own (rare in practice)
        out += e;
      }
      continue;
    }
    if (class_depth > 0) {
      if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX [:name:]
        const size_t close = p.find(":]", i + 2);
        if (close != std::string_view::npos) {
          out.append(p.substr(i, close + 2 - i));
          i = close + 1;
          continue;
        }
      }
      if (c == '[') ++class_depth;
      if (c == ']') --class_depth;
      out += c;
      continue;
    }
    if (c == '[') {
      class_depth = 1;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is literal
      continue;
    }
    if (c == '(' && i + 2 < p.size() && p[i + 1] == '?') {
      // Inline flags: Ruby's (?m) is "dot matches newline", PCRE2's (?s).
      size_t j = i + 2;
      while (j < p.size() && (p[j] == 'i' || p[j] == 'm' || p[j] == 'x' || p[j] == '-')) ++j;
      if (j > i + 2 && j < p.size() && (p[j] == ':' || p[j] == ')')) {
        out += "(?";
        for (size_t k = i + 2; k < j; ++k) out += p[k] == 'm' ? 's' : p[k];
        i = j - 1;
        continue;
      }
    }
    out += c;
  }
  return out;
}

Result<Regex> Regex::build(const std::string& pcre_pattern, uint32_t options, std::string_view original,
                           std::string_view what) {
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  if (cc) pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre_pattern.data()), pcre_pattern.size(),
                                   options, &error, &error_offset, cc);
  pcre2_compile_context_free(cc);
  if (!code)
    return Status::error(ErrorCode::format, "{}: the regex '{}' does not compile: {} (at offset {})", what,
                         original, pcre2_message(error), error_offset);
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  Regex r;
  auto holder = std::make_shared<Code>();
  holder->code = code;
  r.code_ = std::move(holder);
  r.pattern_ = std::string(original);
  return r;
}

Result<Regex> Regex::compile(std::string_view pattern, std::string_view what) {
  return build(translate_oniguruma_pattern(pattern), PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, pattern, what);
}

Result<Regex> Regex::literal(std::string_view text, std::string_view what) {
  std::string escaped;
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) escaped += '\\';
    escaped += c;
  }
  return build(escaped, PCRE2_UTF, text, what);
}

size_t Regex::char_length(std::string_view text, size_t pos) {
  return utf8_length(static_cast<uint8_t>(text[pos]));
}

Result<bool> Regex::find(std::string_view text, size_t from, size_t& start, size_t& end) const {
  MatchState& state = match_state();
  if (!state.data || !state.context)
    return Status(ErrorCode::out_of_memory, "cannot allocate PCRE2 match data");
  const int rc = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), from,
                             PCRE2_NO_UTF_CHECK, state.data, state.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0)
    return Status::error(ErrorCode::invalid_argument, "regex '{}' failed on a {}-byte input: {}", pattern_,
                         text.size(), pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
  start = ovector[0];
  end = ovector[1];
  if (end < start) end = start;  // \K in a lookahead can report end < start
  return true;
}

}  // namespace kvant::tok
