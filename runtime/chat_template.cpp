#include "runtime/chat_template.h"

#include <nlohmann/json.hpp>

#include "runtime/jinja/template.h"
#include "runtime/tokenizer/unicode.h"

namespace kvant {

using nlohmann::ordered_json;

namespace {

std::string builtin_hint() {
  return fmt::format("kvant has built-in templates: {}; pick one with --chat-template NAME",
                     fmt::join(ChatTemplate::builtin_names(), ", "));
}

// The special tokens for the template: chat.special_tokens_json when the file has it
// (FORMAT.md 4.4), else the text of the tokenizer.*_id tokens.
Result<std::vector<std::pair<std::string, std::string>>> special_tokens(const Metadata& m) {
  std::vector<std::pair<std::string, std::string>> out;
  if (m.has("chat.special_tokens_json")) {
    KVANT_ASSIGN_OR_RETURN(const std::string_view text, m.get_string("chat.special_tokens_json"));
    const ordered_json j = ordered_json::parse(text.begin(), text.end(), nullptr, false);
    if (!j.is_object()) return Status(ErrorCode::format, "chat.special_tokens_json is not a JSON object");
    for (const auto& [k, v] : j.items())
      if (v.is_string()) out.emplace_back(k, v.get<std::string>());
    return out;
  }
  if (!m.has("tokenizer.tokens")) return out;
  KVANT_ASSIGN_OR_RETURN(const auto tokens, m.get_string_array("tokenizer.tokens"));
  const std::pair<const char*, const char*> ids[] = {{"bos_token", "tokenizer.bos_id"},
                                                     {"eos_token", "tokenizer.eos_id"},
                                                     {"unk_token", "tokenizer.unk_id"},
                                                     {"pad_token", "tokenizer.pad_id"}};
  for (const auto& [name, key] : ids) {
    if (!m.has(key)) continue;
    KVANT_ASSIGN_OR_RETURN(const int64_t id, m.get_i64(key));
    if (id >= 0 && static_cast<uint64_t>(id) < tokens.size()) out.emplace_back(name, std::string(tokens[id]));
  }
  return out;
}

// transformers' preparation of the messages: drop null values, alias reasoning fields.
Result<jinja::Value> prepare_messages(const ordered_json& messages) {
  if (!messages.is_array()) return Status(ErrorCode::invalid_argument, "the messages must be a JSON array");
  if (messages.empty())
    return Status(ErrorCode::invalid_argument, "cannot apply a chat template to an empty conversation");
  std::vector<jinja::Value> list;
  for (const ordered_json& m : messages) {
    if (!m.is_object())
      return Status::error(ErrorCode::invalid_argument, "chat messages must be JSON objects, not {:.60}", m.dump());
    ordered_json clean = ordered_json::object();
    for (const auto& [k, v] : m.items())
      if (!v.is_null()) clean[k] = v;
    const char* kReasoning[] = {"reasoning_content", "thinking", "reasoning"};
    const ordered_json* reasoning = nullptr;
    for (const char* key : kReasoning)
      if (!reasoning && clean.contains(key)) reasoning = &clean[key];
    if (reasoning) {  // {"thinking": r, **message, "reasoning_content": r}
      const ordered_json r = *reasoning;
      ordered_json aliased = ordered_json::object();
      aliased["thinking"] = r;
      for (const auto& [k, v] : clean.items()) aliased[k] = v;
      aliased["reasoning_content"] = r;
      clean = std::move(aliased);
    }
    list.push_back(jinja::Value::from_json(clean));
  }
  return jinja::Value::list(std::move(list));
}

}  // namespace

ChatTemplate::~ChatTemplate() = default;

Result<std::unique_ptr<ChatTemplate>> ChatTemplate::from_source(
    std::string_view source, std::vector<std::pair<std::string, std::string>> special, std::string label) {
  std::unique_ptr<ChatTemplate> t(new ChatTemplate());
  try {
    t->template_ = std::make_unique<jinja::Template>(jinja::Template::parse(source));
  } catch (const std::exception& e) {
    return Status::error(ErrorCode::unsupported, "{}: kvant cannot parse this chat template: {}. {}", label, e.what(),
                         builtin_hint());
  }
  t->special_tokens_ = std::move(special);
  t->label_ = std::move(label);
  t->source_ = std::string(source);
  return t;
}

Result<std::unique_ptr<ChatTemplate>> ChatTemplate::from_metadata(const Metadata& m) {
  if (!m.has("chat.template"))
    return Status::error(ErrorCode::unsupported, "this model has no chat template (no chat.template key). {}",
                         builtin_hint());
  KVANT_ASSIGN_OR_RETURN(const std::string_view source, m.get_string("chat.template"));
  KVANT_ASSIGN_OR_RETURN(auto special, special_tokens(m));
  return from_source(source, std::move(special), "chat.template");
}

Result<std::unique_ptr<ChatTemplate>> ChatTemplate::builtin(std::string_view name, const Metadata& m) {
  const std::string_view source = builtin_source(name);
  if (source.empty())
    return Status::error(ErrorCode::invalid_argument, "there is no built-in chat template '{}' ({})", name,
                         fmt::join(builtin_names(), ", "));
  KVANT_ASSIGN_OR_RETURN(auto special, special_tokens(m));
  return from_source(source, std::move(special), fmt::format("built-in template '{}'", name));
}

Result<std::string> ChatTemplate::render(const ordered_json& messages, bool add_generation_prompt) const {
  KVANT_ASSIGN_OR_RETURN(jinja::Value list, prepare_messages(messages));
  std::vector<std::pair<jinja::Value, jinja::Value>> context;
  for (const auto& [name, text] : special_tokens_) context.emplace_back(jinja::Value(name), jinja::Value(text));
  context.emplace_back(jinja::Value("messages"), std::move(list));
  context.emplace_back(jinja::Value("tools"), jinja::Value::none());
  context.emplace_back(jinja::Value("documents"), jinja::Value::none());
  context.emplace_back(jinja::Value("add_generation_prompt"), jinja::Value(add_generation_prompt));
  try {
    return template_->render(jinja::Value::dict(std::move(context)));
  } catch (const jinja::Error& e) {
    if (e.raised()) return Status::error(ErrorCode::invalid_argument, "chat template: {}", e.what());
    return Status::error(ErrorCode::unsupported, "{}: rendering failed: {}. {}", label_, e.what(), builtin_hint());
  } catch (const std::exception& e) {  // e.g. out of memory
    return Status::error(ErrorCode::internal, "{}: rendering failed: {}", label_, e.what());
  }
}

Result<std::string> ChatTemplate::render(std::span<const ChatMessage> messages, bool add_generation_prompt) const {
  ordered_json list = ordered_json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    // Refused here, with the message named: rendered, the bytes would reach the model as
    // replacement characters or fail later at an offset into the whole conversation.
    auto invalid = [&](const std::string& text, std::string_view what) -> Status {
      const size_t bad = tok::find_invalid_utf8(text);
      if (bad == std::string::npos) return Status::ok();
      return Status::error(ErrorCode::invalid_argument, "message {} {} is not valid UTF-8: byte 0x{:02x} at offset {}",
                           i, what, static_cast<uint8_t>(text[bad]), bad);
    };
    KVANT_TRY(invalid(m.role, "role"));
    KVANT_TRY(invalid(m.content, fmt::format("({})", m.role)));
    list.push_back({{"role", m.role}, {"content", m.content}});
  }
  return render(list, add_generation_prompt);
}

}  // namespace kvant
