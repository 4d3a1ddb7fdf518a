#include "runtime/tokenizer/added_tokens.h"

#include <algorithm>

#include "runtime/tokenizer/unicode.h"

namespace kvant::tok {

void AddedTokenMatcher::build(const std::vector<AddedToken>* tokens, const std::vector<std::string>& patterns) {
  tokens_ = tokens;
  patterns_.clear();
  for (size_t i = 0; i < patterns.size(); ++i)
    if (!patterns[i].empty()) patterns_.push_back({patterns[i], static_cast<uint32_t>(i)});
  // By first byte, then longest first; equal patterns keep their order (the first wins).
  std::stable_sort(patterns_.begin(), patterns_.end(), [](const Pattern& a, const Pattern& b) {
    const auto fa = static_cast<uint8_t>(a.text[0]), fb = static_cast<uint8_t>(b.text[0]);
    return fa != fb ? fa < fb : a.text.size() > b.text.size();
  });
  size_t p = 0;
  for (int b = 0; b < 256; ++b) {
    bucket_start_[b] = static_cast<uint32_t>(p);
    while (p < patterns_.size() && static_cast<uint8_t>(patterns_[p].text[0]) == b) ++p;
  }
  bucket_start_[256] = static_cast<uint32_t>(p);
}

namespace {

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t pos = s.size();
  return is_word_char(previous_code_point(s, pos));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t pos = 0;
  return is_word_char(next_code_point(s, pos));
}

// Start of the whitespace run that ends `s`.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t p = end;
    if (!is_white_space(previous_code_point(s, p))) break;
    end = p;
  }
  return end;
}

// Length of the whitespace run that starts `s`.
size_t leading_space_length(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t p = pos;
    if (!is_white_space(next_code_point(s, p))) break;
    pos = p;
  }
  return pos;
}

}  // namespace

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  if (text.empty()) return;
  size_t start_offset = 0;  // end of what the segments cover so far
  size_t i = 0;
  while (i < text.size()) {
    // Leftmost-longest: the first position where a pattern matches, its longest pattern.
    const auto b = static_cast<uint8_t>(text[i]);
    const Pattern* found = nullptr;
    for (uint32_t k = bucket_start_[b]; k < bucket_start_[b + 1]; ++k) {
      const Pattern& p = patterns_[k];
      if (text.compare(i, p.text.size(), p.text) == 0) {
        found = &p;
        break;
      }
    }
    if (!found) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + found->text.size();
    i = stop;  // matches never overlap, even when the rules below discard one
    const AddedToken& token = (*tokens_)[found->token];
    if (token.single_word) {
      const bool space_before = start == 0 || !ends_with_word(text.substr(0, start));
      const bool space_after = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) start = std::max(trailing_space_start(text.substr(0, start)), start_offset);
    if (token.rstrip) stop += leading_space_length(text.substr(stop));
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
}

}  // namespace kvant::tok
