// StreamingDecoder (declared in runtime/tokenizer.h).
//
// Each push decodes the ids since the last emitted chunk together with that chunk's
// ids as context, and emits what goes beyond the context's text. Text that ends in
// U+FFFD is held back, since the next ids may complete the character; after
// kMaxHeld ids it is emitted anyway (the U+FFFD is then real: an invalid sequence, or
// a U+FFFD token).
#include "runtime/tokenizer.h"

namespace kvant {

namespace {
constexpr size_t kMaxHeld = 8;  // a character has at most 4 bytes; leave room for skipped specials
constexpr std::string_view kReplacement = "\xef\xbf\xbd";
}  // namespace

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

void StreamingDecoder::reset() {
  ids_.clear();
  context_ = 0;
  context_text_.clear();
}

std::string StreamingDecoder::pending_text() const {
  const std::string text = tokenizer_->decode(ids_, skip_special_);
  if (text.starts_with(context_text_)) return text.substr(context_text_.size());
  // The decoder joined the new ids with the context (ByteFallback decodes a run of
  // byte tokens as one): decode the new ids on their own.
  return tokenizer_->decode(std::span<const int32_t>(ids_).subspan(context_), skip_special_);
}

void StreamingDecoder::advance() {
  // The ids just emitted become the context of the next step.
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<ptrdiff_t>(context_));
  context_ = ids_.size();
  context_text_ = tokenizer_->decode(ids_, skip_special_);
}

std::string StreamingDecoder::push(int32_t id) {
  ids_.push_back(id);
  std::string text = pending_text();
  if (text.empty()) return {};
  if (text.ends_with(kReplacement) && ids_.size() - context_ < kMaxHeld) return {};
  advance();
  return text;
}

std::string StreamingDecoder::flush() {
  std::string text = pending_text();
  advance();
  return text;
}

}  // namespace kvant
