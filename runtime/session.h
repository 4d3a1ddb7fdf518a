// One conversation's state: a sequence in its own KV cache, the tokens it holds, and
// saving / restoring that state to a file (KV pages as laid out in kernels/layout.h, so a
// file saved by one backend loads on the other).
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/context.h"

namespace kvant {

class Session {
 public:
  static Result<std::unique_ptr<Session>> create(std::shared_ptr<const Model> model, const ContextOptions& options);

  const Model& model() const { return ctx_->model(); }
  Context& context() { return *ctx_; }
  const std::vector<int32_t>& tokens() const { return ctx_->kv_cache().tokens(seq_); }
  int64_t length() const { return ctx_->length(seq_); }

  // Evaluates `tokens` after the ones held.
  Status append(std::span<const int32_t> tokens);
  // Makes the session hold exactly `tokens`: keeps the longest common prefix with what it
  // holds and evaluates only the rest (a new chat turn prefills only its new tokens).
  // At least the last token is evaluated, so its logits are current.
  Status sync(std::span<const int32_t> tokens);
  // Evaluates `tokens` after the ones held and writes log p(tokens[i] | everything
  // before it) to logprobs[i] (natural log, computed in double); logprobs[0] is 0 when
  // the session held nothing. Chunks of n_batch tokens, so memory stays n_batch rows.
  Status score(std::span<const int32_t> tokens, std::span<float> logprobs);
  // Context::greedy on the session's sequence: evaluates `token`, then the argmax of
  // each evaluation's logits while next(argmax) says so, up to max_evals evaluations.
  Status greedy(int32_t token, int64_t max_evals, const std::function<GreedyNext(int32_t)>& next, int64_t* evaluated);
  // Logits of the last evaluated token (vocab floats); empty before any evaluation.
  std::span<const float> logits() const;
  void reset();

  // Writes the tokens, the KV pages and `app_data` (opaque bytes the application keeps
  // with the session, e.g. a chat's messages) to a temporary file, then renames it.
  Status save(const std::string& path, std::string_view app_data = {}) const;
  // Restores a saved session; its application data goes to *app_data when given.
  Status load(const std::string& path, std::string* app_data = nullptr);

 private:
  Session() = default;
  std::unique_ptr<Context> ctx_;
  SeqId seq_ = -1;
  bool has_logits_ = false;
};

// Reads a session file's header and tokens without restoring it (tests, fuzzing).
// Every field is checked against the model and layout the session would load into.
struct SessionFileInfo {
  std::vector<int32_t> tokens;
  uint64_t app_data_offset = 0, app_data_size = 0;
  uint64_t pages_offset = 0;  // where the page data starts
  uint64_t n_pages = 0;
};
Result<SessionFileInfo> parse_session_file(std::span<const uint8_t> bytes, const KvLayout& layout,
                                           uint64_t model_checksum, int64_t n_ctx, int32_t vocab_size);

}  // namespace kvant
