// Added tokens (tokenizer.json "added_tokens", special or not) are found in the text
// before normalization and BPE, as `tokenizers`' AddedVocabulary does: leftmost-longest
// matching, then the single_word, lstrip and rstrip rules. Tokens marked `normalized`
// are matched, in their normalized form, in the normalized text instead.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvant::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool normalized = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

// A stretch [start, end) of the text: an added token (id >= 0) or plain text (id -1).
struct Segment {
  size_t start = 0, end = 0;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  // `patterns[i]` is what to look for on behalf of `tokens[i]` (its content, or its
  // normalized content); empty patterns are ignored. `tokens` must outlive the matcher.
  void build(const std::vector<AddedToken>* tokens, const std::vector<std::string>& patterns);
  bool empty() const { return patterns_.empty(); }

  // Appends the segments of `text`; together they cover it (added tokens may also
  // absorb neighbouring whitespace through lstrip/rstrip).
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Pattern {
    std::string text;
    uint32_t token = 0;  // index into *tokens_
  };
  const std::vector<AddedToken>* tokens_ = nullptr;
  std::vector<Pattern> patterns_;             // grouped by first byte, longest first
  std::array<uint32_t, 257> bucket_start_{};  // patterns_ of first byte b: [start[b], start[b+1])
};

}  // namespace kvant::tok
