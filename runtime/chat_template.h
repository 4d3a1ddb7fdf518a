// Chat templates: a conversation (messages with a role and content) → the prompt text,
// exactly as transformers' tokenizer.apply_chat_template(messages, tokenize=False,
// add_generation_prompt=...) renders it. The Jinja source stored in the file
// (chat.template) is rendered by kvant's Jinja interpreter (runtime/jinja/); built-in
// copies of the common templates can replace it (kvant-tokenize --chat-template NAME).
//
// What the template sees, as in transformers: `messages` (keys whose value is null
// dropped; a reasoning field is copied to `thinking` and `reasoning_content`), `tools`
// and `documents` (None), `add_generation_prompt`, and the special tokens of
// tokenizer_config.json (bos_token, eos_token, unk_token, pad_token, ... when set).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "format/metadata.h"
#include "format/status.h"

namespace kvant {

namespace jinja {
class Template;
}

struct ChatMessage {
  std::string role;
  std::string content;
};

class ChatTemplate {
 public:
  // The file's default template, with the file's special tokens.
  static Result<std::unique_ptr<ChatTemplate>> from_metadata(const Metadata& metadata);
  // A built-in template (see builtin_names()) with the file's special tokens.
  static Result<std::unique_ptr<ChatTemplate>> builtin(std::string_view name, const Metadata& metadata);
  // Any template source; `special_tokens` are (name, text) pairs such as ("bos_token", "<s>").
  static Result<std::unique_ptr<ChatTemplate>> from_source(std::string_view source,
                                                           std::vector<std::pair<std::string, std::string>> special_tokens,
                                                           std::string label);

  // chatml, llama3, llama2, mistral, gemma, phi3
  static std::vector<std::string> builtin_names();
  // The Jinja source of a built-in template ("" for an unknown name).
  static std::string_view builtin_source(std::string_view name);

  ~ChatTemplate();

  // `messages`: a JSON array of objects, each with at least "role" (and usually
  // "content"). Errors: the template's own raise_exception() (e.g. roles that do not
  // alternate) comes back as its message; other failures name the template and point
  // to the built-in templates.
  Result<std::string> render(const nlohmann::ordered_json& messages, bool add_generation_prompt) const;
  Result<std::string> render(std::span<const ChatMessage> messages, bool add_generation_prompt) const;

  const std::string& label() const { return label_; }
  const std::string& source() const { return source_; }

 private:
  ChatTemplate() = default;
  std::unique_ptr<jinja::Template> template_;
  std::vector<std::pair<std::string, std::string>> special_tokens_;
  std::string label_, source_;
};

}  // namespace kvant
