// Normalizers of tokenizer.json (the "normalizer" object): text → normalized text,
// applied to the text between added tokens before pre-tokenization.
// Supported: NFC, NFD, NFKC, NFKD (utf8proc), Lowercase, Strip, StripAccents, Prepend,
// Replace (String or Regex pattern), ByteLevel, Sequence.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "format/status.h"

namespace kvant::tok {

class Normalizer {
 public:
  // Builds the normalizer a tokenizer.json "normalizer" object describes; null gives
  // nullptr. Unknown types are an error that names them.
  static Result<std::unique_ptr<Normalizer>> from_json(const nlohmann::json& j);
  virtual ~Normalizer() = default;

  // Normalizes `text` (valid UTF-8) in place. Sets `lost_start` when the result no
  // longer begins with the input's first character (a Strip or a Replace deleted it):
  // the Metaspace pre-tokenizer's "first" scheme needs to know.
  virtual Status normalize(std::string& text, bool& lost_start) const = 0;
};

}  // namespace kvant::tok
