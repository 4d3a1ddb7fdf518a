// libFuzzer target: random templates and random messages into the chat-template
// renderer. Input: a mode byte, then a template source and messages JSON separated by
// a NUL byte. Nothing may crash or hang: errors come back as a Status.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "format/utf8.h"
#include "runtime/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  using nlohmann::ordered_json;
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t nul = rest.find('\0');
  const std::string_view source = rest.substr(0, nul);
  const std::string_view messages_text = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);

  ordered_json messages = ordered_json::parse(messages_text.begin(), messages_text.end(), nullptr, false);
  if (messages.is_discarded() || !messages.is_array()) {
    // Not JSON: the text becomes the contents of an alternating conversation.
    messages = ordered_json::array();
    const char* roles[] = {"system", "user", "assistant", "user", "assistant", "tool"};
    size_t start = 0, turn = 0;
    const std::string text(messages_text);
    while (start <= text.size() && turn < 12) {
      const size_t end = std::min(text.find('\n', start), text.size());
      std::string content = text.substr(start, end - start);
      if (!is_valid_utf8(content)) content = "invalid";
      messages.push_back({{"role", roles[(turn + (mode & 1)) % 6]}, {"content", content}});
      start = end + 1;
      ++turn;
    }
  }
  const std::vector<std::pair<std::string, std::string>> special = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  const bool generation = mode & 2;
  if (mode & 4) {  // a built-in template with the messages
    const auto names = ChatTemplate::builtin_names();
    auto t = ChatTemplate::from_source(ChatTemplate::builtin_source(names[(mode >> 3) % names.size()]), special, "b");
    if (!t) __builtin_trap();  // built-ins always parse
    auto r = (*t)->render(messages, generation);
    if (r && !is_valid_utf8(*r)) __builtin_trap();
    return 0;
  }
  auto t = ChatTemplate::from_source(source, special, "fuzz");
  if (!t) return 0;
  auto r = (*t)->render(messages, generation);
  if (r && !is_valid_utf8(*r)) __builtin_trap();
  return 0;
}
