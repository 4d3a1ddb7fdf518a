// Pre-tokenizers of tokenizer.json (the "pre_tokenizer" object): normalized text →
// pieces that the BPE model tokenizes one by one. Supported: ByteLevel (with or
// without its GPT-2 regex), Split (String or Regex pattern, every behavior, invert),
// Digits, Metaspace (prepend_scheme always/first/never, split on/off), Whitespace,
// WhitespaceSplit, CharDelimiterSplit, Punctuation, BertPreTokenizer, Sequence.
// Splitting follows `tokenizers` exactly, including its empty-match rules.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/status.h"

namespace kvant::tok {

// A piece of text: [begin, end) of PieceList::text. `at_start` marks a piece that
// begins at offset 0 of the original input (Metaspace's "first" scheme asks).
struct Piece {
  uint32_t begin = 0, end = 0;
  bool at_start = false;
};

struct PieceList {
  std::string text;
  std::vector<Piece> pieces;

  std::string_view view(const Piece& p) const { return std::string_view(text).substr(p.begin, p.end - p.begin); }
  void clear() {
    text.clear();
    pieces.clear();
  }
  // Appends `s` as a new piece (empty pieces are dropped, as in `tokenizers`).
  void add(std::string_view s, bool at_start) {
    if (s.empty()) return;
    const auto begin = static_cast<uint32_t>(text.size());
    text.append(s);
    pieces.push_back({begin, static_cast<uint32_t>(text.size()), at_start});
  }
};

class PreTokenizer {
 public:
  // Builds the pre-tokenizer a tokenizer.json "pre_tokenizer" object describes; null
  // gives nullptr. Unknown types are an error that names them.
  static Result<std::unique_ptr<PreTokenizer>> from_json(const nlohmann::json& j);
  virtual ~PreTokenizer() = default;

  // Splits (and for some types rewrites) the pieces of `list`; `scratch` is working
  // space whose contents are unspecified afterwards.
  virtual Status apply(PieceList& list, PieceList& scratch) const = 0;

  // When the last stage is ByteLevel, asks it to leave bytes unmapped (the BPE model
  // then reads raw bytes, which saves a string rewrite per piece). Returns whether
  // the stage agreed.
  virtual bool defer_byte_mapping() { return false; }
};

}  // namespace kvant::tok
