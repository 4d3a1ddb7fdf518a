// Post-processors of tokenizer.json (the "post_processor" object): they add the
// special tokens around an encoded sequence when encode() is asked to.
// Supported: TemplateProcessing (the single-sequence template), ByteLevel (offsets
// only: ids unchanged), RobertaProcessing, BertProcessing, Sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/status.h"

namespace kvant::tok {

class PostProcessor {
 public:
  // Null gives nullptr. Ids the template adds must be below `vocab_size`.
  static Result<std::unique_ptr<PostProcessor>> from_json(const nlohmann::json& j, int32_t vocab_size);
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int32_t>& ids, bool add_special_tokens) const = 0;
};

}  // namespace kvant::tok
