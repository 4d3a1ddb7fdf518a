// libFuzzer target: the JSON files beside tokenizer.json, hostile, through the
// converter (apply_tokenizer_files) on the sentencepiece fixture's tokenizer. The first
// byte picks which file the rest of the input is:
//   0 tokenizer_config.json, 1 special_tokens_map.json, 2 generation_config.json,
//   3 chat_template.json, 4 chat_template.jinja (raw text), 5 config.json (eos/bos ids).
// What the converter accepts must make a file whose tokenizer loads; its chat template,
// if it parses, renders without crashing.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "convert/hf_tokenizer.h"
#include "format/writer.h"
#include "runtime/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvant;
  using nlohmann::json;
  static const convert::TokenizerImport base = [] {
    auto t = convert::parse_tokenizer_json(fuzz::read_file(fuzz::fixture_path("tokenizers/tok-sentencepiece/tokenizer.json")),
                                           "tokenizer.json");
    if (!t) __builtin_trap();
    return *t;
  }();
  if (size < 1) return 0;
  const uint8_t which = data[0] % 6;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  json parsed = json::parse(text, nullptr, false);
  if (which != 4 && parsed.is_discarded()) return 0;
  const json empty_object = json::object();

  convert::TokenizerSideFiles files;
  files.dir = "fuzz-model";
  json config = json::object();
  switch (which) {
    case 0: files.tokenizer_config = &parsed; break;
    case 1: files.tokenizer_config = &empty_object; files.special_tokens_map = &parsed; break;
    case 2: files.generation_config = &parsed; break;
    case 3: files.chat_template_json = &parsed; break;
    case 4: files.chat_template_jinja = &text; break;
    default: config = parsed; break;
  }
  if (!config.is_object()) return 0;  // the converter rejects a non-object config.json earlier
  convert::TokenizerImport t = base;
  const auto vocab = static_cast<uint32_t>(t.tokens.size());
  if (!convert::apply_tokenizer_files(t, files, config, vocab)) return 0;

  const std::vector<uint8_t> image = fuzz::kvant_image([&](KvantWriter& w) {
    t.to_metadata(w);
    return w.begin();
  });
  auto file = KvantFile::from_memory(image);
  if (!file) __builtin_trap();  // the writer's output must read back
  auto tok = Tokenizer::from_metadata((*file)->metadata());
  if (!tok) __builtin_trap();  // an accepted import must load
  if (auto chat = ChatTemplate::from_metadata((*file)->metadata())) {
    const std::vector<ChatMessage> messages = {{"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "?"}};
    auto r = (*chat)->render(messages, true);
    if (r) (void)(*tok)->encode(*r, false);
  }
  return 0;
}
