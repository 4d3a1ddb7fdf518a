// The regexes of tokenizer.json (pre-tokenizer split patterns, Replace normalizers and
// decoders), run with PCRE2 in UTF mode with JIT.
//
// Hugging Face `tokenizers` compiles these with Oniguruma's Ruby syntax. PCRE2 agrees
// with it on what these patterns use, except for a few class escapes, which compile()
// rewrites: \s is Unicode White_Space exactly (PCRE2 adds U+180E), \w is letters, marks,
// numbers and connector punctuation (PCRE2 leaves out marks), \h is a hex digit. As in
// Ruby, ^ and $ match at line breaks and (?m) makes '.' match a newline.
// Known gap: PCRE2 10.42 knows Unicode 14; characters assigned later (Unicode 15, 15.1)
// fall outside \p{L} and \p{N} here while Oniguruma knows them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "format/status.h"

namespace kvant::tok {

class Regex {
 public:
  // `what` names the pattern's origin for error messages.
  static Result<Regex> compile(std::string_view pattern, std::string_view what);
  // A pattern that matches `literal` exactly (tokenizer.json {"String": ...} patterns).
  static Result<Regex> literal(std::string_view literal, std::string_view what);

  // Calls on_match(start, end) for every match in `text` (valid UTF-8), in order, with
  // Oniguruma's iteration rule for empty matches: an empty match right where the
  // previous match ended is skipped by moving one character on.
  template <class OnMatch>
  Status for_each_match(std::string_view text, OnMatch&& on_match) const {
    size_t search_from = 0;
    size_t last_match_end = std::string_view::npos;
    while (search_from <= text.size()) {
      size_t start = 0, end = 0;
      KVANT_ASSIGN_OR_RETURN(const bool found, find(text, search_from, start, end));
      if (!found) break;
      if (start == end && last_match_end == end) {
        search_from += search_from < text.size() ? char_length(text, search_from) : 1;
        continue;
      }
      search_from = end;
      last_match_end = end;
      on_match(start, end);
    }
    return Status::ok();
  }

  // Finds the first match at or after `from`; false when there is none.
  Result<bool> find(std::string_view text, size_t from, size_t& start, size_t& end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  static Result<Regex> build(const std::string& pcre_pattern, uint32_t options, std::string_view original,
                             std::string_view what);
  static size_t char_length(std::string_view text, size_t pos);
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string pattern_;
};

// Oniguruma (Ruby syntax) pattern → equivalent PCRE2 pattern (see the file comment).
std::string translate_oniguruma_pattern(std::string_view pattern);

}  // namespace kvant::tok
