// Decoders of tokenizer.json (the "decoder" object): token strings → text, as
// `tokenizers`' decode_chain does. Supported: ByteLevel, Replace, ByteFallback, Fuse,
// Strip, Metaspace, BPEDecoder, Sequence. Invalid UTF-8 never escapes: it becomes
// U+FFFD exactly where `tokenizers` puts one.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/status.h"

namespace kvant::tok {

class Decoder {
 public:
  // Null gives nullptr (tokens are then joined with spaces).
  static Result<std::unique_ptr<Decoder>> from_json(const nlohmann::json& j);
  virtual ~Decoder() = default;
  // Rewrites the list of token strings; the caller concatenates the result.
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

}  // namespace kvant::tok
