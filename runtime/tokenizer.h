// kvant's tokenizer: the tokenizer stored in a .kvant file (FORMAT.md 4.3), giving the
// same token ids as the Hugging Face `tokenizers` library on the tokenizer.json it was
// converted from.
//
// Pipeline (as in `tokenizers`): added tokens are found in the raw text; the text
// between them is normalized; normalized added tokens are found in that; the rest is
// pre-tokenized into pieces, each piece is BPE-merged; the post-processor adds the
// special tokens. Decoding maps ids to token strings and runs the decoder.
//
// A Tokenizer is immutable after loading; encode() and decode() may be called from
// several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "format/metadata.h"
#include "format/status.h"

namespace kvant {

namespace tok {
class BpeModel;
class Normalizer;
class PreTokenizer;
class PostProcessor;
class Decoder;
class AddedTokenMatcher;
struct AddedToken;
}  // namespace tok

class Tokenizer {
 public:
  // Reads "tokenizer.*" and "generation.eos_ids". Fails with a message naming the key
  // (and the component type, for pipeline stages kvant does not support).
  static Result<std::unique_ptr<Tokenizer>> from_metadata(const Metadata& metadata);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // UTF-8 text → ids. Invalid UTF-8 is an error naming the byte offset.
  // add_special_tokens runs the post-processor's template (e.g. Llama's BOS).
  Result<std::vector<int32_t>> encode(std::string_view utf8, bool add_special_tokens = true) const;

  // Ids → text. Ids that are out of range or name no token are skipped, as `tokenizers`
  // skips ids it does not know; never an error. skip_special_tokens drops special tokens.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 when the model has none
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }
  // Every id that ends generation (generation.eos_ids; else eos_id alone).
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool is_eos(int32_t id) const;
  bool is_special(int32_t id) const;
  // The token's text ("" for an id out of range or one with no token).
  std::string_view token_text(int32_t id) const;
  // The id of a token text (added tokens first, then the vocabulary), or -1.
  int32_t token_id(std::string_view text) const;

 private:
  Tokenizer();
  Status encode_text(std::string_view text, bool at_start, std::vector<int32_t>& ids) const;

  std::vector<std::string> tokens_;
  std::vector<uint8_t> special_;  // by id
  std::vector<tok::AddedToken> added_;
  std::unordered_map<std::string_view, int32_t> added_ids_;
  std::unique_ptr<tok::AddedTokenMatcher> raw_matcher_, normalized_matcher_;
  std::unique_ptr<tok::Normalizer> normalizer_;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tok::BpeModel> model_;
  std::unique_ptr<tok::PostProcessor> post_processor_;
  std::unique_ptr<tok::Decoder> decoder_;
  bool raw_byte_pieces_ = false;  // pieces reach the model as raw bytes (byte-level BPE)
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_id_ = -1;
  std::vector<int32_t> eos_ids_;
};

// Turns ids into text as they are generated. push() returns the text that the ids so
// far make final: always whole UTF-8 characters, never a character cut in two (bytes
// of an incomplete character are held back until it completes, up to 8 ids; flush()
// gives what is still held, an incomplete character as U+FFFD). Each step decodes the
// new ids with the previous step's ids as context, so the pieces join to decode() of
// all ids (decoders like SentencePiece's strip a leading space only at the very start);
// the one exception is an invalid byte sequence, which decode() may replace together
// with a neighbouring character's bytes.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  std::string push(int32_t id);
  // Everything still held back (an incomplete character comes out as U+FFFD).
  std::string flush();
  void reset();

 private:
  std::string pending_text() const;  // text of the ids after the context
  void advance();                    // all ids so far become the context
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // context ids, then the ids not yet emitted
  size_t context_ = 0;        // ids_[0, context_) were emitted already
  std::string context_text_;  // decode(ids_[0, context_))
};

}  // namespace kvant
